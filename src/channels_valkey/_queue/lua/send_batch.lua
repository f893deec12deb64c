-- Queue the same list of messages, in order, on each of several channels; a channel without
-- room for all of them gets none. The work of send_multiple (one queue) and of
-- group_send_multiple (the members on one shard or slot).
-- KEYS[i]          the queue of the i-th channel (each key appears once)
-- ARGV[1]          now, the sender's clock in seconds (for trimming expired messages)
-- ARGV[2]          expiry in seconds
-- ARGV[3]          m, how many messages each queue gets
-- ARGV[4..3+m]     the messages' scores, increasing, so that they pop in the order given
-- ARGV[4+m..3+2m]  the messages every queue shares
-- then, per queue in KEYS order: its capacity, and 0 to take the shared messages or 1
-- followed by its own m messages (a process queue's copies name their member channels).
-- Returns          the indexes (1-based) of the queues that were skipped for lack of room.
-- Expired messages only matter when the queue looks too full, so they are trimmed only then.
local now = tonumber(ARGV[1])
local expiry = tonumber(ARGV[2])
local m = tonumber(ARGV[3])
local shared = 3 + m
local at = 4 + 2 * m
local full = {}
for i, queue in ipairs(KEYS) do
  local capacity = tonumber(ARGV[at])
  local first = shared
  if ARGV[at + 1] == '1' then
    first = at + 1
    at = at + 2 + m
  else
    at = at + 2
  end
  local count = redis.call('ZCARD', queue)
  if count + m > capacity then
    redis.call('ZREMRANGEBYSCORE', queue, '-inf', now - expiry)
    count = redis.call('ZCARD', queue)
  end
  if count + m <= capacity then
    for j = 1, m do
      redis.call('ZADD', queue, ARGV[3 + j], ARGV[first + j])
    end
    redis.call('EXPIRE', queue, expiry)
  else
    full[#full + 1] = i
  end
end
return full
