-- Adds usage deltas to per-key hashes in one atomic round trip.
-- KEYS: one hash per API key. ARGV: per key, requests, prompt tokens,
-- completion tokens, last use (Unix ms; 0: none). lastUsedMs only moves
-- forward, whichever replica flushes first.
for i = 1, #KEYS do
  local base = (i - 1) * 4
  redis.call('HINCRBY', KEYS[i], 'requests', ARGV[base + 1])
  redis.call('HINCRBY', KEYS[i], 'promptTokens', ARGV[base + 2])
  redis.call('HINCRBY', KEYS[i], 'completionTokens', ARGV[base + 3])
  local seen = tonumber(ARGV[base + 4])
  local stored = tonumber(redis.call('HGET', KEYS[i], 'lastUsedMs') or '0')
  if seen > stored then
    redis.call('HSET', KEYS[i], 'lastUsedMs', ARGV[base + 4])
  end
end
return #KEYS
