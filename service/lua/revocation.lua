-- Check a login session against the blocklist and, unless it was logged out,
-- note that its agent was seen now: one round trip for both.
--
-- KEYS[1]  revoked    string  present when the session logged out
-- KEYS[2]  epoch      string  present once the state was built from PostgreSQL
-- KEYS[3]  seen       zset    agent id -> last request (unix seconds)
-- KEYS[4]  streaming  string  present while an event stream is open somewhere
-- ARGV[1]  agent id, or "" to note nothing
-- ARGV[2]  now (unix seconds)
--
-- Returns {revoked (0/1), built (0/1), streaming (0/1)}.
local revoked = redis.call('EXISTS', KEYS[1])
if revoked == 0 and ARGV[1] ~= '' then
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
end
return {revoked, redis.call('EXISTS', KEYS[2]), redis.call('EXISTS', KEYS[4])}
