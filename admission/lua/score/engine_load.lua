-- Placement scorer: the KV-cache tokens the engine itself reports in use (engine.lua, from the
-- replicas' scrapes of its metrics; 0 when unknown). Higher than fairgate's own figure when
-- work came from elsewhere or outputs ran longer than estimated.
local function score_engine_load(v)
  return v.engine_tokens
end
