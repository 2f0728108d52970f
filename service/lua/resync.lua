-- Make an agent's `held` set agree with PostgreSQL again.
--
-- KEYS[1]  held      set   the agent's held ids
-- KEYS[2]  reserved  zset  ticket id -> lease deadline
-- ARGV     the ids PostgreSQL says the agent holds, unsold
--
-- A member that PostgreSQL does not know is kept only while it is still
-- reserved: it belongs to one of the agent's own fetches in flight.
-- Returns the size of `held` afterwards.
local truth = {}
for _, id in ipairs(ARGV) do truth[id] = true end
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not truth[id] and not redis.call('ZSCORE', KEYS[2], id) then
    redis.call('SREM', KEYS[1], id)
  end
end
if #ARGV > 0 then redis.call('SADD', KEYS[1], unpack(ARGV)) end
return redis.call('SCARD', KEYS[1])
