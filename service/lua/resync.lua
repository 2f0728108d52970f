-- Make an agent's `held` set agree with PostgreSQL again.
--
-- KEYS[1]  held      set   the agent's held ids
-- KEYS[2]  reserved  zset  ticket id -> lease deadline
-- ARGV[1]  n, then n ids PostgreSQL says the agent holds, unsold
-- then     ids to drop even if reserved: PostgreSQL has them assigned to
--          someone else, sold or deleted, so no fetch of this agent can be
--          confirming them (a confirmed ticket's reservation lingers until
--          its agent's next fetch)
--
-- Any other member that PostgreSQL does not list is kept only while it is
-- still reserved: it belongs to one of the agent's own fetches in flight.
-- Returns the size of `held` afterwards.
local n = tonumber(ARGV[1])
local truth, gone = {}, {}
for i = 2, n + 1 do truth[ARGV[i]] = true end
for i = n + 2, #ARGV do gone[ARGV[i]] = true end
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not truth[id] and (gone[id] or not redis.call('ZSCORE', KEYS[2], id)) then
    redis.call('SREM', KEYS[1], id)
  end
end
for i = 2, n + 1 do redis.call('SADD', KEYS[1], ARGV[i]) end
return redis.call('SCARD', KEYS[1])
