-- Learn from a batch of finished requests of one model, in one step: compare each prompt
-- estimate with the engine's count (correction factor and error distribution), record each
-- true output length in the tenant's and the model's recent history, and compare the output
-- estimate with it. A replica sends what it observed over a few milliseconds as one batch.
-- KEYS[1]: the model's calibration hash; KEYS[2..]: history lists (tenants' and model-wide);
-- all share the model's hash tag.
-- ARGV[1]: EWMA weight, ARGV[2]: history length kept, ARGV[3]: history time to live (ms)
-- then 9 values per observation: index in KEYS of the tenant's history list, of the model-wide
-- list; prompt raw count, prompt estimate used, prompt actual ('' to skip), error bucket;
-- output estimate used, output actual ('' to skip), error bucket.
-- Returns the prompt correction factor after the batch (a string).

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

local size, ttl = tonumber(ARGV[2]), ARGV[3]
local touched = {}
local factor = tonumber(redis.call('HGET', KEYS[1], 'prompt:factor') or '1')
for i = 4, #ARGV, 9 do
  if ARGV[i + 4] ~= '' then
    factor = calibrate('prompt', tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]),
                       tonumber(ARGV[i + 4]), ARGV[i + 5])
  end
  if ARGV[i + 7] ~= '' then
    local output = tonumber(ARGV[i + 7])
    for _, k in ipairs({tonumber(ARGV[i]), tonumber(ARGV[i + 1])}) do
      redis.call('LPUSH', KEYS[k], output)
      touched[k] = true
    end
    calibrate('output', tonumber(ARGV[i + 6]), tonumber(ARGV[i + 6]), output, ARGV[i + 8])
  end
end
for k in pairs(touched) do
  redis.call('LTRIM', KEYS[k], 0, size - 1)
  redis.call('PEXPIRE', KEYS[k], ttl)
end
return tostring(factor)
