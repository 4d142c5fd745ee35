-- Placement filter: the backend takes new work now (not down, its engine not busy, not
-- drained). ``v``: the backend's view (lib/placement.lua).
local function filter_open(v, _, now)
  return backend_open(v.b, now, v.busy, v.draining)
end
