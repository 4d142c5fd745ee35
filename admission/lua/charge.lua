-- Charge service to a running request's tenant as its output streams, and renew its lease.
-- Output is flowing, so the request's prefill is over: what it held of its backend's prefill
-- cap is freed. While requests wait, a charge also changes their fair order (the tenant's
-- counter grows): a head that a pool reservation held back may now come first and fit, so
-- whatever can run is dispatched, as after every change of capacity or order.
-- ARGV: id, service, ttl ms, max grants.
-- Returns {1, grants...}, or {0} if the lease is gone (reclaimed or released).
local id, service, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local l = decode(redis.call('HGET', P .. 'lease', id))
if not l then return {0} end
charge(l.t, l.band, l.w, service)
l.ch = l.ch + service
if l.pd then  -- output flows: its input has been delivered
  add_pending(l.t, l.w, -l.pd)
  l.pd = nil
end
local prefilled = l.pf
if prefilled then
  add_load(P .. 'bload', l.b .. ':p', -prefilled)
  l.pf = nil
end
redis.call('HSET', P .. 'lease', id, cjson.encode(l))
local now = now_ms()
redis.call('ZADD', P .. 'exp', 'XX', now + ttl, id)
if prefilled or #backlogged_bands() > 0 then
  return {1, unpack(dispatch(now, ttl, tonumber(ARGV[4])))}
end
return {1}
