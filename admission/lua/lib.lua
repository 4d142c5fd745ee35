-- fairgate admission: shared functions of every admission script.
--
-- Every key of one admission domain shares one hash tag, so all scripts run on one Redis
-- Cluster slot. KEYS[1] is the domain's key prefix, e.g. "fairgate:{adm}:"; all other keys are
-- derived from it. Time comes from the Redis server (TIME), so replicas with skewed clocks agree.
--
-- State (P = prefix):
--   P.cfg:tenants  hash  tenant -> json {w, mc, mt, mq, band}
--   P.cfg:backends hash  backend -> json {pool, mc, mt, mp (optional)}
--   P.cfg:pools    hash  pool -> json [backend, ...]
--   P.cfg:lend     hash  borrowing pool -> json [[lending pool, most requests lent], ...]
--   P.cfg:bands    hash  band -> weight
--   P.cfg:policy   string "vtc" | "fcfs" | "shadow"
--   P.req          hash  request id -> json of a queued request
--   P.q:<tenant>:<band> zset queued ids of a tenant in a band, by arrival (FCFS within a flow)
--   P.queued       hash  tenant -> requests queued in all its bands (its max_queued);
--                        pool:<pool> -> requests queued for a pool (lenders lend only when 0)
--   P.lent         hash  <lender>:<borrower> -> requests running on a lender's engines
--   P.fifo         zset  every queued id by arrival sequence (the FCFS policy)
--   P.backlog:<band> zset backlogged tenants of a band by virtual counter
--   P.bandlog      zset  backlogged bands by band counter
--   P.vtc          hash  tenant -> virtual counter (service / weight); band:<b> -> band counter;
--                        p:<tenant> -> input charged to its requests in flight that have not
--                        yet shown output, in counter units: charged, not yet delivered (the
--                        lift floor leaves it out; gone when nothing of the tenant is in flight)
--   P.vfloor       hash  band -> system virtual time (lift floor when nothing is backlogged)
--   P.behind       hash  <tenant>:<band> -> how far its delivered counter was below the floor
--                        when its queue emptied (kept when it queues again);
--                        at:<tenant>:<band> -> when its queue emptied (ms, the return grace);
--                        owed:<tenant>:<band> -> what it is owed if back within the grace
--   P.cfg:grace    string ms within which a tenant whose queue emptied may queue again and
--                        keep its place (admission.return_grace_s)
--   P.lease        hash  request id -> json of a granted request (``ant``: held for the next
--                        request of its tenant, see hold_for_next)
--   P.ant:<tenant>:<band> zset ids of leases held for the tenant's next request, by expiry
--   P.exp          zset  id -> expiry ms (leases and queued entries; renewed by their owner)
--   P.dl           zset  queued id -> queue deadline ms
--   P.tload        hash  <tenant>:r / <tenant>:t -> requests / tokens in flight
--   P.bload        hash  <backend>:r / <backend>:t -> requests / tokens in flight;
--                        <backend>:p -> prompt tokens of its requests still in prefill
--                        (only for backends with a max_prefill_tokens cap, "mp")
--   P.granted      hash  id -> backend (for owners polling instead of hearing pub/sub)
--   P.down         hash  backend -> ms until which it takes no work
--   P.drained      hash  backend -> 1 while an operator drains it (no new work; `fairgate drain`)
--   P.engine       hash  <backend>:busy -> ms until which it takes no work (its engine reported
--                        waiting requests); <backend>:tokens -> KV tokens the engine reports in
--                        use (engine.lua, from each replica's scrape of the engine's metrics)
--   P.stats        hash  counters (grants, reclaimed, timeouts, shadow agreement)
--   channel P.grants:<owner>  "<id> <backend>" on grant, "<id> !timeout" on queue timeout
--   channel P.contended  "<id>" when a request starts to wait while none did (no lease reuse)

local P = KEYS[1]
local MAX_SWEEP = 64
-- How much of what it is owed a tenant back within the return grace keeps, in requests of its
-- own (see lifted): more than one wave of alike requests takes from it while its clients send
-- again, far less than a cold start can leave owed.
local KEPT_WITHIN_GRACE = 8

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function decode(raw)
  if not raw then return nil end
  return cjson.decode(raw)
end

-- Configuration does not change while a script runs: each entry is read and decoded once per
-- call (a dispatch round looks at the same tenants and backends again and again).
local cfg_cache = {}
local function cfg(hash, field)
  local key = hash .. '\0' .. field
  local value = cfg_cache[key]
  if value == nil then
    value = decode(redis.call('HGET', P .. hash, field)) or false
    cfg_cache[key] = value
  end
  return value or nil
