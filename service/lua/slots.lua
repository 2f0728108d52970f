-- Take one of the bounded places for a long-lived connection (an event stream,
-- a waiting fetch), per user and in total, across every process.
--
-- KEYS[1]  the user's places  zset  place id -> lease deadline (unix seconds)
-- KEYS[2]  every place        zset  place id -> lease deadline
-- ARGV[1]  this place's id
-- ARGV[2]  lease seconds (its process renews it while the connection lives)
-- ARGV[3]  the user's limit
-- ARGV[4]  the total limit
--
-- Returns 0 if the place was taken, 1 if the user is at its limit, 2 if the
-- total is. Places whose lease passed (their process died) are dropped first,
-- so a crash holds places only until their leases end.
local now = redis.call('TIME')
local seconds = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', seconds)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', seconds)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 1 end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return 2 end
local deadline = seconds + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], deadline, ARGV[1])
redis.call('ZADD', KEYS[2], deadline, ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) * 2000))
return 0
