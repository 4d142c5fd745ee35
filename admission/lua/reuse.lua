-- Hand a finished request's lease to the next request of its flow on the same replica (lease
-- reuse: only while nothing waits anywhere, decided by the replica from earlier answers). The
-- next request already runs: this settles the finished one's service, serves the new one (its
-- input charged as at a grant) and holds the new one's tokens, which are never more than those
-- the lease held. If requests wait meanwhile, what the smaller hold freed is dispatched.
-- ARGV: id, service the finished request used ('' if unknown), new tokens, new input service,
--       ttl ms, max grants
-- Returns {1 if the lease was there (else 0: reclaimed or released), 1 if it may be reused
--         again (nothing waits, its backend is open), grants...}
local id, ttl, max_grants = ARGV[1], tonumber(ARGV[5]), tonumber(ARGV[6])
local tok, svc = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local contended = #backlogged_bands() > 0
local l = decode(redis.call('HGET', P .. 'lease', id))
if not l then return {0, 0} end
if ARGV[2] ~= '' then
  settle(l.t, l.band, l.w, tonumber(ARGV[2]), l.ch)
end
add_load(P .. 'tload', l.t .. ':t', tok - l.tok)
add_load(P .. 'bload', l.b .. ':t', tok - l.tok)
-- the finished request was delivered, the new one's input is pending (one step for both)
serve(l.t, l.band, l.w, svc, l.pd)
add_pending(l.t, l.w, -(l.pd or 0))
l.tok, l.ch, l.pd = tok, svc, nil
redis.call('HSET', P .. 'lease', id, cjson.encode(l))
redis.call('ZADD', P .. 'exp', 'XX', now + ttl, id)
redis.call('HINCRBY', P .. 'stats', 'grants', 1)
redis.call('HINCRBY', P .. 'stats', 'reused', 1)
if contended then
  sweep(now)
  return {1, 0, unpack(dispatch(now, ttl, max_grants))}
end
return {1, backend_open(l.b, now) and 1 or 0}
