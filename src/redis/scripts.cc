#include "redis/scripts.h"

namespace discovery::redis {

std::vector<std::string> Keys(const std::string& ns) {
  const std::string b = "{" + ns + "}:";
  return {b + "meta", b + "inst", b + "mod", b + "owner", b + "dl", b + "ttl", b + "log"};
}

namespace {

const std::string kPrelude = R"lua(
local meta, inst, mod, owner, dl, ttls, log = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local base = string.sub(meta, 1, -5)
local maxlen = ARGV[2]
redis.call('HSETNX', meta, 'epoch', ARGV[1])
redis.call('HSETNX', meta, 'lease_next', ARGV[3])
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function store_seq()
  return tonumber(redis.call('HGET', meta, 'seq') or '0')
end
local function logrec(op, key, value)
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  local ok = redis.pcall('XADD', log, 'MAXLEN', '~', maxlen, seq .. '-0', 'op', op, 'key', key,
                         'value', value, 'n', ARGV[1])
  if type(ok) == 'table' and ok.err then
    -- A foreign entry (XADD by hand) sits above our seq: jump past it. Watchers see the gap
    -- and resync; writes go on.
    local top = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
    local topseq = tonumber(string.match(top[1][1], '^(%d+)'))
    seq = topseq + 1
    redis.call('HSET', meta, 'seq', seq)
    redis.call('XADD', log, 'MAXLEN', '~', maxlen, seq .. '-0', 'op', op, 'key', key, 'value', value,
               'n', ARGV[1])
  end
  return seq
end
local function remove(key)
  local o = redis.call('HGET', owner, key)
  redis.call('HDEL', inst, key)
  redis.call('HDEL', mod, key)
  redis.call('HDEL', owner, key)
  if o then redis.call('SREM', base .. 'lk:' .. o, key) end
  return logrec('del', key, '')
end
local function write(key, value, lease)
  local o = redis.call('HGET', owner, key)
  if o and o ~= lease then redis.call('SREM', base .. 'lk:' .. o, key) end
  local seq = logrec('put', key, value)
  redis.call('HSET', inst, key, value)
  redis.call('HSET', mod, key, seq)
  redis.call('HSET', owner, key, lease)
  redis.call('SADD', base .. 'lk:' .. lease, key)
  return seq
end
local function alive(lease)
  return redis.call('ZSCORE', dl, lease) ~= false
end
-- Moves a live lease's deadline to now + its ttl; its ttl (ms), or nil when it is gone.
local function refresh(id, now)
  local ttl = redis.call('HGET', ttls, id)
  if not (ttl and alive(id)) then return nil end
  redis.call('ZADD', dl, 'XX', now + tonumber(ttl), id)
  return tonumber(ttl)
end
local function drop_lease(lease)
  local lk = base .. 'lk:' .. lease
  for _, key in ipairs(redis.call('SMEMBERS', lk)) do
    if redis.call('HGET', owner, key) == lease then remove(key) end
  end
  redis.call('DEL', lk)
  redis.call('ZREM', dl, lease)
  redis.call('HDEL', ttls, lease)
end
)lua";

}  // namespace

const std::string kGrantScript = kPrelude + R"lua(
local ttl = tonumber(ARGV[4])
-- A random id (the caller's candidate): a grant lost with a failed master must never be
-- granted again to another process by the promoted replica (its keepalives would keep the
-- other's lease alive and never learn that its own keys are gone).
local id = ARGV[5]
if id == nil or redis.call('HEXISTS', ttls, id) == 1 then
  id = redis.call('HINCRBY', meta, 'lease_next', 1)
end
redis.call('ZADD', dl, now_ms() + ttl, id)
redis.call('HSET', ttls, id, ttl)
return tonumber(id)
)lua";

const std::string kKeepAliveScript = kPrelude + R"lua(
local now = now_ms()
local gone = {}
for i = 4, #ARGV do
  if not refresh(ARGV[i], now) then gone[#gone + 1] = ARGV[i] end
end
return gone
)lua";

const std::string kRevokeScript = kPrelude + R"lua(
if not alive(ARGV[4]) then return 0 end
drop_lease(ARGV[4])
return 1
)lua";

