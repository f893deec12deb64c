-- Record a process's heartbeat (optional) and list the processes taken for dead.
-- KEYS[1]  the registry: a sorted set of process ids scored by their last heartbeat
-- ARGV[1]  the id of the process that heartbeats, or '' to only read
-- ARGV[2]  process_expiry: seconds of silence after which a registered process is dead
-- ARGV[3]  seconds after which a silent process is dropped from the registry (its group
--          memberships have expired by then), and the registry's own expiry
-- Returns  {seconds since this process's previous heartbeat, or '' if it had none;
--           the ids of the processes silent for longer than process_expiry}
-- Times are the server's (TIME), so the clocks of the processes never have to agree. For
-- process_expiry seconds after the server (re)started no process is judged: a registry
-- loaded from disk holds heartbeats as old as the restart is long, and the live processes
-- need one interval to heartbeat again.
local registry = KEYS[1]
local expiry = tonumber(ARGV[2])
local keep = tonumber(ARGV[3])
-- INFO first: a user not allowed to run it writes nothing.
local uptime = tonumber(string.match(redis.call('INFO', 'server'), 'uptime_in_seconds:(%d+)'))
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local silent = ''
if ARGV[1] ~= '' then
  local previous = redis.call('ZSCORE', registry, ARGV[1])
  if previous then
    silent = tostring(now - tonumber(previous))
  end
  redis.call('ZADD', registry, now, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', registry, '-inf', now - keep)
  redis.call('EXPIRE', registry, math.ceil(keep))
end
if uptime < expiry then
  return {silent, {}}
end
return {silent, redis.call('ZRANGEBYSCORE', registry, '-inf', '(' .. (now - expiry))}
