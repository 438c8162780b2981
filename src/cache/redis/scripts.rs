//! The Lua scripts: each is one atomic step on keys of one slot (see `keys.rs`).

/// KEYS: sequencer[, active set, fence]. ARGV: count, now_ms, conversation_id, key ttl (ms).
/// The last value of the range, or nil when the key has no state (the caller re-seeds it from
/// the Store: never counting up from zero), or the error `FENCED` while a mode switch holds the
/// conversation's allocations back. A conversation's allocation also marks it active.
pub const ALLOCATE: &str = r"
if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 1 then return redis.error_reply('FENCED') end
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local last = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if KEYS[2] then redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3]) end
return last
";

/// KEYS: sequencer, count, active set, fence. ARGV: count increment (0 or 1), now_ms,
/// conversation_id, ttl (ms). The next conv_seq and, by the increment, the count, atomically;
/// nil when either key has no state; the error `FENCED` while a switch holds the fence.
pub const ALLOCATE_MESSAGE: &str = r"
if redis.call('EXISTS', KEYS[4]) == 1 then return redis.error_reply('FENCED') end
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('EXISTS', KEYS[2]) == 0 then return false end
local seq = redis.call('INCR', KEYS[1])
local count = redis.call('INCRBY', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
return {seq, count}
";

/// KEYS: sequencer, fence. ARGV: holder, ttl (ms). Fences the conversation's allocations for
/// this holder and answers the sequencer's value; nil (no fence set) when the sequencer has no
/// state; the error `FENCED` while another holder has the fence.
pub const FENCE: &str = r"
local held = redis.call('GET', KEYS[2])
if held and held ~= ARGV[1] then return redis.error_reply('FENCED') end
local current = redis.call('GET', KEYS[1])
if not current then return false end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return current
";

/// KEYS: claim (or fence). ARGV: holder. Deletes it only if this holder still has it.
pub const RELEASE_CLAIM: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// KEYS: rate key. ARGV: period (µs), burst. One GCRA step by Redis's clock (one clock for
/// every node): the key holds the theoretical arrival time (µs) and expires when the quota is
/// whole again. Answers -1 when admitted, else the wait in µs. Like `cache::gcra`.
pub const ADMIT_RATE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period = tonumber(ARGV[1])
local tolerance = period * (tonumber(ARGV[2]) - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tolerance then return tat - now - tolerance end
local next = tat + period
redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', math.ceil((next - now) / 1000) + 1)
return -1
";

/// KEYS: claim. ARGV: holder, ttl ms. Extends it only if this holder still has it.
pub const EXTEND_CLAIM: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";

/// KEYS: epoch hash. ARGV: a fresh random epoch. The epoch stays while this Redis process
/// (its `run_id`) keeps its data; a flush deletes it and a restart changes the run, so either
/// mints a new one (a restart restoring a snapshot restores old sequencer values too: see the
/// README on persistence).
pub const EPOCH: &str = r"
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
local cur = redis.call('HMGET', KEYS[1], 'epoch', 'run')
if cur[1] and cur[2] == run then return cur[1] end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'run', run)
return ARGV[1]
";

/// KEYS: window, head. ARGV: conv_seq, member, message_id, window size, now_ms, idle ttl (ms),
/// count_seq (the head keeps the highest).
/// Adds, trims to the newest entries, raises the head — one step, so a reader never sees a
/// head ahead of its entry.
pub const HOT_APPEND: &str = r"
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
local n = redis.call('ZCARD', KEYS[1])
local keep = tonumber(ARGV[4])
if n > keep then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - keep - 1) end
local head = redis.call('HMGET', KEYS[2], 's', 't')
if not head[1] or tonumber(ARGV[1]) >= tonumber(head[1]) then
  redis.call('HSET', KEYS[2], 's', ARGV[1], 'm', ARGV[3])
end
if not head[2] or tonumber(ARGV[5]) > tonumber(head[2]) then
  redis.call('HSET', KEYS[2], 't', ARGV[5])
end
local count = redis.call('HGET', KEYS[2], 'c')
if not count or tonumber(ARGV[7]) > tonumber(count) then
  redis.call('HSET', KEYS[2], 'c', ARGV[7])
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return n
";

/// KEYS: window. ARGV: after_seq, limit. `{}` without a window, else the lowest member
/// followed by up to `limit` members with score > after_seq — read atomically, so the lowest
/// member bounds what the entries cover.
pub const HOT_READ: &str = r"
local low = redis.call('ZRANGE', KEYS[1], 0, 0)
if #low == 0 then return {} end
local items = redis.call('ZRANGE', KEYS[1], '(' .. ARGV[1], '+inf', 'BYSCORE', 'LIMIT', 0, ARGV[2])
table.insert(items, 1, low[1])
return items
";

/// KEYS: verified, active set. ARGV: seq, conversation_id, allocated_at_ms, ttl (ms).
/// Raises the verified mark (never lowers it) and leaves the active set unless the
/// conversation allocated again since `allocated_at_ms`.
pub const MARK_VERIFIED: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur or tonumber(ARGV[1]) > tonumber(cur) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
local at = redis.call('ZSCORE', KEYS[2], ARGV[2])
if at and tonumber(at) == tonumber(ARGV[3]) then redis.call('ZREM', KEYS[2], ARGV[2]) end
return 1
";

/// KEYS: presence hash. ARGV: device, node, ttl (ms), hash ttl (ms). Expiry is Redis's clock
/// (`TIME`), the same for every node; lapsed devices are dropped on the way. The field `~last`
/// (no device id starts with `~`) holds when any device was last seen.
pub const SET_PRESENCE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i] ~= '~last' then
    local exp = tonumber(string.match(all[i + 1], '^(%d+)|'))
    if not exp or exp <= now then redis.call('HDEL', KEYS[1], all[i]) end
  end
end
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.0f', now + ttl) .. '|' .. ARGV[2],
  '~last', string.format('%.0f', now))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
";

/// KEYS: presence hash. ARGV: device, hash ttl (ms). The device left: seen now.
pub const CLEAR_PRESENCE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], '~last', string.format('%.0f', now))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// KEYS: presence hash. `{last seen ms, {device, node, device, node, ...}}` of the live devices.
pub const PRESENCE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local out = {}
local last = 0
for i = 1, #all, 2 do
  if all[i] == '~last' then
    last = tonumber(all[i + 1]) or 0
  else
    local exp, node = string.match(all[i + 1], '^(%d+)|(.*)$')
    if exp and tonumber(exp) > now then
      table.insert(out, all[i])
      table.insert(out, node)
    end
  end
end
return {last, out}
";
