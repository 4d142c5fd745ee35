-- Compare one estimate with what the engine reported, for one model and one kind of estimate.
-- KEYS[1]: the model's calibration hash
-- ARGV[1]: kind ("prompt" or "output")
-- ARGV[2]: the raw count the correction factor applies to
-- ARGV[3]: the estimate that was used
-- ARGV[4]: the engine's actual count
-- ARGV[5]: EWMA weight of a new observation
-- ARGV[6]: error bucket of the used estimate (a field name)
-- Returns the new correction factor (actual / raw, smoothed) as a string.
local kind = ARGV[1]
local raw, used, actual = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local n = redis.call('HINCRBY', KEYS[1], kind .. ':n', 1)
local factor = tonumber(redis.call('HGET', KEYS[1], kind .. ':factor') or '1')
if raw > 0 and actual > 0 then
  -- a plain mean for the first 1/alpha observations, then an exponential moving average
  local alpha = math.max(tonumber(ARGV[5]), 1 / n)
  factor = factor + alpha * (actual / raw - factor)
  redis.call('HSET', KEYS[1], kind .. ':factor', tostring(factor))
end
if actual > 0 then
  redis.call('HINCRBYFLOAT', KEYS[1], kind .. ':abs_pct_error_sum', math.abs(used - actual) / actual)
end
redis.call('HINCRBY', KEYS[1], kind .. ':error:' .. ARGV[6], 1)
return tostring(factor)
