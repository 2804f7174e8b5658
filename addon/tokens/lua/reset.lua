-- KEYS[3] breaker, [4] recent, [5] before: every cooldown and count of refusals in a row ends, the
-- breaker closes.
-- (runs after records.lua: get, put, num, forget_before)
for _, k in ipairs(redis.call('HKEYS', KEYS[1])) do
  local r = get(k)
  if r[1] > 0 or r[6] > 0 then r[1] = 0; r[6] = 0; put(k, r, true) end
end
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'b', '0')
return 0
