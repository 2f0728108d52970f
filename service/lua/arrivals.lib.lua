-- Shared by the scripts that put ids in a queue (enqueue, reap, settle):
-- service/queue.py puts this text before theirs.
--
-- arrived(k) notes that an id entered the queue KEYS[k]; publish_arrivals(ch)
-- then publishes what entered which queue ("general=2,billing=1") on channel
-- ch (nothing for ""), in the same step as the ZADDs, so a fetch woken by the
-- message always finds the tickets queued.
local arrived_count, arrived_order = {}, {}
local function arrived(k)
  if not arrived_count[k] then arrived_order[#arrived_order + 1] = k end
  arrived_count[k] = (arrived_count[k] or 0) + 1
end
local function publish_arrivals(channel)
  if channel == '' or #arrived_order == 0 then return end
  local parts = {}
  for _, k in ipairs(arrived_order) do
    parts[#parts + 1] = string.match(KEYS[k], ':queue:([^:]+)$') .. '=' .. arrived_count[k]
  end
  redis.call('PUBLISH', channel, table.concat(parts, ','))
end
