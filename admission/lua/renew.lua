-- Renew the expiry of an owner's queued entries and leases (one call per replica, periodically).
-- ARGV: ttl ms, id... Returns the ids that no longer exist (reclaimed, timed out or done).
local ttl = tonumber(ARGV[1])
local deadline = now_ms() + ttl
local lost = {}
for i = 2, #ARGV do
  if redis.call('ZADD', P .. 'exp', 'XX', 'CH', deadline, ARGV[i]) == 0
     and not redis.call('ZSCORE', P .. 'exp', ARGV[i]) then
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
