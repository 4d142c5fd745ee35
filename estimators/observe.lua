-- Learn from one finished request, in one step: compare the prompt estimate with the engine's
-- count (correction factor and error distribution), record the true output length in the
-- tenant's and the model's recent history, and compare the output estimate with it.
-- KEYS[1]: the model's calibration hash, KEYS[2]: the tenant's history list,
-- KEYS[3]: the model-wide history list (all three share the model's hash tag)
-- ARGV[1]: EWMA weight, ARGV[2]: history length kept, ARGV[3]: history time to live (ms)
-- ARGV[4..7]: prompt raw count, prompt estimate used, prompt actual ('' to skip), error bucket
-- ARGV[8..10]: output estimate used, output actual ('' to skip), error bucket
-- Returns the prompt correction factor after this observation (a string).

local function calibrate(kind, raw, used, actual, bucket)
  local n = redis.call('HINCRBY', KEYS[1], kind .. ':n', 1)
  local factor = tonumber(redis.call('HGET', KEYS[1], kind .. ':factor') or '1')
  if raw > 0 and actual > 0 then
    -- the ratio of moving averages of actual and counted tokens (token-weighted, so long
    -- prompts count as much as they cost); plain means for the first 1/alpha observations
    local alpha = math.max(tonumber(ARGV[1]), 1 / n)
    local mean_raw = tonumber(redis.call('HGET', KEYS[1], kind .. ':mean_raw') or '0')
    local mean_actual = tonumber(redis.call('HGET', KEYS[1], kind .. ':mean_actual') or '0')
    mean_raw = mean_raw + alpha * (raw - mean_raw)
    mean_actual = mean_actual + alpha * (actual - mean_actual)
    factor = mean_actual / mean_raw
    redis.call('HSET', KEYS[1], kind .. ':factor', tostring(factor),
               kind .. ':mean_raw', tostring(mean_raw), kind .. ':mean_actual', tostring(mean_actual))
  end
  if actual > 0 then
    redis.call('HINCRBYFLOAT', KEYS[1], kind .. ':abs_pct_error_sum', math.abs(used - actual) / actual)
  end
  redis.call('HINCRBY', KEYS[1], kind .. ':error:' .. bucket, 1)
  return factor
end

local factor = tonumber(redis.call('HGET', KEYS[1], 'prompt:factor') or '1')
if ARGV[6] ~= '' then
  factor = calibrate('prompt', tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7])
end
if ARGV[9] ~= '' then
  local output = tonumber(ARGV[9])
  for i = 2, 3 do
    redis.call('LPUSH', KEYS[i], output)
    redis.call('LTRIM', KEYS[i], 0, tonumber(ARGV[2]) - 1)
    redis.call('PEXPIRE', KEYS[i], ARGV[3])
  end
  calibrate('output', tonumber(ARGV[8]), tonumber(ARGV[8]), output, ARGV[10])
end
return tostring(factor)
