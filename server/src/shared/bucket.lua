-- Token buckets in the shared store: ratelimit::decide (and, for guard
-- keys, ratelimit::admit), next to the data, so that every check-and-update
-- of a request is atomic whatever the number of replicas. One call carries
-- the admissions of every request that arrived while the previous call was
-- on its way (shared::Store's batcher), applied in order, as if each were
-- its own call. The store's own clock (TIME) is the only clock, so
-- replicas with skewed clocks agree.
--
-- KEYS: one hash per bucket, fields l (level) and t (time of l, seconds),
--       the admissions' keys one after the other.
-- ARGV: the number of admissions, then per admission: op (take | peek |
--       charge | refund), cost, number of guards, number of keys, then per
--       key its capacity and refill per second. An admission's first
--       `guards` keys are guards (the client address's brute-force guard):
--       each must hold one unit, nothing is taken from them; the others get
--       op.
-- Returns per admission, one after the other: {allowed (0/1), remaining
--          (floored), retry after (ms, 0 when allowed), reset (ms), refused
--          by a guard (0/1), bucket}: remaining and reset are those of the
--          non-guard bucket with the least left for its capacity, bucket its
--          index among them (from 0).
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000

-- One admission whose keys start after KEYS[k0] and arguments after
-- ARGV[a0]; returns its six numbers.
local function admit(k0, a0, op, cost, guards, nkeys)
  local levels, caps, rates = {}, {}, {}
  local retry = nil
  local guard_retry = nil
  for i = 1, nkeys do
    local cap = tonumber(ARGV[a0 + 2 * i - 1])
    local rate = tonumber(ARGV[a0 + 2 * i])
    local stored = redis.call('HMGET', KEYS[k0 + i], 'l', 't')
    local level = cap
    if stored[1] then
      local elapsed = math.max(0, now - tonumber(stored[2]))
      level = math.min(cap, tonumber(stored[1]) + elapsed * rate)
    end
    levels[i], caps[i], rates[i] = level, cap, rate
    local need = cost
    if i <= guards then need = 1 end
    if level < need then
      local wait = (need - level) / rate
      if i <= guards then
        if guard_retry == nil or wait > guard_retry then guard_retry = wait end
      elseif retry == nil or wait > retry then
        retry = wait
      end
    end
  end
  if guard_retry ~= nil then
    return 0, 0, math.ceil(guard_retry * 1000), 0, 1, 0
  end
  local first = guards + 1
  if first > nkeys then
    -- Only guards (a caller without a limit): admitted.
    return 1, 0, 0, 0, 0, 0
  end
  local write = (op == 'take' and retry == nil) or op == 'charge' or op == 'refund'
  if write then
    for i = first, nkeys do
      if op == 'refund' then
        levels[i] = math.min(caps[i], levels[i] + cost)
      else
        levels[i] = levels[i] - cost
      end
      -- A full bucket is the same as no bucket: the key lives exactly as
      -- long as the bucket takes to refill (plus a second), so idle
      -- principals cost the store nothing.
      local ttl = math.ceil((caps[i] - levels[i]) / rates[i] * 1000) + 1000
      redis.call('HSET', KEYS[k0 + i], 'l', string.format('%.17g', levels[i]), 't', string.format('%.6f', now))
      redis.call('PEXPIRE', KEYS[k0 + i], ttl)
    end
  end
  if (op == 'take' or op == 'peek') and retry ~= nil then
    return 0, 0, math.ceil(retry * 1000), 0, 0, 0
  end
  local b = first
  for i = first + 1, nkeys do
    if levels[i] / caps[i] < levels[b] / caps[b] then b = i end
  end
  local remaining = math.floor(math.max(0, levels[b]))
  local reset = math.ceil(math.max(0, (caps[b] - levels[b]) / rates[b]) * 1000)
  return 1, remaining, 0, reset, 0, b - first
end

local out = {}
local k0, a0 = 0, 1
for _ = 1, tonumber(ARGV[1]) do
  local op = ARGV[a0 + 1]
  local cost = tonumber(ARGV[a0 + 2])
  local guards = tonumber(ARGV[a0 + 3])
  local nkeys = tonumber(ARGV[a0 + 4])
  local n = #out
  out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5], out[n + 6] =
    admit(k0, a0 + 4, op, cost, guards, nkeys)
  k0 = k0 + nkeys
  a0 = a0 + 4 + 2 * nkeys
end
return out
