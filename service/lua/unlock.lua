-- Release a lock only if it is still ours.
--
-- KEYS[1]  lock   string  the holder's token
-- ARGV[1]  token  the token this holder set
--
-- Returns 1 if released, 0 if the lock expired or another holder took it.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
