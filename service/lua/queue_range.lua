-- Read a queue's members scored in a range, for the maintenance scans.
--
-- KEYS[1]  queue  zset  ticket id -> score
-- ARGV[1]  min    lowest score, ZRANGEBYSCORE syntax ("-inf", "(42")
-- ARGV[2]  max    highest score ("+inf", "100")
--
-- Returns {ids, scores, odd}: ``ids`` and ``scores`` are the members that are
-- ticket ids and their scores, each joined by commas into one string (one reply
-- to parse instead of thousands), in score order; ``odd`` is {member, score,
-- ...} for every member that is no ticket id at all. Read-only.
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2], 'WITHSCORES')
local ids, scores, odd = {}, {}, {}
for i = 1, #rows, 2 do
  local member, score = rows[i], rows[i + 1]
  if string.match(member, '^%d+$') then
    ids[#ids + 1] = member
    scores[#scores + 1] = string.format('%.17g', tonumber(score))
  else
    odd[#odd + 1] = member
    odd[#odd + 1] = score
  end
end
return {table.concat(ids, ','), table.concat(scores, ','), odd}
