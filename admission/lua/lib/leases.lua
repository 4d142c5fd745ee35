-- The queues of flows, leases and their reclaiming.

-- The queue of one flow: a tenant's requests in one band (a tenant whose requests may pick
-- their band can have several).
local function queue_key(t, band) return P .. 'q:' .. t .. ':' .. band end

local function unmark_if_idle(t, band, bound)
  if redis.call('ZCARD', queue_key(t, band)) == 0 then
    redis.call('ZREM', P .. 'backlog:' .. band, t)
    local flow = t .. ':' .. band
    local owed = math.max(tenant_floor(band) - delivered(t), 0)
    if owed > 0 then
      redis.call('HSET', P .. 'behind', flow, math.min(owed, bound))
    else
      redis.call('HDEL', P .. 'behind', flow)
    end
    redis.call('HSET', P .. 'behind', 'at:' .. flow, now_ms(),
               'owed:' .. flow, math.min(owed, KEPT_WITHIN_GRACE * bound))
    if redis.call('ZCARD', P .. 'backlog:' .. band) == 0 then
      redis.call('ZREM', P .. 'bandlog', band)
      bands_cache = nil
    end
  end
end

-- Remove a queued request from every queue structure; returns its record or nil.
local function unqueue(id)
  local r = decode(redis.call('HGET', P .. 'req', id))
  if not r then return nil end
  redis.call('HDEL', P .. 'req', id)
  redis.call('ZREM', queue_key(r.t, r.band), id)
  add_load(P .. 'queued', r.t, -1)
  add_load(P .. 'queued', 'pool:' .. r.pool, -1)
  redis.call('ZREM', P .. 'fifo', id)
  redis.call('ZREM', P .. 'exp', id)
  redis.call('ZREM', P .. 'dl', id)
  local tc = tenant_cfg(r.t)
  unmark_if_idle(r.t, r.band, tc and r.svc / tc.w or 0)
  return r
end

-- The leases held for a flow's next request (see hold_for_next).
local function held_key(t, band) return P .. 'ant:' .. t .. ':' .. band end

-- Free what a lease holds; returns its record or nil if there is no such lease (idempotent).
-- ``known``: its record, if the caller has read it already. A quota credit it kept for a next
-- request nobody sent goes back to the tenant's quotas (however the lease ends: a release,
-- its expiry after its replica died).
local function unlease(id, known)
  local l = known or decode(redis.call('HGET', P .. 'lease', id))
  if not l then return nil end
  if l.cq then quota_refund(l.cq, now_ms()) end
  redis.call('HDEL', P .. 'lease', id)
  redis.call('HDEL', P .. 'granted', id)
  redis.call('ZREM', P .. 'exp', id)
  if add_load(P .. 'tload', l.t .. ':r', -1) <= 0 then
    redis.call('HDEL', P .. 'vtc', 'p:' .. l.t)  -- nothing in flight: no rounding left behind
  elseif l.pd then
    add_pending(l.t, l.w, -l.pd)
  end
  add_load(P .. 'tload', l.t .. ':t', -l.tok)
  add_load(P .. 'bload', l.b .. ':r', -1)
  add_load(P .. 'bload', l.b .. ':t', -l.tok)
  if l.pf then add_load(P .. 'bload', l.b .. ':p', -l.pf) end
  if l.lent then add_load(P .. 'lent', l.lent, -1) end
  if l.ant then redis.call('ZREM', held_key(l.t, l.band), id) end
  return l
end

local function notify(owner, message)
  redis.call(PUBLISH, P .. 'grants:' .. owner, message)
end

-- Reclaim leases and queued entries whose owner stopped renewing them (a dead replica), and
-- drop queued requests past their deadline (their owner is told, if alive).
local function sweep(now)
  local expired = redis.call('ZRANGEBYSCORE', P .. 'exp', '-inf', now, 'LIMIT', 0, MAX_SWEEP)
  for _, id in ipairs(expired) do
    local l = unlease(id)
    if l and l.ant then
      redis.call('HINCRBY', P .. 'stats', 'held_lapsed', 1)
    elseif l or unqueue(id) then
      redis.call('HINCRBY', P .. 'stats', 'reclaimed', 1)
    end
  end
  local late = redis.call('ZRANGEBYSCORE', P .. 'dl', '-inf', now, 'LIMIT', 0, MAX_SWEEP)
  for _, id in ipairs(late) do
    local r = unqueue(id)
    if r then
      redis.call('HINCRBY', P .. 'stats', 'timeouts', 1)
      notify(r.o, id .. ' !timeout')
    end
  end
end

-- Hold the budgets, charge the input service, and record the lease of a granted request.
-- ``expires``: when the lease expires unless renewed (now + ttl if not given).
local function lease(id, r, tc, b, bc, now, ttl, lender, uncontended, expires)
  add_load(P .. 'tload', r.t .. ':r', 1)
  add_load(P .. 'tload', r.t .. ':t', r.tok)
  add_load(P .. 'bload', b .. ':r', 1)
  add_load(P .. 'bload', b .. ':t', r.tok)
  serve(r.t, r.band, tc.w, r.svc)
  local l = {t = r.t, b = b, tok = r.tok, o = r.o, band = r.band, ch = r.svc, w = tc.w}
  if not uncontended then
    add_pending(r.t, tc.w, r.svc)
    l.pd = r.svc
  end
  if bc.mp and (r.pt or 0) > 0 then  -- in prefill until its first output (or its end)
    l.pf = r.pt
    add_load(P .. 'bload', b .. ':p', r.pt)
  end
  if lender then
    l.lent = lender .. ':' .. r.pool
    add_load(P .. 'lent', l.lent, 1)
  end
  redis.call('HSET', P .. 'lease', id, cjson.encode(l))
  redis.call('ZADD', P .. 'exp', expires or now + ttl, id)
  redis.call('HSET', P .. 'granted', id, b)
  redis.call('HINCRBY', P .. 'stats', 'grants', 1)
end

-- A queued request's lease expires when its queue entry would have: only its owner's renewal
-- extends it. So a replica that died with requests queued does not see them granted a lease
-- TTL more of life each (holding capacity the living wait for) once its leases are reclaimed.
local function grant(id, r, tc, b, bc, now, ttl, lender)
  local expires = tonumber(redis.call('ZSCORE', P .. 'exp', id))
  unqueue(id)
  lease(id, r, tc, b, bc, now, ttl, lender, false, expires)
  notify(r.o, id .. ' ' .. b)
end

-- A new request of flow (t, band) frees a lease held for it: it then queues like any other.
local function take_held(t, band)
  local id = redis.call('ZRANGE', held_key(t, band), 0, 0)[1]
  if id and unlease(id) then redis.call('HINCRBY', P .. 'stats', 'held_taken', 1) end
end

