-- Dispatch: granting queued requests in the configured order (ORDER), and holding a finished
-- lease for a tenant the order owes the next turn.

-- Anticipation: whether the next request of ``l``'s tenant would come first in fair order if
-- it were queued now. Its own queue in the band is empty (else that takes the capacity anyway),
-- others wait in the band, and its counter, as the lift would leave it on its return, comes
-- before the lowest of theirs in the order dispatch reads them (by counter, then by name).
local function owed_next(l, now)
  if redis.call('ZCARD', queue_key(l.t, l.band)) > 0 then return false end
  local first = redis.call('ZRANGE', P .. 'backlog:' .. l.band, 0, 0, 'WITHSCORES')
  if #first == 0 then return false end
  local own, lowest = lifted(l.t, l.band, now), tonumber(first[2])
  return own < lowest or (own == lowest and l.t < first[1])
end

-- Hold a finished request's lease for up to ``hold`` ms for the next request of its tenant, if
-- the order anticipates (vtc) and that request would come first in fair order (owed_next), instead of handing the capacity to
-- the tenants waiting now. A client's next request reaches the gateway a few milliseconds after
-- its last answer; without the hold, a tenant whose requests end together (a wave of alike
-- requests) sees the capacity they freed go to others an instant before it asks again, and
-- loses its share for a whole wave (docs/fairness.md). The held lease changes no order: the
-- tenant's next request frees it and queues like any other (enqueue.lua), and a hold nobody
-- takes lapses. It only delays the dispatch of what the lease holds, by at most ``hold``.
-- Returns whether the lease is now held.
local function hold_for_next(id, l, now, hold)
  if not ORDER.anticipates or not owed_next(l, now) then
    return false
  end
  if l.pd then  -- the request ran: its input was delivered
    add_pending(l.t, l.w, -l.pd)
    l.pd = nil
  end
  if l.pf then
    add_load(P .. 'bload', l.b .. ':p', -l.pf)
    l.pf = nil
  end
  l.ant, l.ch = 1, 0
  redis.call('HSET', P .. 'lease', id, cjson.encode(l))
  redis.call('ZADD', P .. 'exp', now + hold, id)
  redis.call('ZADD', held_key(l.t, l.band), now + hold, id)
  redis.call('HDEL', P .. 'granted', id)
  redis.call('HINCRBY', P .. 'stats', 'held', 1)
  return true
end


-- Grant every queued request that fits, in the order's order (ORDER.heads). A head that is
-- blocked only by its pool being full reserves that pool for this round, so that smaller
-- requests of tenants further back cannot starve it. Returns the grants as {id, backend, ...}.
local function dispatch(now, ttl, max_grants)
  local grants = {}
  while #grants < 2 * max_grants do
    local reserved, granted, capped = {}, false, {}
    for _, id in ipairs(ORDER.heads()) do
      local r = decode(redis.call('HGET', P .. 'req', id))
      local tc = r and tenant_cfg(r.t)
      if r and tc and not reserved[r.pool] then
        local b, blocked, bc, lender = place(r, tc, now)
        if b then
          ORDER.on_grant(id, r, capped)
          grant(id, r, tc, b, bc, now, ttl, lender)
          grants[#grants + 1] = id
          grants[#grants + 1] = b
          granted = true
          break
        elseif blocked == 'pool' then
          reserved[r.pool] = true
        else
          capped[#capped + 1] = r
        end
      end
    end
    if not granted then break end
  end
  return grants
end
