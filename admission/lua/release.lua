-- End a lease: free its budgets, settle its charge, dispatch what now fits. Idempotent.
-- ARGV: id, total service actually used ('' if unknown), ttl ms, max grants
-- Returns {1 if a lease was released else 0, 1 if requests wait anywhere else 0, grants...}
local id, ttl, max_grants = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local l = unlease(id)
if l and ARGV[2] ~= '' then
  settle(l.t, l.band, l.w, tonumber(ARGV[2]), l.ch)
end
if #backlogged_bands() == 0 then
  return {l and 1 or 0, 0}  -- nothing waits: nothing to dispatch (upkeep sweeps regularly)
end
sweep(now)
local grants = dispatch(now, ttl, max_grants)
return {l and 1 or 0, 1, unpack(grants)}
