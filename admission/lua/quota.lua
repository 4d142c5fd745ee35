-- A tenant's quotas on their own, apart from any lease: the tokens of a request that was
-- charged but never ran go back ('correct'), or where every limit stands is read ('peek',
-- which changes nothing) (composed from lib/state.lua and lib/quota.lua only).
-- ARGV: one quota part (see lib/quota.lua).
-- Returns the part's answer: {fits, ms until it would fit, then per limit: remaining, reset ms}.
local q = quota_part(1)
local _, answer = quota_apply(q, now_ms())
return answer
