-- A record: "cooling_until refused_at disabled successes refusals in_a_row retired_at retired_why"
-- (a record of 5 fields, written before retirement, reads with zeros for the last three); every script
-- that changes one also adds it to the stream. KEYS[1] health, KEYS[2] events; ARGV[1] the stream's
-- length to keep.
local function get(k)
  local v = redis.call('HGET', KEYS[1], k)
  local r = {}
  if v then for x in string.gmatch(v, '%S+') do r[#r + 1] = tonumber(x) end end
  for i = #r + 1, 8 do r[i] = 0 end
  return r
end
local function put(k, r, tell)
  local v = string.format('%.17g %.17g %d %d %d %d %.17g %d', r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8])
  redis.call('HSET', KEYS[1], k, v)
  if tell then redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'h', k, 'r', v) end
  return v
end
local function num(key) return tonumber(redis.call('GET', key) or '0') end
-- the breaker's window: `recent` (token key -> when refused), `before` (token key -> "cooling_until
-- in_a_row retired_at retired_why" before). A success of a request sent at t clears the refusals
-- counted before t (breaker.py's rule).
local function forget_before(recent, before, t)
  for _, o in ipairs(redis.call('ZRANGEBYSCORE', recent, '-inf', '(' .. string.format('%.17g', t))) do
    redis.call('ZREM', recent, o); redis.call('HDEL', before, o)
  end
end
