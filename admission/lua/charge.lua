-- Charge service to a running request's tenant as its output streams, and renew its lease.
-- ARGV: id, service, ttl ms. Returns 1, or 0 if the lease is gone (reclaimed or released).
local id, service, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local l = decode(redis.call('HGET', P .. 'lease', id))
if not l then return 0 end
charge(l.t, l.band, l.w, service)
l.ch = l.ch + service
redis.call('HSET', P .. 'lease', id, cjson.encode(l))
redis.call('ZADD', P .. 'exp', 'XX', now_ms() + ttl, id)
return 1
