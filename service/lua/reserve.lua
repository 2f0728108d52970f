-- Reserve tickets for one agent: top it up towards its capacity, atomically.
--
-- KEYS[1]  queue     zset  ticket id -> ticket id (oldest first)
-- KEYS[2]  held      set   ids the agent holds, unsold (confirmed or in flight)
-- KEYS[3]  reserved  zset  ticket id -> lease deadline (unix seconds)
-- ARGV[1]  capacity  the agent's capacity
-- ARGV[2]  lease     seconds a reservation lives before the reaper returns it
-- ARGV[3..] known    the agent's unsold tickets as PostgreSQL listed them just before
--
-- Returns {slots_used, {popped id, ...}, queue_left, {in-flight id, ...}}: the
-- in-flight ids are the reserved ones PostgreSQL did not list.
--
-- First `held` is made to agree with PostgreSQL: it becomes the known ids plus
-- the ids still reserved (fetches in flight, or confirmed after the list was
-- read). A known id of ours that is still reserved was confirmed by an earlier
-- fetch, which leaves its reservation for this call to clear: that saves every
-- fetch a second script call after its commit. Ids neither known nor reserved
-- (sold, released, given back) leave `held`.
-- Then the free slots are popped from the queue head. Counting and popping are
-- one step, so concurrent calls by one agent never pop more than its free slots.
local known = {}
for i = 3, #ARGV do known[ARGV[i]] = true end

local used = 0
local in_flight = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if known[id] then
    redis.call('ZREM', KEYS[3], id)
    known[id] = nil
    used = used + 1
  elseif redis.call('ZSCORE', KEYS[3], id) then
    in_flight[#in_flight + 1] = id
    used = used + 1
  else
    redis.call('SREM', KEYS[2], id)
  end
end
-- Known ids `held` lacked: Redis lost them (a wipe, a failover).
for id in pairs(known) do
  redis.call('SADD', KEYS[2], id)
  used = used + 1
end

local need = tonumber(ARGV[1]) - used
local ids = {}
if need > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[1], need)
  if #popped > 0 then
    local now = redis.call('TIME')
    local deadline = tonumber(now[1]) + tonumber(ARGV[2])
    local leases = {}
    for i = 1, #popped, 2 do
      ids[#ids + 1] = popped[i]
      leases[#leases + 1] = deadline
      leases[#leases + 1] = popped[i]
    end
    redis.call('SADD', KEYS[2], unpack(ids))
    redis.call('ZADD', KEYS[3], unpack(leases))
  end
end
return {used, ids, redis.call('ZCARD', KEYS[1]), in_flight}