const std::string kPutIfAbsentScript = kPrelude + R"lua(
local key, value, lease = ARGV[4], ARGV[5], ARGV[6]
if not alive(lease) then return {-1} end
if redis.call('HEXISTS', inst, key) == 1 then
  if redis.call('HGET', owner, key) == lease then
    return {1, tonumber(redis.call('HGET', mod, key))}
  end
  return {0}
end
return {1, write(key, value, lease)}
)lua";

const std::string kPutIfUnchangedScript = kPrelude + R"lua(
local key, value, lease, expected = ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
if not alive(lease) then return {-1} end
local cur = tonumber(redis.call('HGET', mod, key) or '0')
if cur ~= expected then
  local v = redis.call('HGET', inst, key)
  if not v then return {0, store_seq(), 0} end
  return {0, store_seq(), 1, v, tonumber(redis.call('HGET', owner, key) or '0'), cur}
end
local seq = write(key, value, lease)
return {1, seq, seq}
)lua";

const std::string kDeleteScript = kPrelude + R"lua(
local key, gl, gm = ARGV[4], ARGV[5], ARGV[6]
local v = redis.call('HGET', inst, key)
if not v then return {0, store_seq(), 0} end
local o = redis.call('HGET', owner, key) or '0'
local m = redis.call('HGET', mod, key) or '0'
if (gl ~= '0' and o ~= gl) or (gm ~= '0' and m ~= gm) then
  return {0, store_seq(), 1, v, tonumber(o), tonumber(m)}
end
local seq = remove(key)
return {1, seq, tonumber(o)}
)lua";

const std::string kReapScript = kPrelude + R"lua(
local grace, limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
local last = tonumber(redis.call('HGET', meta, 'reaper_last') or '0')
local shifted = 0
if last > 0 and now - last > grace then
  -- Nobody reaped for longer than the grace (Redis was down or frozen, so nobody could
  -- heartbeat either): give every lease the gap back instead of removing live servers.
  shifted = now - last
  local all = redis.call('ZRANGE', dl, 0, -1, 'WITHSCORES')
  for i = 1, #all, 2 do
    redis.call('ZADD', dl, tonumber(all[i + 1]) + shifted, all[i])
  end
end
redis.call('HSET', meta, 'reaper_last', now)
local removed = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', dl, '-inf', now, 'LIMIT', 0, limit)) do
  drop_lease(id)
  removed = removed + 1
end
return {redis.call('HGET', meta, 'epoch'), store_seq(), removed, shifted}
)lua";

const std::string kReadScript = kPrelude + R"lua(
local key = ARGV[4]
local v = redis.call('HGET', inst, key)
if not v then return {0, store_seq()} end
return {1, store_seq(), v, tonumber(redis.call('HGET', owner, key) or '0'),
        tonumber(redis.call('HGET', mod, key) or '0')}
)lua";

const std::string kRefreshScript = kPrelude + R"lua(
local now = now_ms()
local out = {}
for i = 4, #ARGV do
  out[#out + 1] = refresh(ARGV[i], now) or 0
end
return out
)lua";

const std::string kRevokeIfUnusedScript = kPrelude + R"lua(
local lease = ARGV[4]
if not alive(lease) then return -1 end
if redis.call('SCARD', base .. 'lk:' .. lease) > 0 then return 0 end
drop_lease(lease)
return 1
)lua";

const std::string kRecordReadScript = kPrelude + R"lua(
local h = base .. 'records'
local e = redis.call('HGET', meta, 'epoch')
local v = redis.call('HGET', h, ARGV[4])
if not v then return {0, e} end
return {1, e, v, tonumber(redis.call('HGET', h, ARGV[4] .. '#mod') or '1')}
)lua";

const std::string kRecordWriteScript = kPrelude + R"lua(
local h = base .. 'records'
local e = redis.call('HGET', meta, 'epoch')
local field, expected, value = ARGV[4], tonumber(ARGV[5]), ARGV[6]
local cur = 0
if redis.call('HEXISTS', h, field) == 1 then
  cur = tonumber(redis.call('HGET', h, field .. '#mod') or '1')
end
if cur ~= expected then return {0, e} end
redis.call('HSET', h, field, value, field .. '#mod', cur + 1)
return {1, e, cur + 1}
)lua";

}  // namespace discovery::redis
