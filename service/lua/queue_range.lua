-- Read the queue members scored in a range, for the maintenance scans.
--
-- KEYS[1]  queue  zset  ticket id -> ticket id
-- ARGV[1]  min    lowest score, ZRANGEBYSCORE syntax ("-inf", "(42")
-- ARGV[2]  max    highest score ("+inf", "100")
--
-- Returns {ok, odd}: ``ok`` is the ids whose score equals the id, joined by
-- commas in one string (one reply to parse instead of thousands); ``odd`` is
-- {member, score, ...} for every member whose score is not its id or that
-- is no ticket id at all. Read-only.
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2], 'WITHSCORES')
local ok, odd = {}, {}
for i = 1, #rows, 2 do
  local member, score = rows[i], rows[i + 1]
  if string.match(member, '^%d+$') and tonumber(member) == tonumber(score) then
    ok[#ok + 1] = member
  else
    odd[#odd + 1] = member
    odd[#odd + 1] = score
  end
end
return {table.concat(ok, ','), odd}
