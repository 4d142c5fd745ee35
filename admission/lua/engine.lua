-- An engine's own report of its load, from a replica's scrape of its metrics: hold the
-- backend while its engine has requests waiting (it is saturated: more work would only queue
-- inside it, where fairgate cannot order it), correct least-outstanding-tokens choice by its
-- KV usage, and take the KV capacity it reports as its token budget. Dispatches what fits.
-- ARGV: backend, busy for ms (0: not busy), KV tokens in use ('' if unknown),
--       token budget ('' to keep), entry ttl ms, lease ttl ms, max grants
-- Returns grants as id, backend pairs.
local b, busy_ms = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
if busy_ms > 0 then
  redis.call('HSET', P .. 'engine', b .. ':busy', now + busy_ms)
else
  redis.call('HDEL', P .. 'engine', b .. ':busy')
end
if ARGV[3] ~= '' then
  redis.call('HSET', P .. 'engine', b .. ':tokens', ARGV[3])
else
  redis.call('HDEL', P .. 'engine', b .. ':tokens')
end
-- no replica left to refresh it: the reports go away with their last writer
redis.call('PEXPIRE', P .. 'engine', ARGV[5])
local bc = backend_cfg(b)
if bc and ARGV[4] ~= '' and tonumber(ARGV[4]) ~= bc.mt then
  bc.mt = tonumber(ARGV[4])
  redis.call('HSET', P .. 'cfg:backends', b, cjson.encode(bc))
end
if busy_ms > 0 then return {} end
return dispatch(now, tonumber(ARGV[6]), tonumber(ARGV[7]))
