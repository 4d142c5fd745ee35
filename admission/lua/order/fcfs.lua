-- Order between flows: FCFS, first come first served across every tenant, as a plain queue in
-- front of an engine would serve them (the baseline fairness is measured against). Only the
-- head of each flow's queue may go, so a flow's requests still start in their own order.

-- The head of every flow with queued requests, by the arrival of that head.
local function fcfs_heads()
  local order, seen = {}, {}
  for _, id in ipairs(redis.call('ZRANGE', P .. 'fifo', 0, -1)) do
    local r = decode(redis.call('HGET', P .. 'req', id))
    local flow = r and (r.t .. ':' .. r.band)
    if r and not seen[flow] then  -- only the head of each flow's queue may go (FCFS within)
      seen[flow] = true
      order[#order + 1] = id
    end
  end
  return order
end

local order_fcfs = {
  heads = fcfs_heads,
  on_grant = function() end,
  anticipates = false,
}
