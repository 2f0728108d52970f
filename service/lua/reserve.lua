-- Reserve tickets for one agent: top it up towards its capacity, atomically.
--
-- KEYS[1]  queue     zset  ticket id -> ticket id (oldest first)
-- KEYS[2]  held      set   ids the agent holds, unsold (confirmed or in flight)
-- KEYS[3]  reserved  zset  ticket id -> lease deadline (unix seconds)
-- ARGV[1]  capacity  the agent's capacity
-- ARGV[2]  lease     seconds a reservation lives before the reaper returns it
-- ARGV[3]  known     how many unsold tickets PostgreSQL says the agent holds
--
-- Returns {held_before, {id, ...}, queue_left}.
-- Counting `held` and popping are one step, so concurrent calls by one agent
-- can never pop more than its free slots. `held` is short of the truth only
-- after Redis lost data: then it holds just the agent's fetches in flight (ids
-- still reserved), and PostgreSQL's count plus those bounds the pop, so a
-- wiped agent is not handed tickets it has no room for.
local members = redis.call('SMEMBERS', KEYS[2])
local held_before = #members
local in_flight = 0
for _, id in ipairs(members) do
  if redis.call('ZSCORE', KEYS[3], id) then in_flight = in_flight + 1 end
end
local used = math.max(held_before, tonumber(ARGV[3]) + in_flight)
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
return {held_before, ids, redis.call('ZCARD', KEYS[1])}
