-- A tenant's rate quotas, GCRA (generic cell rate algorithm), in one atomic step.
-- Standalone: not composed with lib/ (it touches only the tenant's quota hash, KEYS[1]).
-- Each limit keeps one number, its theoretical arrival time (TAT, ms): the moment its
-- budget would be whole again. A cost of n takes n * (period / limit) ms of it; a request
-- fits while TAT - now stays within the period.
-- ARGV: mode ('charge', 'correct' or 'peek'), then per limit: field, limit, period ms, amount.
--   charge: take every amount, or none if any limit would be exceeded.
--   correct: move each limit's TAT by amount (negative: give tokens back), never below now.
--   peek: change nothing (amounts 0): report where each limit stands.
-- Returns {fits (1/0), ms until it would fit, then per limit: remaining, ms until reset}.
local key, mode = KEYS[1], ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limits = {}
for i = 2, #ARGV, 4 do
  local limit, period = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local tat = tonumber(redis.call('HGET', key, ARGV[i])) or now
  if tat < now then tat = now end
  limits[#limits + 1] = {field = ARGV[i], limit = limit, period = period,
    interval = period / limit, amount = tonumber(ARGV[i + 3]), tat = tat}
end
local wait = 0
for _, l in ipairs(limits) do
  l.new = l.tat + l.amount * l.interval
  if l.new < now then l.new = now end
  if mode == 'charge' then
    local over = l.new - now - l.period
    if over > wait then wait = over end
  end
end
local fits = wait <= 0
local writes = fits and mode ~= 'peek'
local reply = {fits and 1 or 0, math.ceil(wait)}
local longest = 0
for _, l in ipairs(limits) do
  local tat = fits and l.new or l.tat
  if writes then redis.call('HSET', key, l.field, tostring(tat)) end
  if tat - now > longest then longest = tat - now end
  reply[#reply + 1] = math.max(0, math.floor((now + l.period - tat) / l.interval))
  reply[#reply + 1] = math.ceil(tat - now)
end
-- The key lives while any limit is not whole again; a correction, which sees only the token
-- limits, never shortens it.
local ttl = math.ceil(longest) + 1000
if writes and redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
return reply
