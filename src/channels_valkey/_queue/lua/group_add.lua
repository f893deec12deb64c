-- Add a channel to a group, and forget members whose membership has run out.
-- KEYS[1]  the group: a sorted set of channel names scored by the time they joined
-- ARGV[1]  now, in seconds
-- ARGV[2]  group_expiry in seconds
-- ARGV[3]  the channel name
-- Returns  nothing.
-- Stale members are removed here rather than on every group send, which only reads the
-- members that are still fresh: joining is rare, sending is the hot path.
local group = KEYS[1]
local group_expiry = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', group, '-inf', tonumber(ARGV[1]) - group_expiry)
redis.call('ZADD', group, ARGV[1], ARGV[3])
redis.call('EXPIRE', group, group_expiry)
