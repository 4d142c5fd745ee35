-- Placement picker: the candidate with the least load (the first in pool order on a tie).
local function pick_least_loaded(candidates)
  local best = nil
  for _, c in ipairs(candidates) do
    if not best or c.load < best.load then best = c end
  end
  return best
end
