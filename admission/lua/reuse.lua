-- Hand a finished request's lease to the next request of its flow on the same replica (lease
-- reuse: only while nothing waits anywhere, decided by the replica from earlier answers). The
-- next request already runs: this settles the finished one's service, serves the new one (its
-- input charged as at a grant) and holds the new one's tokens, which are never more than those
-- the lease held. If requests wait meanwhile, what the smaller hold freed is dispatched.
-- With quotas, in the same step: the finished request's correction is applied (whatever became
-- of the lease); the credit the lease keeps (credit.lua) is spent by the next request if the
-- replica says it ran on it, else given back; and the next request's charge, if it has one, is
-- taken before anything else; if a quota refuses it, nothing else changes (the lease stays the
-- finished request's, to be released).
-- ARGV: id, service the finished request used ('' if unknown), new tokens, new input service,
--       ttl ms, max grants, '1' if the next request spends the lease's credit (else ''), then
--       optionally quota parts (lib/quota.lua): the finished request's correction (with what
--       the spent credit held beyond the next request's tokens), the next request's charge
-- Returns {1 if the lease was passed on, 0 if it was not there (reclaimed or released), 2 if a
--         quota refused the next request; 1 if it may be reused again (nothing waits, its
--         backend is open); the quota answer (with a charge, unless the lease was not there);
--         grants...}
local id, ttl, max_grants = ARGV[1], tonumber(ARGV[5]), tonumber(ARGV[6])
local tok, svc = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local asked, quota = nil, {}
local part, i = quota_part(8)
while part do
  if part.charge then asked = part else quota_apply(part, now) end
  part, i = quota_part(i)
end
local contended = #backlogged_bands() > 0
local l = decode(redis.call('HGET', P .. 'lease', id))
if not l then return {0, 0} end
local credit = l.cq
if credit then
  if ARGV[7] ~= '1' then quota_refund(credit, now) end  -- before the charge: its room is back
  l.cq = nil
end
if asked then
  local fits
  fits, quota = quota_apply(asked, now)
  if not fits then
    if credit then redis.call('HSET', P .. 'lease', id, cjson.encode(l)) end  -- it went back
    return {2, 0, unpack(quota)}
  end
end
local function answer(may_reuse, grants)
  local out = {1, may_reuse}
  for _, v in ipairs(quota) do out[#out + 1] = v end
  for _, v in ipairs(grants or {}) do out[#out + 1] = v end
  return out
end
if ARGV[2] ~= '' then
  settle(l.t, l.band, l.w, tonumber(ARGV[2]), l.ch)
end
if tok ~= l.tok then  -- the next request of a flow often holds what the last one held
  add_load(P .. 'tload', l.t .. ':t', tok - l.tok)
  add_load(P .. 'bload', l.b .. ':t', tok - l.tok)
end
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
  return answer(0, dispatch(now, ttl, max_grants))
end
return answer(backend_open(l.b, now) and 1 or 0)
