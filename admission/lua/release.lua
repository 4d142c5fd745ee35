-- End a lease: free its budgets, settle its charge, dispatch what now fits. Idempotent.
-- With a hold (ms > 0) and the tenant owed the next turn, the lease is held for the tenant's next
-- request instead (hold_for_next); its owner releases it again when the hold ends.
-- ARGV: id, total service actually used ('' if unknown), ttl ms, max grants, hold ms (optional),
--       and optionally the finished request's quota correction (a quota part, lib/quota.lua:
--       the tokens it used instead of those charged), applied whatever became of the lease;
--       a retried one ('retry', after a release whose answer was lost) only while the lease is
--       there and not held: a release that ran took the lease and applied it already
-- Returns {1 if a lease was released, 2 if it is held, else 0; 1 if requests wait anywhere
--         else 0; grants...}
local id, ttl, max_grants = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4])
local hold = tonumber(ARGV[5] or '0')
local now = now_ms()
local correction = quota_part(6)
local l = decode(redis.call('HGET', P .. 'lease', id))
if correction and (not correction.retry or (l and not l.ant)) then
  quota_apply(correction, now)
end
if l and ARGV[2] ~= '' then
  settle(l.t, l.band, l.w, tonumber(ARGV[2]), l.ch)
end
local contended = #backlogged_bands() > 0
if l and not l.ant and hold > 0 and contended and hold_for_next(id, l, now, hold) then
  return {2, 1}
end
if l and l.ant then redis.call('HINCRBY', P .. 'stats', 'held_lapsed', 1) end
l = unlease(id, l)
if not contended then
  return {l and 1 or 0, 0}  -- nothing waits: nothing to dispatch (upkeep sweeps regularly)
end
sweep(now)
local grants = dispatch(now, ttl, max_grants)
return {l and 1 or 0, 1, unpack(grants)}
