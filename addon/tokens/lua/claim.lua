-- KEYS[1] value:NAME, [2] lock:NAME; ARGV[1] the value turned down ('' for none), [2] lock id, [3] lock ms.
-- {'value', value, ms left} | {'run'} (the caller holds the lock) | {'wait'} (another proxy runs it).
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then return {'value', v, redis.call('PTTL', KEYS[1])} end
if v then redis.call('DEL', KEYS[1]) end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return {'run'} end
return {'wait'}
