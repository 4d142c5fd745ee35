-- Several entry scripts in one call, one after another, each exactly as if it were a call of
-- its own (the operations of one event-loop turn of a replica: releases, reuses, charges).
-- Composed with the shared functions and every entry script it may run, each wrapped as
-- OPS[name] (admission/policy.py: compose_batch); ARGV, which those read, is set to each
-- operation's own arguments in turn, and the per-call cache of backlogged bands is dropped
-- between operations. What a call costs Redis beyond its commands (setting up this chunk and
-- its functions, about as much as the commands of a release) is paid once per batch.
-- ARGV: per operation, its entry script's name, the number of its arguments, the arguments.
-- Returns one reply per operation, in order: the entry script's own reply, or an error reply
-- if it failed (what it had written before failing stays, as in a call of its own).
local replies = {}
local i = 1
while i <= #BATCH do
  local name, n = BATCH[i], tonumber(BATCH[i + 1])
  ARGV = {unpack(BATCH, i + 2, i + 1 + n)}
  bands_cache = nil
  local ok, reply = pcall(OPS[name])
  if not ok then
    reply = {err = type(reply) == 'table' and reply.err or tostring(reply)}
  end
  replies[#replies + 1] = reply
  i = i + 2 + n
end
return replies
