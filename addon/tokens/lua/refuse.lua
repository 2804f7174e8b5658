-- KEYS[3] breaker, [4] recent, [5] before; ARGV[2] token key, [3] now, [4] cooldown, [5] window,
-- [6] threshold, [7] pause, [8] the send time of the latest success the calling proxy saw (its own
-- successes reach Redis in batches, about once a second: this way they count at once, for it),
-- [9] retire_after (0: never), [10] 1: retire at once (a disable rule), as pool.TokenPool.refused,
-- [11] the proxy that tells it (the breaker's entry says `by`, so that it knows the breaker is its own),
-- [12] an exit's name: KEYS[3..5] are that exit's breaker, which rests it (its stream entry is `x`, not `b`).
-- Returns {marked 0/1, record, breaker open until or '0', opened 0/1}; with the breaker open, nothing
-- changes (as recovery/retry.py passes such refusals on untouched).
-- (runs after records.lua: get, put, num, forget_before)
local k, now, cd = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local window, threshold, pause = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local open_until = num(KEYS[3])
if open_until > now then return {0, '', string.format('%.17g', open_until), 0} end
forget_before(KEYS[4], KEYS[5], tonumber(ARGV[8] or '0'))
local r = get(k)
local before = string.format('%.17g %d %.17g %d', r[1], r[6], r[7], r[8])
local retire_after, at_once = tonumber(ARGV[9] or '0'), ARGV[10] == '1'
r[5] = r[5] + 1
local marked = 0
if r[1] <= now then r[1] = now + cd; r[2] = now; r[6] = r[6] + 1; marked = 1 end
if r[7] == 0 and (at_once or (marked == 1 and retire_after > 0 and r[6] >= retire_after)) then
  r[7] = now; r[8] = at_once and 2 or 1
end
local v = put(k, r, true)
local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. string.format('%.17g', now - window))
for _, o in ipairs(old) do redis.call('ZREM', KEYS[4], o); redis.call('HDEL', KEYS[5], o) end
if not redis.call('ZSCORE', KEYS[4], k) then redis.call('HSET', KEYS[5], k, before) end
redis.call('ZADD', KEYS[4], now, k)
if redis.call('ZCARD', KEYS[4]) < threshold then return {marked, v, '0', 0} end
open_until = now + pause
redis.call('SET', KEYS[3], string.format('%.17g', open_until))
for _, o in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
  local ro, b = get(o), {}
  for x in string.gmatch(redis.call('HGET', KEYS[5], o) or '0', '%S+') do b[#b + 1] = tonumber(x) end
  ro[1] = b[1]
  if #b == 4 then ro[6] = b[2]; ro[7] = b[3]; ro[8] = b[4] end
  local vo = put(o, ro, true)
  if o == k then v = vo end
end
redis.call('DEL', KEYS[4], KEYS[5])
if (ARGV[12] or '') ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'x', ARGV[12], 'u', string.format('%.17g', open_until), 'by', ARGV[11])
else
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'b', string.format('%.17g', open_until), 'by', ARGV[11])
end
return {marked, v, string.format('%.17g', open_until), 1}