end

local function tenant_cfg(t) return cfg('cfg:tenants', t) end
local function backend_cfg(b) return cfg('cfg:backends', b) end
local function pool_backends(pool) return cfg('cfg:pools', pool) end

local function counter(field)
  return tonumber(redis.call('HGET', P .. 'vtc', field) or '0')
end

local function band_weight(band)
  return cfg('cfg:bands', tostring(band)) or 1
end

-- The backlogged bands, read at most once per call while nothing becomes backlogged: on the
-- uncontended path (no band backlogged) charging then costs no lookups of backlog scores.
local bands_cache = nil
local function backlogged_bands()
  if bands_cache == nil then bands_cache = redis.call('ZRANGE', P .. 'bandlog', 0, -1) end
  return bands_cache
end

-- add to a load hash (whole numbers); a field back at zero is deleted, so idle state is empty
local function add_load(key, field, delta)
  local value = redis.call('HINCRBY', key, field, delta)
  if value <= 0 then redis.call('HDEL', key, field) end
  return value
end

local function load(key, field)
  return tonumber(redis.call('HGET', key, field) or '0')
end

-- A tenant's score is its counter in every band it is backlogged in (its requests may be queued
-- in several bands), not only in the band of the request that moved the counter.
local function rescore(t, c)
  for _, band in ipairs(backlogged_bands()) do
    if redis.call('ZSCORE', P .. 'backlog:' .. band, t) then
      redis.call('ZADD', P .. 'backlog:' .. band, c, t)
    end
  end
end

-- Add service (or, settling, return it) to a tenant and its band.
local function adjust(t, band, weight, service)
  rescore(t, redis.call('HINCRBYFLOAT', P .. 'vtc', t, service / weight))
  local bc = redis.call('HINCRBYFLOAT', P .. 'vtc', 'band:' .. band, service / band_weight(band))
  if #backlogged_bands() > 0 and redis.call('ZSCORE', P .. 'bandlog', band) then
    redis.call('ZADD', P .. 'bandlog', bc, band)
  end
end

-- Charge service to a tenant and its band: charges only add.
local function charge(t, band, weight, service)
  if service > 0 then adjust(t, band, weight, service) end
end

-- Settle a request at its end: ``used`` is the service the engine's usage says it received,
-- ``charged`` what it was charged while it ran (its input at the grant, its output as it
-- streamed or as its meter estimated). The difference is charged, or returned: a plain
-- response's meter may have charged output the engine never produced. Counters only move
-- down here, and by no more than the request itself was charged.
local function settle(t, band, weight, used, charged)
  if used ~= charged then adjust(t, band, weight, used - charged) end
end

-- Input charged to a tenant's requests in flight that have shown no output yet, in counter
-- units (service / weight): charged at the grant, delivered only once the engine has read the
-- prompt. Every other charge follows delivery (output as it streams).
local function pending(t)
  return tonumber(redis.call('HGET', P .. 'vtc', 'p:' .. t) or '0')
end

local function add_pending(t, weight, service)
  if service ~= 0 then redis.call('HINCRBYFLOAT', P .. 'vtc', 'p:' .. t, service / weight) end
end

-- A tenant's counter less what it was charged but has not received yet.
local function delivered(t)
  return counter(t) - pending(t)
end

-- The lift floor of a band: the smallest delivered counter of its backlogged tenants, or with
-- none the band's system virtual time. The input of a request is charged when it is granted,
-- before the engine has read it; a floor of raw counters would charge a newcomer for the work
-- others were granted an instant before it came (docs/fairness.md).
local function tenant_floor(band)
  local members = redis.call('ZRANGE', P .. 'backlog:' .. band, 0, -1, 'WITHSCORES')
  if #members == 0 then
    return tonumber(redis.call('HGET', P .. 'vfloor', band) or '0')
  end
  local names = {}
  for i = 1, #members, 2 do names[#names + 1] = 'p:' .. members[i] end
  local pend = redis.call('HMGET', P .. 'vtc', unpack(names))
  local floor
  for i, _ in ipairs(names) do
    local d = tonumber(members[2 * i]) - tonumber(pend[i] or '0')
    if not floor or d < floor then floor = d end
  end
  return floor
end

-- Raise a counter to at least ``value``; returns what it is now. The lift rules only raise.
local function raise_counter(field, value)
  local own = counter(field)
  if value > own then
    redis.call('HSET', P .. 'vtc', field, value)
    return value
  end
  return own
end

