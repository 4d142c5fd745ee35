-- Tenant quotas (requests and tokens per minute or day), GCRA (generic cell rate algorithm),
-- in the same atomic step as admission: enqueue.lua and reuse.lua take a request's charge
-- before they queue or run it (a refused request changes nothing else), release.lua and
-- reuse.lua apply a finished request's correction; quota.lua alone corrects the charge of a
-- request that never ran.
--
-- State: P.quota:<tenant> hash  limit field (rpm, tpm, tpd, m:<model>:tpm...) -> its
-- theoretical arrival time (TAT, ms): the moment its budget would be whole again. A cost of n
-- takes n * (period / limit) ms of it; a request fits while TAT - now stays within the period.
--
-- A quota part of ARGV, from index i: mode ('charge': take every amount, or none if any limit
-- would be exceeded; 'credit': a charge taken ahead for a request yet to come, which takes
-- every amount only while each limit has room for twice as much, so that taken early it never
-- refuses a request that came another way and would have fitted without it; 'correct': move each limit's TAT by its amount, negative giving tokens
-- back, never below now; 'retry': a correction sent again after the release it rode on failed,
-- which release.lua applies only while the lease is still there, since Redis may have run the
-- first; 'peek': change nothing, report where each limit stands), tenant,
-- number of limits, then per limit: field, limit, period ms, amount.

-- The quota part at ARGV[i] (nil if there is none), and the index after it.
local function quota_part(i)
  local mode = ARGV[i]
  if mode == nil or mode == '' then return nil, i end
  local credit = mode == 'credit'
  local q = {charge = mode == 'charge' or credit, credit = credit, peek = mode == 'peek',
    retry = mode == 'retry',
    key = P .. 'quota:' .. ARGV[i + 1], limits = {}}
  local j = i + 3
  for _ = 1, tonumber(ARGV[i + 2]) do
    q.limits[#q.limits + 1] = {field = ARGV[j], limit = tonumber(ARGV[j + 1]),
      period = tonumber(ARGV[j + 2]), amount = tonumber(ARGV[j + 3])}
    j = j + 4
  end
  return q, j
end

-- Apply a quota part at ``now``. Returns whether it fits (a correction always does) and the
-- answer: {fits (1/0), ms until it would fit, then per limit: remaining, ms until whole}.
local function quota_apply(q, now)
  local fields = {}
  for k, l in ipairs(q.limits) do fields[k] = l.field end
  local tats = redis.call('HMGET', q.key, unpack(fields))
  local wait = 0
  for k, l in ipairs(q.limits) do
    l.interval = l.period / l.limit
    l.tat = math.max(tonumber(tats[k]) or now, now)
    l.new = math.max(l.tat + l.amount * l.interval, now)
    if q.charge then
      local room = q.credit and l.amount * l.interval or 0  -- a credit leaves as much again
      wait = math.max(wait, l.new + room - now - l.period)
    end
  end
  local fits = wait <= 0
  local writes = fits and not q.peek
  local answer, written, longest = {fits and 1 or 0, math.ceil(wait)}, {}, 0
  for _, l in ipairs(q.limits) do
    local tat = writes and l.new or l.tat
    if writes then
      written[#written + 1] = l.field
      written[#written + 1] = string.format('%.17g', tat)  -- exact (tostring keeps 14 digits)
    end
    longest = math.max(longest, tat - now)
    answer[#answer + 1] = math.max(0, math.floor((now + l.period - tat) / l.interval))
    answer[#answer + 1] = math.ceil(tat - now)
  end
  if writes then
    redis.call('HSET', q.key, unpack(written))
    -- The key lives while any limit is not whole again; a correction, which sees only the
    -- token limits, never shortens it.
    local ttl = math.ceil(longest) + 1000
    if redis.call('PTTL', q.key) < ttl then redis.call('PEXPIRE', q.key, ttl) end
  end
  return fits, answer
end

-- A credit kept on a lease (credit.lua): the limits it charged and their amounts, nothing else.
local function quota_credit(q)
  local kept = {key = q.key, limits = {}}
  for k, l in ipairs(q.limits) do
    kept.limits[k] = {field = l.field, limit = l.limit, period = l.period, amount = l.amount}
  end
  return kept
end

-- Give a credit kept on a lease back: every amount it took, returned.
local function quota_refund(credit, now)
  local back = quota_credit(credit)
  for _, l in ipairs(back.limits) do l.amount = -l.amount end
  quota_apply(back, now)
end
