-- Release readers blocked in BZMPOP on a wake key, which they watch after their queue.
-- KEYS[1]  the wake key (it shares the queue's hash tag, so one slot on a cluster)
-- ARGV[1]  how many readers to release: one token each
-- Returns  nothing.
-- The key expires soon: a token nobody popped must not wake a later reader for long.
for i = 1, tonumber(ARGV[1]) do
  redis.call('ZADD', KEYS[1], 0, tostring(i))
end
redis.call('EXPIRE', KEYS[1], 60)
