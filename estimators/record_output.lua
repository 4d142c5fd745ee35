-- Record one observed output length in the recent-history lists of a tenant and of its model.
-- KEYS[1]: the tenant's list, KEYS[2]: the model-wide list (same hash tag: same slot)
-- ARGV[1]: output tokens, ARGV[2]: how many to keep, ARGV[3]: time to live in milliseconds
local keep = tonumber(ARGV[2])
for i = 1, #KEYS do
  redis.call('LPUSH', KEYS[i], ARGV[1])
  redis.call('LTRIM', KEYS[i], 0, keep - 1)
  redis.call('PEXPIRE', KEYS[i], ARGV[3])
end
return 1