-- The same rule for priority bands, on raw band counters (their floor: 'bands').
local function lift_band(band)
  local first = redis.call('ZRANGE', P .. 'bandlog', 0, 0, 'WITHSCORES')
  local floor
  if #first > 0 then
    floor = tonumber(first[2])
  else
    floor = tonumber(redis.call('HGET', P .. 'vfloor', 'bands') or '0')
  end
  return raise_counter('band:' .. band, floor)
end

-- What tenant ``t``'s counter is to be when it becomes backlogged in ``band`` at ``now``: the
-- VTC lift rule. A newly backlogged tenant's delivered counter starts at no less than the floor
-- (what it was charged and has not received stays on top), so idleness is not banked. What it
-- forfeits is the service others received while it was idle, not what it was owed when its
-- queue emptied (``behind``: at most one request of its own).
-- A tenant that queues again within the grace (cfg:grace) of its queue running dry was not
-- idle: it was between two requests, like a client that sends its next request as soon as its
-- last answer arrives. It keeps what it was owed then up to KEPT_WITHIN_GRACE requests of its
-- own (``owed``). Without the grace, a tenant whose requests end together (a wave of alike
-- requests) found its queue empty at every wave for the moment its clients took to send again,
-- was lifted each time and lost what it was owed beyond one request: below its share wave after
-- wave. Without the bound, it kept everything, including a debt from a cold start that it then
-- collected over minutes (docs/fairness.md, issue 12).
local function lifted(t, band, now)
  local flow = t .. ':' .. band
  local seen = redis.call('HMGET', P .. 'behind', flow, 'at:' .. flow, 'owed:' .. flow)
  local grace = tonumber(redis.call('GET', P .. 'cfg:grace') or '0')
  local behind = seen[1]
  if seen[2] and now - tonumber(seen[2]) < grace then
    behind = seen[3]  -- back within the grace: it was between two requests, not idle
  end
  return math.max(counter(t), tenant_floor(band) - tonumber(behind or '0') + pending(t))
end

local function mark_backlogged(t, band, now)
  local bkey = P .. 'backlog:' .. band
  if not redis.call('ZSCORE', bkey, t) then
    local c = raise_counter(t, lifted(t, band, now))
    rescore(t, c)
    redis.call('ZADD', bkey, c, t)
  end
  if not redis.call('ZSCORE', P .. 'bandlog', band) then
    redis.call('ZADD', P .. 'bandlog', lift_band(band), band)
    bands_cache = nil
  end
end

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
-- ``known``: its record, if the caller has read it already.
local function unlease(id, known)
  local l = known or decode(redis.call('HGET', P .. 'lease', id))
  if not l then return nil end
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
  redis.call('PUBLISH', P .. 'grants:' .. owner, message)
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

-- Whether backend ``b`` takes new work now: not down, its engine not busy, not drained.
-- ``busy`` (the engine's busy-until, '0' if none) and ``draining`` (whether any backend is
-- drained) may be passed in by a caller that has read them already.
local function backend_open(b, now, busy, draining)
  busy = busy or redis.call('HGET', P .. 'engine', b .. ':busy') or '0'
  if draining == nil then draining = redis.call('EXISTS', P .. 'drained') == 1 end
  return tonumber(redis.call('HGET', P .. 'down', b) or '0') <= now
    and tonumber(busy) <= now
    and not (draining and redis.call('HEXISTS', P .. 'drained', b) == 1)
end

-- Where the request could run now: a backend with room, or why not ("tenant" or "pool").
-- One request larger than a whole budget may still run alone on an idle tenant / backend.
-- The least loaded backend of ``pool`` with room for ``r`` (and its config), or nil.
local function pick(pool, r, now)
  local backends = pool_backends(pool) or {}
  local best, best_score, best_cfg = nil, nil, nil
  local pref_score, pref_cfg = nil, nil
  local draining = redis.call('EXISTS', P .. 'drained') == 1
  for _, b in ipairs(backends) do
    local bc = backend_cfg(b)
    local engine = redis.call('HMGET', P .. 'engine', b .. ':busy', b .. ':tokens')
    if bc and backend_open(b, now, engine[1] or '0', draining) then
      local l = redis.call('HMGET', P .. 'bload', b .. ':r', b .. ':t', b .. ':p')
      local br, bt = tonumber(l[1] or '0'), tonumber(l[2] or '0')
      -- least outstanding tokens: fairgate's own estimate, or the engine's report if higher
      -- (work that did not come through fairgate, or outputs longer than estimated)
      local score = math.max(bt, tonumber(engine[2] or '0'))
      local fits = br < bc.mc and (bt + r.tok <= bc.mt or br == 0)
      if fits and bc.mp then  -- long prefills one after another, never all at once
        local bp = tonumber(l[3] or '0')
        fits = bp + (r.pt or 0) <= bc.mp or bp == 0
      end
      if fits and (not best or score < best_score) then
        best, best_score, best_cfg = b, score, bc
      end
      if fits and b == r.pref then pref_score, pref_cfg = score, bc end
    end
  end
  -- session affinity, while the load allows: the session's engine if within the slack
  if pref_score and pref_score <= best_score + (r.slack or 0) then return r.pref, pref_cfg end
  return best, best_cfg
