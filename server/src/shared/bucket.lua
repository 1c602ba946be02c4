-- Token buckets in the shared store: ratelimit::decide, next to the data,
-- so that every check-and-update is one atomic round trip whatever the
-- number of replicas. The store's own clock (TIME) is the only clock, so
-- replicas with skewed clocks agree.
--
-- KEYS: one hash per bucket, fields l (level) and t (time of l, seconds).
-- ARGV: op (take | peek | charge | refund), cost, then per bucket its
--       capacity and refill per second.
-- Returns {allowed (0/1), remaining (first bucket, floored),
--          retry after (ms, 0 when allowed), reset (ms, first bucket)}.
local op = ARGV[1]
local cost = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local levels, caps, rates = {}, {}, {}
local retry = nil
for i = 1, #KEYS do
  local cap = tonumber(ARGV[1 + 2 * i])
  local rate = tonumber(ARGV[2 + 2 * i])
  local stored = redis.call('HMGET', KEYS[i], 'l', 't')
  local level = cap
  if stored[1] then
    local elapsed = math.max(0, now - tonumber(stored[2]))
    level = math.min(cap, tonumber(stored[1]) + elapsed * rate)
  end
  levels[i], caps[i], rates[i] = level, cap, rate
  if level < cost then
    local wait = (cost - level) / rate
    if retry == nil or wait > retry then retry = wait end
  end
end
local write = (op == 'take' and retry == nil) or op == 'charge' or op == 'refund'
if write then
  for i = 1, #KEYS do
    if op == 'refund' then
      levels[i] = math.min(caps[i], levels[i] + cost)
    else
      levels[i] = levels[i] - cost
    end
    -- A full bucket is the same as no bucket: the key lives exactly as
    -- long as the bucket takes to refill (plus a second), so idle
    -- principals cost the store nothing.
    local ttl = math.ceil((caps[i] - levels[i]) / rates[i] * 1000) + 1000
    redis.call('HSET', KEYS[i], 'l', string.format('%.17g', levels[i]), 't', string.format('%.6f', now))
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
if (op == 'take' or op == 'peek') and retry ~= nil then
  return {0, 0, math.ceil(retry * 1000), 0}
end
local remaining = math.floor(math.max(0, levels[1]))
local reset = math.ceil(math.max(0, (caps[1] - levels[1]) / rates[1]) * 1000)
return {1, remaining, 0, reset}
