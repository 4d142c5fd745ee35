-- Periodic upkeep from every replica: reclaim what dead owners left, then dispatch.
-- ARGV: ttl ms, max grants. Returns grants as id, backend pairs.
local now = now_ms()
sweep(now)
return dispatch(now, tonumber(ARGV[1]), tonumber(ARGV[2]))
