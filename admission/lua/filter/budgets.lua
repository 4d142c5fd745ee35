-- Placement filter: the backend's concurrency and in-flight token budgets have room for the
-- request. One request larger than a whole token budget may still run alone on an idle backend.
local function filter_budgets(v, r)
  return v.running < v.cfg.mc and (v.tokens + r.tok <= v.cfg.mt or v.running == 0)
end
