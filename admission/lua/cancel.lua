-- Withdraw a queued request (its client left, or its wait timed out on the replica).
-- ARGV: id, ttl ms, max grants
-- Returns {state, backend, grants...}: cancelled | leased (it was granted meanwhile: the caller
-- now holds the lease) | gone.
local id, ttl, max_grants = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if unqueue(id) then
  return {'cancelled', '', unpack(dispatch(now_ms(), ttl, max_grants))}
end
local l = decode(redis.call('HGET', P .. 'lease', id))
if l then return {'leased', l.b} end
return {'gone', ''}
