-- Queue one message on a channel, unless the channel is at capacity.
-- KEYS[1]  the channel's queue: a sorted set of serialized messages scored by send time
-- ARGV[1]  now, the sender's clock in seconds (becomes the message's score)
-- ARGV[2]  expiry in seconds: how long a message, and an idle queue, lives
-- ARGV[3]  the channel's capacity
-- ARGV[4]  the serialized message
-- Returns  1 when queued, 0 when the channel is full.
-- Expired messages only matter when the queue looks full, so they are trimmed only then:
-- a send costs ZCARD, ZADD and EXPIRE.
local queue = KEYS[1]
local expiry = tonumber(ARGV[2])
local capacity = tonumber(ARGV[3])
if redis.call('ZCARD', queue) >= capacity then
  redis.call('ZREMRANGEBYSCORE', queue, '-inf', tonumber(ARGV[1]) - expiry)
  if redis.call('ZCARD', queue) >= capacity then
    return 0
  end
end
redis.call('ZADD', queue, ARGV[1], ARGV[4])
redis.call('EXPIRE', queue, expiry)
return 1
