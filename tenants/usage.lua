-- Add one replica's counts of one tenant and UTC day to that day's usage hash, exactly once.
-- KEYS[1]: the day's usage hash; KEYS[2]: the last batch applied of each replica, that day.
-- ARGV: replica, its batch number (increasing per replica), expiry (Unix seconds) of both
--       keys, then field, count pairs.
-- A batch whose answer was lost (a timeout, a connection cut, a Cluster slot moving) is sent
-- again with the same number: if it had run, it is skipped. Returns 1 if applied, else 0.
local replica, batch = ARGV[1], tonumber(ARGV[2])
if batch <= tonumber(redis.call('HGET', KEYS[2], replica) or '0') then return 0 end
for i = 4, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[2], replica, batch)
redis.call('EXPIREAT', KEYS[1], ARGV[3])
redis.call('EXPIREAT', KEYS[2], ARGV[3])
return 1
