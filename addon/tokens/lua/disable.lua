-- ARGV[2] 1 disable / 0 enable (a retired token too), then token keys.
-- (runs after records.lua: get, put, num, forget_before)
for i = 3, #ARGV do
  local r = get(ARGV[i])
  r[3] = tonumber(ARGV[2])
  if r[3] == 0 then r[6] = 0; r[7] = 0; r[8] = 0 end
  put(ARGV[i], r, true)
end
return 0
