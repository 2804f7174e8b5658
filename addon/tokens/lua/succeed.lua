-- KEYS[3] recent, [4] before (the breaker's window); ARGV[2] now, then (token key, successes, latest
-- send time) triples. A success ends a cooldown that began before the request was sent
-- (pool.TokenPool.succeeded), and the count of refusals in a row; only that is told. It also clears
-- the breaker's count of the refusals before it was sent.
-- (runs after records.lua: get, put, num, forget_before)
local now, latest = tonumber(ARGV[2]), 0
for i = 3, #ARGV, 3 do
  local k, n, sent = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local r = get(k)
  r[4] = r[4] + n
  local ends = sent > r[2] and (r[1] > now or r[6] > 0)
  if sent > r[2] and (r[1] > 0 or r[6] > 0) then r[1] = 0; r[6] = 0 end
  put(k, r, ends)
  latest = math.max(latest, sent)
end
forget_before(KEYS[3], KEYS[4], latest)
return 0
