-- Order between flows: VTC, virtual token counters (Sheng et al., "Fairness in Serving Large
-- Language Models", OSDI '24). Priority bands by band counter, then within each band the
-- backlogged tenants by virtual counter (service / weight); FCFS within a flow. The counters,
-- the lift rules and the charges are in lib/counters.lua; this file is the order they give.
-- ``anticipates``: a finished lease may be held for its tenant's next request when that
-- request would come first (hold_for_next in lib/dispatch.lua).

-- The head of every backlogged flow, in fair order.
local function vtc_heads()
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

local order_vtc = {
  heads = vtc_heads,
  -- a head is about to be granted; ``capped``: the heads before it that their tenants' own
  -- limits held back this round
  on_grant = function(_, r, capped) forfeit(capped, r.t, r.band) end,
  anticipates = true,
}
