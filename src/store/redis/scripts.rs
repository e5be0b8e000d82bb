//! The Lua scripts: every compare-and-swap, lease and epoch step is one server-side
//! script, one round trip, atomic in Redis.

/// The write of a compare-and-swap whose checks passed: KEYS[1] = credential, KEYS[2] =
/// generation counter; ARGV[2..7] = the fields and the TTL (ms, 0 for none).
macro_rules! write_credential {
    () => {
        r#"
local generation = redis.call('INCR', KEYS[2])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'at', ARGV[2], 'obt', ARGV[3], 'gen', generation)
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'rt', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'scope', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'exp', ARGV[6]) end
if tonumber(ARGV[7]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[7]) end
"#
    };
}

/// The generation check: ARGV[1] = expected generation ("" for none). A conflict
/// returns what is stored.
macro_rules! check_generation {
    () => {
        r#"
local current = redis.call('HGET', KEYS[1], 'gen') or ''
if current ~= ARGV[1] then
  return {0, redis.call('HGETALL', KEYS[1])}
end
"#
    };
}

/// Compare-and-swap: KEYS = credential, generation counter; ARGV = expected generation,
/// then the fields. One round trip; a conflict returns what is stored.
pub(super) const CAS: &str = concat!(
    check_generation!(),
    write_credential!(),
    "return {1, {tostring(generation)}}"
);

/// Fenced CAS: KEYS = credential, generation counter, lease; ARGV[8] = fence. A lease
/// that is not ours any more is a conflict; a write releases the lease.
pub(super) const FENCED_CAS: &str = concat!(
    r#"
if redis.call('GET', KEYS[3]) ~= ARGV[8] then
  return {0, redis.call('HGETALL', KEYS[1])}
end
"#,
    check_generation!(),
    write_credential!(),
    "redis.call('DEL', KEYS[3])\nreturn {1, {tostring(generation)}}"
);

/// Lease: KEYS = credential, lease, fence counter; ARGV = trigger generation, TTL (ms).
/// 0: superseded (with what is stored), 1: held (ms left), 2: acquired (the fence).
pub(super) const ACQUIRE: &str = r#"
local current = redis.call('HGET', KEYS[1], 'gen') or ''
if current ~= ARGV[1] then
  return {0, redis.call('HGETALL', KEYS[1])}
end
local left = redis.call('PTTL', KEYS[2])
if left > 0 then
  return {1, {tostring(left)}}
end
local fence = redis.call('INCR', KEYS[3])
redis.call('SET', KEYS[2], fence, 'PX', ARGV[2])
return {2, {tostring(fence)}}
"#;

/// Release: KEYS = lease; ARGV = fence. Only the holder's own lease is deleted.
pub(super) const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"#;

/// The store's epoch: KEYS = epoch, generation counter, fence counter; ARGV = a new
/// epoch, the counters' floor. An epoch present is returned as it is (0); a missing one
/// (first use, or everything was lost) is set, and the counters are raised to the floor
/// so that nothing issued after a loss repeats a generation or fence issued before (1).
pub(super) const EPOCH: &str = r#"
local current = redis.call('GET', KEYS[1])
if current then
  return {0, current}
end
redis.call('SET', KEYS[1], ARGV[1])
for i = 2, 3 do
  local value = tonumber(redis.call('GET', KEYS[i]) or '0')
  if value < tonumber(ARGV[2]) then
    redis.call('SET', KEYS[i], ARGV[2])
  end
end
return {1, ARGV[1]}
"#;

/// Lease renewal: KEYS = lease; ARGV = fence, TTL (ms). 1 if the lease was ours.
pub(super) const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// Record compare-and-set: KEYS = record; ARGV = expected present ("1"/"0"), expected
/// value, new value, TTL (ms).
pub(super) const RECORD_CAS: &str = r#"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return 1
"#;

/// Delete: KEYS = credential; ARGV = generation.
pub(super) const DELETE: &str = r#"
if redis.call('HGET', KEYS[1], 'gen') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#;
