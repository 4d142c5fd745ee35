-- fairgate admission: the state every admission script shares, and reading it.
--
-- An admission script is composed (admission/policy.py) of the files in lib/ (this one first:
-- state; counters; leases), the parts of the configured policy (order/, filter/, score/,
-- pick/), a few lines naming those parts, lib/placement.lua and lib/dispatch.lua, and last the
-- entry script (enqueue.lua, release.lua, ...). Redis has no ``require``: each script is one
-- chunk, so a function is visible to everything after the file that defines it.
--
-- Every key of one admission domain shares one hash tag, so all scripts run on one Redis
-- Cluster slot. KEYS[1] is the domain's key prefix, e.g. "fairgate:{adm}:"; all other keys are
-- derived from it. Time comes from the Redis server (TIME), so replicas with skewed clocks agree.
-- Messages go out with PUBLISH, a name bound before this file: 'PUBLISH', or 'SPUBLISH' on a
-- Redis Cluster (sharded pub/sub on the domain's slot; fairgate/pubsub.py).
--
-- State (P = prefix):
--   P.cfg:tenants  hash  tenant -> json {w, mc, mt, mq, band}
--   P.cfg:backends hash  backend -> json {pool, mc, mt, mp (optional)}
--   P.cfg:pools    hash  pool -> json [backend, ...]
--   P.cfg:lend     hash  borrowing pool -> json [[lending pool, most requests lent], ...]
--   P.cfg:bands    hash  band -> weight
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
--   P.served       hash  tenant -> service charged to it, in all (settlements included; no
--                        weight, no lifts): sampled by each replica for recent shares
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
--   P.quota:<tenant> hash limit field -> GCRA theoretical arrival time ms (lib/quota.lua)
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

-- add to a load hash (whole numbers); a field back at zero is deleted, so idle state is empty.
-- A zero delta changes nothing and is not sent: Lua writes -0 (a lease of no tokens, released)
-- as "-0", which HINCRBY refuses, and an error half-way through a script leaves its earlier
-- writes in place.
local function add_load(key, field, delta)
  if delta == 0 then return tonumber(redis.call('HGET', key, field) or '0') end
  local value = redis.call('HINCRBY', key, field, delta)
  if value <= 0 then redis.call('HDEL', key, field) end
  return value
end

local function load(key, field)
  return tonumber(redis.call('HGET', key, field) or '0')
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

