-- Adds usage deltas to per-key hashes in one atomic round trip.
-- KEYS: one hash per API key. ARGV: the retention (ms), then per key,
-- requests, prompt tokens, completion tokens, last use (Unix ms; 0: none).
-- lastUsedMs only moves forward, whichever replica flushes first. Each
-- hash lives the retention past its key's last use, so the hashes of
-- removed keys leave the store by themselves.
local retention = ARGV[1]
for i = 1, #KEYS do
  local base = 1 + (i - 1) * 4
  redis.call('HINCRBY', KEYS[i], 'requests', ARGV[base + 1])
  redis.call('HINCRBY', KEYS[i], 'promptTokens', ARGV[base + 2])
  redis.call('HINCRBY', KEYS[i], 'completionTokens', ARGV[base + 3])
  local seen = tonumber(ARGV[base + 4])
  local stored = tonumber(redis.call('HGET', KEYS[i], 'lastUsedMs') or '0')
  if seen > stored then
    redis.call('HSET', KEYS[i], 'lastUsedMs', ARGV[base + 4])
  end
  redis.call('PEXPIRE', KEYS[i], retention)
end
return #KEYS
