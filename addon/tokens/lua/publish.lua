-- KEYS[1] value:NAME, [2] lock:NAME; ARGV[1] lock id, [2] value ('' for none: the run failed), [3] ttl ms.
if ARGV[2] ~= '' then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 0
