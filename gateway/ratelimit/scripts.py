"""The Lua scripts of the Redis backend, each one atomic check-and-update.

They read `now` from Redis's own clock (`TIME`), in µs. A bucket is a hash {level, ts},
absent when full; levels travel as %.17g strings because replies and tostring() round.

A call whose connection drops after Redis ran it is retried once (redis-py cannot tell
whether it ran), so the scripts that charge or refund are idempotent: each carries an id,
remembered for `ARGV` keep µs in the key's "ops" sorted set (scored by expiry), and a
second run of the same id changes nothing.
"""

PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local WINDOW = 60000000
local EPS = 1e-6

local function level(key, limit)
  local s = redis.call('HMGET', key, 'level', 'ts')
  if not s[1] then return limit end
  -- TIME can step back (NTP, a failover to a host whose clock is behind): no negative refill.
  local l = tonumber(s[1]) + math.max(0, now - tonumber(s[2])) * limit / WINDOW
  if l > limit then return limit end
  return l
end

local function store(key, limit, l)
  if l >= limit - EPS then
    redis.call('DEL', key)
    return
  end
  redis.call('HSET', key, 'level', string.format('%.17g', l), 'ts', string.format('%.0f', now))
  redis.call('PEXPIRE', key, math.ceil((limit - l) * WINDOW / limit / 1000) + 1000)
end

local function done_before(ops, id)
  redis.call('ZREMRANGEBYSCORE', ops, '-inf', now)
  return redis.call('ZSCORE', ops, id) ~= false
end

local function remember(ops, id, keep)
  redis.call('ZADD', ops, now + keep, id)
  redis.call('PEXPIRE', ops, math.ceil(keep / 1000) + 1000)
end
"""

# KEYS: requests bucket, tokens bucket, in-flight set, ops set. ARGV: rpm, tpm, concurrency
# (0 = no limit), estimated tokens, lease member (the admission's id), lease µs, keep µs.
# Checks all three, then commits all or none. A refusal commits nothing, so only an
# admission is remembered; its second run reports the buckets as they are now.
ADMIT = PRELUDE + """
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cost, lease = tonumber(ARGV[4]), tonumber(ARGV[6])
local refused, wait, r, k, busy = 0, 0, 0, 0, 0
if done_before(KEYS[4], ARGV[5]) then
  if rpm > 0 then r = level(KEYS[1], rpm) end
  if tpm > 0 then k = level(KEYS[2], tpm) end
  if conc > 0 then busy = redis.call('ZCARD', KEYS[3]) end
  return {0, '0', string.format('%.17g', r), string.format('%.17g', k), busy}
end
if rpm > 0 then
  r = level(KEYS[1], rpm)
  if r < 1 - EPS then
    refused = refused + 1
    wait = math.max(wait, (1 - r) * WINDOW / rpm)
  end
end
if tpm > 0 then
  k = level(KEYS[2], tpm)
  if k < cost - EPS then
    refused = refused + 2
    wait = math.max(wait, (cost - k) * WINDOW / tpm)
  end
end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  busy = redis.call('ZCARD', KEYS[3])
  if busy >= conc then refused = refused + 4 end
end
if refused == 0 then
  if rpm > 0 then r = r - 1; store(KEYS[1], rpm, r) end
  if tpm > 0 then k = k - cost; store(KEYS[2], tpm, k) end
  if conc > 0 then
    redis.call('ZADD', KEYS[3], now + lease, ARGV[5])
    redis.call('PEXPIRE', KEYS[3], math.ceil(lease / 1000) + 1000)
    busy = busy + 1
  end
  remember(KEYS[4], ARGV[5], tonumber(ARGV[7]))
end
return {refused, string.format('%.17g', wait), string.format('%.17g', r),
        string.format('%.17g', k), busy}
"""

# KEYS: requests bucket, tokens bucket, ops set. ARGV: rpm, requests delta, tpm, tokens
# delta, the adjustment's id, keep µs. A positive delta gives units back (capped at full), a
# negative one charges (may go into debt).
ADJUST = PRELUDE + """
if done_before(KEYS[3], ARGV[5]) then return 0 end
remember(KEYS[3], ARGV[5], tonumber(ARGV[6]))
for i = 1, 2 do
  local limit, delta = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  if limit > 0 and delta ~= 0 then
    local l = level(KEYS[i], limit) + delta
    if l > limit then l = limit end
    store(KEYS[i], limit, l)
  end
end
return 1
"""

# KEYS: tokens bucket, ops set. ARGV: tpm, tokens, the reservation's id, keep µs. Takes the
# tokens only if the bucket holds them (never into debt): 1 taken (or taken before), 0 not.
TAKE = PRELUDE + """
if done_before(KEYS[2], ARGV[3]) then return 1 end
local tpm, cost = tonumber(ARGV[1]), tonumber(ARGV[2])
local k = level(KEYS[1], tpm)
if k < cost - EPS then return 0 end
store(KEYS[1], tpm, k - cost)
remember(KEYS[2], ARGV[3], tonumber(ARGV[4]))
return 1
"""

# KEYS: in-flight set. ARGV: lease µs, members. XX: never resurrect a released slot.
RENEW = PRELUDE + """
local lease = tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + lease, ARGV[i])
end
if renewed > 0 then redis.call('PEXPIRE', KEYS[1], math.ceil(lease / 1000) + 1000) end
return renewed
"""

# Token budgets (gateway/access/budgets.py): one counter per key and period, never refilled,
# expiring after its period. KEYS: counter, ops set. ARGV: budget, tokens, the spend's id, keep
# µs, the counter's lifetime s. Takes the tokens only if the counter stays within the budget:
# {1 taken (or taken before), used} or {0, used}.
SPEND = PRELUDE + """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if done_before(KEYS[2], ARGV[3]) then return {1, used} end
local budget, cost = tonumber(ARGV[1]), tonumber(ARGV[2])
if used + cost > budget then return {0, used} end
used = redis.call('INCRBY', KEYS[1], cost)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
remember(KEYS[2], ARGV[3], tonumber(ARGV[4]))
return {1, used}
"""

# KEYS: counter, ops set. ARGV: tokens to add (negative: give back), the adjustment's id, keep
# µs, the counter's lifetime s. Settles a spend at what the request really used.
REFUND = PRELUDE + """
if done_before(KEYS[2], ARGV[2]) then return 0 end
remember(KEYS[2], ARGV[2], tonumber(ARGV[3]))
local used = redis.call('INCRBY', KEYS[1], tonumber(ARGV[1]))
if used < 0 then redis.call('SET', KEYS[1], 0) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
"""
