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
--
-- The observations are applied one after another, as if each were its own call, but the
-- calibration hash is read once and written once per batch, and each history list takes one
-- LPUSH: Redis' cost per observation is a few table operations instead of about sixteen
-- commands. Values are stored as Lua's tostring writes them (14 significant digits) and each
-- observation continues from the stored value, so the result is the same as one call each.

local alpha0 = tonumber(ARGV[1])
local fields = {'prompt:n', 'prompt:factor', 'prompt:mean_raw', 'prompt:mean_actual',
                'output:n', 'output:factor', 'output:mean_raw', 'output:mean_actual'}
local stored = redis.call('HMGET', KEYS[1], unpack(fields))

-- One kind's state (prompt or output) as read, and what the batch adds to it.
local function state(i)
  return {n = tonumber(stored[i] or '0'), factor = tonumber(stored[i + 1] or '1'),
          mean_raw = tonumber(stored[i + 2] or '0'), mean_actual = tonumber(stored[i + 3] or '0'),
          counted = 0, moved = false, error_sum = 0, errors_seen = false, buckets = {}}
end
local kinds = {prompt = state(1), output = state(5)}

-- as a value written with tostring and read back with tonumber
local function stored_as(x) return tonumber(tostring(x)) end

local function calibrate(s, raw, used, actual, bucket)
  s.counted = s.counted + 1
  local n = s.n + s.counted
  if raw > 0 and actual > 0 then
    -- the ratio of moving averages of actual and counted tokens (token-weighted, so long
    -- prompts count as much as they cost); plain means for the first 1/alpha observations
    local alpha = math.max(alpha0, 1 / n)
    local mean_raw = s.mean_raw + alpha * (raw - s.mean_raw)
    local mean_actual = s.mean_actual + alpha * (actual - s.mean_actual)
    s.factor = stored_as(mean_actual / mean_raw)
    s.mean_raw, s.mean_actual = stored_as(mean_raw), stored_as(mean_actual)
    s.moved = true
  end
  if actual > 0 then
    s.error_sum = s.error_sum + math.abs(used - actual) / actual
    s.errors_seen = true
  end
  s.buckets[bucket] = (s.buckets[bucket] or 0) + 1
end

local size, ttl = tonumber(ARGV[2]), ARGV[3]
local pushed = {}  -- key index -> output lengths, in the order they were observed
local function push(k, output)
  local list = pushed[k]
  if not list then
    list = {}
    pushed[k] = list
  end
  list[#list + 1] = output
end

for i = 4, #ARGV, 9 do
  if ARGV[i + 4] ~= '' then
    calibrate(kinds.prompt, tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]),
              tonumber(ARGV[i + 4]), ARGV[i + 5])
  end
  if ARGV[i + 7] ~= '' then
    local output = tonumber(ARGV[i + 7])
    push(tonumber(ARGV[i]), output)
    push(tonumber(ARGV[i + 1]), output)
    calibrate(kinds.output, tonumber(ARGV[i + 6]), tonumber(ARGV[i + 6]), output, ARGV[i + 8])
  end
end

local writes = {}
for name, s in pairs(kinds) do
  if s.counted > 0 then
    redis.call('HINCRBY', KEYS[1], name .. ':n', s.counted)
    if s.moved then
      writes[#writes + 1] = name .. ':factor'
      writes[#writes + 1] = tostring(s.factor)
      writes[#writes + 1] = name .. ':mean_raw'
      writes[#writes + 1] = tostring(s.mean_raw)
      writes[#writes + 1] = name .. ':mean_actual'
      writes[#writes + 1] = tostring(s.mean_actual)
    end
    if s.errors_seen then
      redis.call('HINCRBYFLOAT', KEYS[1], name .. ':abs_pct_error_sum', s.error_sum)
    end
    for bucket, count in pairs(s.buckets) do
      redis.call('HINCRBY', KEYS[1], name .. ':error:' .. bucket, count)
    end
  end
end
if #writes > 0 then redis.call('HSET', KEYS[1], unpack(writes)) end

-- LPUSH takes many values at once (each goes to the head in turn, as one call each would);
-- in slices, so that no call passes Lua's limit on unpacked values.
local SLICE = 1000
for k, list in pairs(pushed) do
  for first = 1, #list, SLICE do
    redis.call('LPUSH', KEYS[k], unpack(list, first, math.min(first + SLICE - 1, #list)))
  end
  redis.call('LTRIM', KEYS[k], 0, size - 1)
  redis.call('PEXPIRE', KEYS[k], ttl)
end
return tostring(kinds.prompt.factor)
