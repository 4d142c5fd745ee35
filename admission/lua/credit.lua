-- Take a credit on a lease this replica holds for reuse: the quota charge of its flow's next
-- request, taken ahead so that the request runs at once (admission/reuse.py), and kept on the
-- lease (l.cq) so that it is settled exactly once, even if this call's answer is lost:
-- reuse.lua spends it (the replica says so) or gives it back, and unlease gives back one the
-- lease still keeps when it ends. A lease keeps one credit at most.
-- ARGV: lease id, then a quota part (a 'credit', lib/quota.lua: taken only with room for twice
--       as much)
-- Returns the part's answer ({fits, ms until it would fit, then per limit: remaining, reset ms};
--         nothing if the lease is gone or keeps a credit already)
local id = ARGV[1]
local l = decode(redis.call('HGET', P .. 'lease', id))
if not l or l.cq then return {} end
local q = quota_part(2)
local fits, answer = quota_apply(q, now_ms())
if fits then
  l.cq = quota_credit(q)
  redis.call('HSET', P .. 'lease', id, cjson.encode(l))
end
return answer
