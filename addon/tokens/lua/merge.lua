-- What changed on a proxy while Redis was out of reach, merged in: ARGV[2..] (key, record) pairs;
-- the later cooldown and refusal win, a disable and a retirement stay, counters take the larger.
-- (runs after records.lua: get, put, num, forget_before)
for i = 2, #ARGV, 2 do
  local r = get(ARGV[i])
  local l = {}
  for x in string.gmatch(ARGV[i + 1], '%S+') do l[#l + 1] = tonumber(x) end
  r[1] = math.max(r[1], l[1]); r[2] = math.max(r[2], l[2]); r[3] = math.max(r[3], l[3])
  r[4] = math.max(r[4], l[4]); r[5] = math.max(r[5], l[5])
  r[6] = math.max(r[6], l[6] or 0)
  if r[7] == 0 and (l[7] or 0) > 0 then r[7] = l[7]; r[8] = l[8] end
  put(ARGV[i], r, true)
end
return 0
