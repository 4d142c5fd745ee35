-- Placement: which backend a request runs on, from the configured parts. FILTERS (filter/)
-- say whether a backend can take the request now; SCORERS (score/) each give a figure of its
-- load in tokens, and its load is the largest of them (each is a floor on the work it holds);
-- PICKERS (pick/) choose among the backends that passed, the first picker with an answer wins.

-- What placement reads of one backend, once per look: its config, its engine's report and the
-- budgets in use on it.
local function backend_view(b, bc, draining)
  local engine = redis.call('HMGET', P .. 'engine', b .. ':busy', b .. ':tokens')
  local l = redis.call('HMGET', P .. 'bload', b .. ':r', b .. ':t', b .. ':p')
  return {
    b = b, cfg = bc, draining = draining,
    busy = engine[1] or '0', engine_tokens = tonumber(engine[2] or '0'),
    running = tonumber(l[1] or '0'), tokens = tonumber(l[2] or '0'),
    prefill = tonumber(l[3] or '0'),
  }
end

local function passes(v, r, now)
  for _, filter in ipairs(FILTERS) do
    if not filter(v, r, now) then return false end
  end
  return true
end

local function load_of(v)
  local most = 0
  for _, score in ipairs(SCORERS) do
    local figure = score(v)
    if figure > most then most = figure end
  end
  return most
end

-- The backend of ``pool`` the pickers choose for ``r`` among those that pass every filter
-- (and its config), or nil.
local function pick(pool, r, now)
  local candidates = {}
  local draining = redis.call('EXISTS', P .. 'drained') == 1
  for _, b in ipairs(pool_backends(pool) or {}) do
    local bc = backend_cfg(b)
    if bc then
      local v = backend_view(b, bc, draining)
      if passes(v, r, now) then
        v.load = load_of(v)
        candidates[#candidates + 1] = v
      end
    end
  end
  if #candidates == 0 then return nil end
  for _, choose in ipairs(PICKERS) do
    local c = choose(candidates, r)
    if c then return c.b, c.cfg end
  end
  return nil
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

