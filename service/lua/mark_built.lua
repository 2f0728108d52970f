-- Mark Redis as built from PostgreSQL, unless it lost its data meanwhile.
--
-- KEYS[1]  build  string  set when this rebuild started
-- KEYS[2]  epoch  string  present while Redis holds state built from PostgreSQL
-- ARGV[1]  the new epoch
--
-- Returns 1 if the epoch was set, 0 if the build marker is gone (Redis was
-- wiped during the rebuild, so what it wrote before the wipe is lost too).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1])
return 1
