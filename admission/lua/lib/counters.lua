-- Virtual counters: charging, settling, the lift rules and the backlog of tenants and bands.

-- A tenant's score is its counter in every band it is backlogged in (its requests may be queued
-- in several bands), not only in the band of the request that moved the counter.
local function rescore(t, c)
  for _, band in ipairs(backlogged_bands()) do
    if redis.call('ZSCORE', P .. 'backlog:' .. band, t) then
      redis.call('ZADD', P .. 'backlog:' .. band, c, t)
    end
  end
end

-- Add service (or, settling, return it) to a tenant and its band. ``served`` keeps the plain
-- sum (no weight, no lifts) that the live state samples for recent shares (admission/live.py):
-- a counter's increase also holds its lifts, which are no service.
local function adjust(t, band, weight, service)
  redis.call('HINCRBYFLOAT', P .. 'served', t, service)
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

