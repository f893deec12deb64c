-- Record a process's heartbeat (optional) and tell which processes are dead.
-- KEYS[1]  the registry: a sorted set of process ids, each scored by the time until which it
--          counts as alive (its last heartbeat plus its own process_expiry), so processes
--          need not agree on process_expiry
-- ARGV[1]  the id of the process that heartbeats, or '' to only read
-- ARGV[2]  the caller's process_expiry in seconds
-- ARGV[3]  seconds after its deadline that a dead process is dropped from the registry (its
--          group memberships have expired by then); the registry's own expiry follows it
-- ARGV[4]  how many dead processes the caller knows of
-- ARGV[5]  the latest deadline among them, as this script returned it ('' if none)
-- Returns  {seconds since this process's previous heartbeat, or '' if it had none;
--           the number of dead processes; the latest deadline among them ('' if none);
--           1 and their ids, or 0 and no ids when the two values above are those the caller
--           gave: then the dead are those it knows (a process dying or coming back changes
--           one of them)}
-- Times are the server's (TIME), so the clocks of the processes never have to agree. For
-- process_expiry seconds after the server (re)started no process is judged: a registry
-- loaded from disk holds heartbeats as old as the restart is long, and the live processes
-- need one interval to heartbeat again.
local registry = KEYS[1]
local expiry = tonumber(ARGV[2])
local keep = tonumber(ARGV[3])
-- INFO and TIME first: a user not allowed to run them writes nothing.
local uptime = tonumber(string.match(redis.call('INFO', 'server'), 'uptime_in_seconds:(%d+)'))
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local silent = ''
if ARGV[1] ~= '' then
  local previous = redis.call('ZSCORE', registry, ARGV[1])
  if previous then
    silent = tostring(now - (tonumber(previous) - expiry))
  end
  redis.call('ZADD', registry, now + expiry, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', registry, '-inf', now - keep)
  redis.call('EXPIRE', registry, math.ceil(keep + expiry))
end
if uptime < expiry then
  return {silent, 0, '', 1, {}}
end
local passed = '(' .. now
local count = redis.call('ZCOUNT', registry, '-inf', passed)
local newest = ''
if count > 0 then
  newest = redis.call('ZREVRANGEBYSCORE', registry, passed, '-inf', 'WITHSCORES', 'LIMIT', 0, 1)[2]
end
if count == tonumber(ARGV[4]) and newest == ARGV[5] then
  return {silent, count, newest, 0, {}}
end
return {silent, count, newest, 1, redis.call('ZRANGEBYSCORE', registry, '-inf', passed)}
