-- Renew the leases of the places a process holds (slots.lua), while their
-- connections live.
--
-- KEYS[1]   every place  zset  place id -> lease deadline
-- KEYS[2..] the users' places, each once
-- ARGV[1]   lease seconds
-- ARGV[2..] pairs: a place id, the index (in KEYS) of its user's places
--
-- A place that is no longer there (released meanwhile, or lost with Redis's
-- data) is not brought back: XX. Returns how many leases were renewed.
local now = redis.call('TIME')
local lease = tonumber(ARGV[1])
local deadline = tonumber(now[1]) + tonumber(now[2]) / 1000000 + lease
local renewed = 0
for i = 2, #ARGV, 2 do
  local id, k = ARGV[i], tonumber(ARGV[i + 1])
  renewed = renewed + redis.call('ZADD', KEYS[k], 'XX', 'CH', deadline, id)
  redis.call('ZADD', KEYS[1], 'XX', deadline, id)
end
for k = 2, #KEYS do redis.call('PEXPIRE', KEYS[k], math.ceil(lease * 2000)) end
return renewed
