-- Reserve tickets for one agent: top it up towards its capacity from the best
-- tickets of its queues, atomically.
--
-- KEYS[1]  held      set   ids the agent holds, unsold (confirmed or in flight)
-- KEYS[2]  reserved  zset  ticket id -> lease deadline (unix seconds)
-- KEYS[3..] queues   zsets ticket id -> score, one per queue of the agent
--                          (score: priority rank * 2^50 + id; lowest is best)
-- ARGV[1]  capacity  the agent's capacity
-- ARGV[2]  lease     seconds a reservation lives before the reaper returns it
-- ARGV[3..] known    the agent's unsold tickets as PostgreSQL listed them just before
--
-- Returns {slots_used, {id, queue index, score, ...}, left in its queues, {in-flight id, ...}}:
-- the popped ids with the index (in KEYS) of the queue each came from and its
-- score, so a refused one can go back to its place; the in-flight ids are the
-- reserved ones PostgreSQL did not list.
--
-- First `held` is made to agree with PostgreSQL: it becomes the known ids plus
-- the ids still reserved (fetches in flight, or confirmed after the list was
-- read). A known id of ours that is still reserved was confirmed by an earlier
-- fetch, which leaves its reservation for this call to clear: that saves every
-- fetch a second script call after its commit. Ids neither known nor reserved
-- (sold, released, given back) leave `held`.
-- Then each free slot takes the best id across the queues (the lowest score:
-- higher priority, then older). Counting and popping are one step, so
-- concurrent calls by one agent never pop more than its free slots.
local known = {}
for i = 3, #ARGV do known[ARGV[i]] = true end

local used = 0
local in_flight = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if known[id] then
    redis.call('ZREM', KEYS[2], id)
    known[id] = nil
    used = used + 1
  elseif redis.call('ZSCORE', KEYS[2], id) then
    in_flight[#in_flight + 1] = id
    used = used + 1
  else
    redis.call('SREM', KEYS[1], id)
  end
end
-- Known ids `held` lacked: Redis lost them (a wipe, a failover).
for id in pairs(known) do
  redis.call('SADD', KEYS[1], id)
  used = used + 1
end

local need = tonumber(ARGV[1]) - used
local popped = {}
if need > 0 then
  -- The best `need` of each queue are the only candidates for the best `need` overall.
  local candidates = {}
  for k = 3, #KEYS do
    local head = redis.call('ZRANGE', KEYS[k], 0, need - 1, 'WITHSCORES')
    for i = 1, #head, 2 do
      candidates[#candidates + 1] = {head[i], k, tonumber(head[i + 1])}
    end
  end
  table.sort(candidates, function(a, b) return a[3] < b[3] end)
  local now = redis.call('TIME')
  local deadline = tonumber(now[1]) + tonumber(ARGV[2])
  -- An id is in one queue; should a fault have left it in two, it is popped
  -- once (and leaves both), never handed out twice.
  local taken = {}
  local count = 0
  for i = 1, #candidates do
    if count == need then break end
    local id, k, score = candidates[i][1], candidates[i][2], candidates[i][3]
    redis.call('ZREM', KEYS[k], id)
    if not taken[id] then
      taken[id] = true
      count = count + 1
      redis.call('SADD', KEYS[1], id)
      redis.call('ZADD', KEYS[2], deadline, id)
      popped[#popped + 1] = id
      popped[#popped + 1] = k
      popped[#popped + 1] = string.format('%.0f', score)
    end
  end
end
local left = 0
for k = 3, #KEYS do left = left + redis.call('ZCARD', KEYS[k]) end
return {used, popped, left, in_flight}