end

-- Where the request could run now: a backend with room, or why not ("tenant" or "pool").
-- One request larger than a whole budget may still run alone on an idle tenant / backend.
-- With its own pool full, a pool that lends to it may take it: only while that pool has
-- nothing of its own queued, and within its cap. Returns backend, nil, its config, lender.
local function place(r, tc, now)
  local tl = redis.call('HMGET', P .. 'tload', r.t .. ':r', r.t .. ':t')
  local tr, tt = tonumber(tl[1] or '0'), tonumber(tl[2] or '0')
  if tr >= tc.mc or (tt + r.tok > tc.mt and tr > 0) then return nil, 'tenant' end
  local b, bc = pick(r.pool, r, now)
  if b then return b, nil, bc end
  for _, lender in ipairs(decode(redis.call('HGET', P .. 'cfg:lend', r.pool)) or {}) do
    local pool, cap = lender[1], lender[2]
    if load(P .. 'queued', 'pool:' .. pool) == 0
        and load(P .. 'lent', pool .. ':' .. r.pool) < cap then
      b, bc = pick(pool, r, now)
      if b then return b, nil, bc, pool end
    end
  end
  return nil, 'pool'
end

-- Serve a tenant: the system virtual time (the lift floor) advances to the delivered counter
-- of the tenant and the counter of the band served, before their charge; then the input
-- service is charged. ``delivered_now``: pending input (service) that has just been delivered
-- but is still counted as pending (a reused lease's finished request).
local function serve(t, band, weight, service, delivered_now)
  local vts = redis.call('HMGET', P .. 'vtc', t, 'band:' .. band, 'p:' .. t)
  local floors = redis.call('HMGET', P .. 'vfloor', band, 'bands')
  local pend = tonumber(vts[3] or '0') - (delivered_now or 0) / weight
  local vt = tonumber(vts[1] or '0') - pend  -- the delivered counter
  local bvt = tonumber(vts[2] or '0')
  if vt > tonumber(floors[1] or '0') then redis.call('HSET', P .. 'vfloor', band, vt) end
  if bvt > tonumber(floors[2] or '0') then redis.call('HSET', P .. 'vfloor', 'bands', bvt) end
  charge(t, band, weight, service)
end

-- Hold the budgets, charge the input service, and record the lease of a granted request.
local function lease(id, r, tc, b, bc, now, ttl, lender, uncontended)
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
  redis.call('ZADD', P .. 'exp', now + ttl, id)
  redis.call('HSET', P .. 'granted', id, b)
  redis.call('HINCRBY', P .. 'stats', 'grants', 1)
end

local function grant(id, r, tc, b, bc, now, ttl, lender)
  unqueue(id)
  lease(id, r, tc, b, bc, now, ttl, lender)
  notify(r.o, id .. ' ' .. b)
end

-- Tenants in the order the policy serves them, each with the id at the head of its queue.
local function fair_order()
  local order = {}
  local bands = redis.call('ZRANGE', P .. 'bandlog', 0, -1)
  for _, band in ipairs(bands) do
    for _, t in ipairs(redis.call('ZRANGE', P .. 'backlog:' .. band, 0, -1)) do
      local head = redis.call('ZRANGE', queue_key(t, band), 0, 0)[1]
      if head then order[#order + 1] = head end
    end
  end
  return order
end

local function arrival_order()
  local order, seen = {}, {}
  for _, id in ipairs(redis.call('ZRANGE', P .. 'fifo', 0, -1)) do
    local r = decode(redis.call('HGET', P .. 'req', id))
    local flow = r and (r.t .. ':' .. r.band)
    if r and not seen[flow] then  -- only the head of each flow's queue may go (FCFS within)
      seen[flow] = true
      order[#order + 1] = id
    end
  end
  return order
end

-- Tenants ahead of ``t`` in fair order whose heads their own limits held back (concurrency or
-- tokens in flight) forfeit the turn: their counters rise to ``t``'s less one request of their
-- own, in ``t``'s band. A tenant at its own cap is not asking for more than it has; without
-- this its counter would fall behind for as long as the cap holds it, and it would later claim
-- all of that back at once from everyone else. The one request it keeps means that a cap that
-- binds only for a moment costs it nothing (docs/fairness.md).
local function forfeit(capped, t, band)
  if #capped == 0 then return end
  local c = counter(t)
  for _, r in ipairs(capped) do
    local tc = tenant_cfg(r.t)
    local floor = c - r.svc / tc.w  -- it may stay one request of its own behind
    if r.band == band and r.t ~= t and counter(r.t) < floor then
      rescore(r.t, raise_counter(r.t, floor))
    end
  end
end

-- Anticipation: whether the next request of ``l``'s tenant would come first in fair order if
-- it were queued now. Its own queue in the band is empty (else that takes the capacity anyway),
-- others wait in the band, and its counter, as the lift would leave it on its return, comes
-- before the lowest of theirs in the order dispatch reads them (by counter, then by name).
local function owed_next(l, now)
  if redis.call('ZCARD', queue_key(l.t, l.band)) > 0 then return false end
  local first = redis.call('ZRANGE', P .. 'backlog:' .. l.band, 0, 0, 'WITHSCORES')
  if #first == 0 then return false end
  local own, lowest = lifted(l.t, l.band, now), tonumber(first[2])
  return own < lowest or (own == lowest and l.t < first[1])
end

-- Hold a finished request's lease for up to ``hold`` ms for the next request of its tenant, if
-- that request would come first in fair order (owed_next), instead of handing the capacity to
-- the tenants waiting now. A client's next request reaches the gateway a few milliseconds after
-- its last answer; without the hold, a tenant whose requests end together (a wave of alike
-- requests) sees the capacity they freed go to others an instant before it asks again, and
-- loses its share for a whole wave (docs/fairness.md). The held lease changes no order: the
-- tenant's next request frees it and queues like any other (enqueue.lua), and a hold nobody
-- takes lapses. It only delays the dispatch of what the lease holds, by at most ``hold``.
-- Returns whether the lease is now held.
local function hold_for_next(id, l, now, hold)
  if (redis.call('GET', P .. 'cfg:policy') or 'vtc') ~= 'vtc' or not owed_next(l, now) then
    return false
  end
  if l.pd then  -- the request ran: its input was delivered
    add_pending(l.t, l.w, -l.pd)
    l.pd = nil
  end
  if l.pf then
    add_load(P .. 'bload', l.b .. ':p', -l.pf)
    l.pf = nil
  end
  l.ant, l.ch = 1, 0
  redis.call('HSET', P .. 'lease', id, cjson.encode(l))
  redis.call('ZADD', P .. 'exp', now + hold, id)
  redis.call('ZADD', held_key(l.t, l.band), now + hold, id)
  redis.call('HDEL', P .. 'granted', id)
  redis.call('HINCRBY', P .. 'stats', 'held', 1)
  return true
end

-- A new request of flow (t, band) frees a lease held for it: it then queues like any other.
local function take_held(t, band)
  local id = redis.call('ZRANGE', held_key(t, band), 0, 0)[1]
  if id and unlease(id) then redis.call('HINCRBY', P .. 'stats', 'held_taken', 1) end
end

-- Grant every queued request that fits, in policy order. A head that is blocked only by its
-- pool being full reserves that pool for this round, so that smaller requests of tenants
-- further back cannot starve it. Returns the grants as {id, backend, ...}.
local function dispatch(now, ttl, max_grants)
  local policy = redis.call('GET', P .. 'cfg:policy') or 'vtc'
  local grants = {}
  while #grants < 2 * max_grants do
    local order = (policy == 'vtc') and fair_order() or arrival_order()
    local reserved, granted, capped = {}, false, {}
    for index, id in ipairs(order) do
      local r = decode(redis.call('HGET', P .. 'req', id))
      local tc = r and tenant_cfg(r.t)
      if r and tc and not reserved[r.pool] then
        local b, blocked, bc, lender = place(r, tc, now)
        if b then
          if policy == 'shadow' then
            local fair = fair_order()[1]
            redis.call('HINCRBY', P .. 'stats', fair == id and 'shadow_agree' or 'shadow_differ', 1)
          elseif policy == 'vtc' then
            forfeit(capped, r.t, r.band)
          end
          grant(id, r, tc, b, bc, now, ttl, lender)
          grants[#grants + 1] = id
          grants[#grants + 1] = b
          granted = true
          break
        elseif blocked == 'pool' then
          reserved[r.pool] = true
        else
          capped[#capped + 1] = r
        end
      end
    end
    if not granted then break end
  end
  return grants
end
