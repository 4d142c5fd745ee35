-- Queue a request and dispatch whatever fits now (often this very request: one round trip).
-- ARGV: id, tenant, tokens in flight, service charged at dispatch, pool, band ('' = the
--       tenant's), owner, queue timeout ms, ttl ms, max grants, and optionally: prompt
--       tokens, preferred backend (session affinity, '' for none), its slack in tokens, and
--       the request's charge to its tenant's quotas (a quota part, lib/quota.lua)
-- Returns {state, backend or '', ahead, depth, the quota answer (with a quota part), grants...};
--         state: granted | queued | full | quota (refused by a quota: nothing changed, no
--         grants) | unknown_tenant | unknown_pool | duplicate (these three end after backend).
--         ahead, depth: the request's place on arrival, the tenant's requests already queued in
--         its band and every request queued in its pool (0, 0 when nothing waited anywhere).
--         grants: id, backend pairs of every grant made.
local id, t, pool, owner = ARGV[1], ARGV[2], ARGV[5], ARGV[7]
local ttl, max_grants = tonumber(ARGV[9]), tonumber(ARGV[10])
local now = now_ms()
local tc = tenant_cfg(t)
if not tc then return {'unknown_tenant', ''} end
if not pool_backends(pool) then return {'unknown_pool', ''} end
-- Nothing is queued anywhere unless some band is backlogged: then no queued duplicate either.
local contended = #backlogged_bands() > 0
if redis.call('HEXISTS', P .. 'lease', id) == 1
    or (contended and redis.call('HEXISTS', P .. 'req', id) == 1) then
  return {'duplicate', ''}
end
-- The tenant's quotas first, in this same step: a request over one is refused before it queues.
local quota = {}
local asked = quota_part(14)
if asked then
  local fits
  fits, quota = quota_apply(asked, now)
  if not fits then return {'quota', '', 0, 0, unpack(quota)} end
end
local ahead, depth = 0, 0
local function answer(state, backend, grants)
  local out = {state, backend, ahead, depth}
  for _, v in ipairs(quota) do out[#out + 1] = v end
  for _, v in ipairs(grants or {}) do out[#out + 1] = v end
  return out
end
local band = ARGV[6] ~= '' and ARGV[6] or tostring(tc.band)
local r = {t = t, tok = tonumber(ARGV[3]), svc = tonumber(ARGV[4]), pool = pool, band = band,
           o = owner, pt = tonumber(ARGV[11] or '0')}
if ARGV[12] and ARGV[12] ~= '' then r.pref, r.slack = ARGV[12], tonumber(ARGV[13]) end
-- A lease held for this flow's next request (release.lua) is freed: the request queues like any
-- other, and fair order decides who takes what it held (the tenant, if it is still owed).
take_held(t, band)
-- The uncontended fast path: nobody waits anywhere, so no order to respect; run it if it fits.
if not contended then
  local b, _, bc, lender = place(r, tc, now)
  if b then
    lease(id, r, tc, b, bc, now, ttl, lender, true)
    return answer('granted', b)
  end
end
-- Reclaim what dead replicas left (and drop late entries) before queueing: the fast path above
-- needs no sweep (what it placed fit anyway); every replica's upkeep sweeps regularly.
sweep(now)
local seq = redis.call('INCR', P .. 'seq')
if not contended then
  -- the first request to wait: every replica stops reusing leases (fair order decides now)
  redis.call(PUBLISH, P .. 'contended', id)
end
mark_backlogged(t, band, now)
ahead, depth = redis.call('ZCARD', queue_key(t, band)), load(P .. 'queued', 'pool:' .. pool)
r.seq = seq
redis.call('HSET', P .. 'req', id, cjson.encode(r))
redis.call('ZADD', queue_key(t, band), seq, id)
add_load(P .. 'queued', t, 1)
add_load(P .. 'queued', 'pool:' .. pool, 1)
redis.call('ZADD', P .. 'fifo', seq, id)
redis.call('ZADD', P .. 'exp', now + ttl, id)
redis.call('ZADD', P .. 'dl', now + tonumber(ARGV[8]), id)
local grants = dispatch(now, ttl, max_grants)
local backend = redis.call('HGET', P .. 'granted', id)
if backend then
  return answer('granted', backend, grants)
end
-- A request that could not run at once counts against the tenant's queue limit.
if load(P .. 'queued', t) > tc.mq then
  unqueue(id)
  -- While queued it may have reserved its pool in the round above: dispatch again without it.
  for _, v in ipairs(dispatch(now, ttl, max_grants)) do grants[#grants + 1] = v end
  return answer('full', '', grants)
end
return answer('queued', '', grants)
