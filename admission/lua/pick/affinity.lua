-- Placement picker: session affinity, while the load allows. The request's session backend
-- (``r.pref``, from the pool's affinity setting) if it is a candidate and its load is within
-- ``r.slack`` tokens of the least loaded candidate's; otherwise no pick (the next picker
-- decides). Keeps a session's prefix cache warm without piling work on one engine.
local function pick_affinity(candidates, r)
  if not r.pref then return nil end
  local own, least = nil, nil
  for _, c in ipairs(candidates) do
    if c.b == r.pref then own = c end
    if not least or c.load < least then least = c.load end
  end
  if own and own.load <= least + (r.slack or 0) then return own end
  return nil
end
