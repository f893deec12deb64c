-- Queue one message on each of several channels: the per-member work of a group send.
-- KEYS[i]        the queue of the i-th channel (each key appears once)
-- ARGV[1]        now, the sender's clock in seconds
-- ARGV[2]        expiry in seconds
-- ARGV[2i+1]     the capacity of the i-th queue
-- ARGV[2i+2]     the message for the i-th queue
-- Returns        the indexes (1-based) of the queues that were full: their message was
--                skipped.
local now = tonumber(ARGV[1])
local expiry = tonumber(ARGV[2])
local full = {}
for i, queue in ipairs(KEYS) do
  local capacity = tonumber(ARGV[2 * i + 1])
  local count = redis.call('ZCARD', queue)
  if count >= capacity then
    redis.call('ZREMRANGEBYSCORE', queue, '-inf', now - expiry)
    count = redis.call('ZCARD', queue)
  end
  if count < capacity then
    redis.call('ZADD', queue, ARGV[1], ARGV[2 * i + 2])
    redis.call('EXPIRE', queue, expiry)
  else
    full[#full + 1] = i
  end
end
return full
