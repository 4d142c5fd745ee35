-- requires: order/vtc order/fcfs
-- Order between flows: FCFS, while counting how often VTC would have chosen the same head
-- (stats shadow_agree / shadow_differ): a way to see what switching to vtc would change before
-- switching, on live traffic.

local order_shadow = {
  heads = fcfs_heads,
  on_grant = function(id)
    local agreed = vtc_heads()[1] == id
    redis.call('HINCRBY', P .. 'stats', agreed and 'shadow_agree' or 'shadow_differ', 1)
  end,
  anticipates = false,
}
