-- Put back messages a reader popped but no receiver took, at their original place.
-- KEYS[1]      the channel's queue
-- ARGV[1]      expiry in seconds
-- ARGV[2i]     the i-th message's original score (send time)
-- ARGV[2i+1]   the i-th message
-- Returns      nothing.
-- The original score puts each message back ahead of anything sent after it, so FIFO order
-- holds. Capacity is not checked: the messages were already counted when they were sent.
local queue = KEYS[1]
for i = 2, #ARGV, 2 do
  redis.call('ZADD', queue, ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', queue, tonumber(ARGV[1]))
