// The Lua scripts of the Redis store. Every key of a namespace carries the hash tag `{ns}` so
// that they all live in one hash slot and every mutation is one atomic script (single Redis,
// Sentinel, and - keys declared - Cluster). KEYS, in this order (see Keys()):
//   1 {ns}:meta   HASH   epoch (random at creation), seq (last change), lease_next, reaper_last
//   2 {ns}:inst   HASH   instance key -> JSON value
//   3 {ns}:mod    HASH   instance key -> seq of its last modification
//   4 {ns}:owner  HASH   instance key -> lease id
//   5 {ns}:dl     ZSET   lease id -> deadline (ms, from redis TIME)
//   6 {ns}:ttl    HASH   lease id -> ttl (ms)
//   7 {ns}:log    STREAM change log, entry id <seq>-0, fields op (put|del), key, value, n (a
//                 random nonce of the script call: (seq, n) names a record across histories,
//                 so a watcher can tell whether the record at its seq is still the one it read)
// and {ns}:lk:<lease> (SET of the lease's keys) and {ns}:records (HASH, see kRecordReadScript),
// derived from KEYS[1] inside the scripts.
// ARGV 1..3 of every script: epoch candidate (used once, HSETNX), stream MAXLEN (~), first
// lease id candidate (HSETNX: lease ids of a recreated store do not restart at 1, so a lease of
// the old store never names a lease of the new one). Script arguments follow from ARGV[4].
#pragma once

#include <string>
#include <vector>

namespace discovery::redis {

std::vector<std::string> Keys(const std::string& ns);

// ARGV 4: ttl_ms, 5: id candidate (random, < 2^52; taken unless in use) -> lease id
extern const std::string kGrantScript;
// ARGV 4..: lease ids -> the ids that are gone (deadline refreshed for the others)
extern const std::string kKeepAliveScript;
// ARGV 4: lease -> 1 revoked, 0 gone already
extern const std::string kRevokeScript;
// ARGV 4 key, 5 value, 6 lease -> {1, seq} written (or ours already), {0} other owner,
// {-1} lease gone
extern const std::string kPutIfAbsentScript;
// ARGV 4 key, 5 value, 6 lease, 7 expected mod seq (0: absent) -> {1, seq, store_seq} |
// {0, store_seq, present, value, owner, mod} | {-1}
extern const std::string kPutIfUnchangedScript;
// ARGV 4 key, 5 guard lease (0: any), 6 guard mod (0: any) -> {1, store_seq, owner} |
// {0, store_seq, present, value, owner, mod}
extern const std::string kDeleteScript;
// ARGV 4 grace_ms, 5 limit -> {epoch, seq, removed leases, shifted by ms}
extern const std::string kReapScript;

// ARGV 4 key -> {0, store_seq} absent | {1, store_seq, value, owner, mod}
extern const std::string kReadScript;
// ARGV 4..: lease ids -> one ttl_ms per id (0: gone); the live ones are refreshed
extern const std::string kRefreshScript;
// ARGV 4: lease -> 1 revoked, 0 kept (keys still attached), -1 gone already
extern const std::string kRevokeIfUnusedScript;
// Small named records beside the instances ({ns}:records HASH: field -> value, field#mod ->
// its modification counter), for discoveryd's SSE epoch. Both answer the store's epoch (meta)
// too, so a reader can tell a record of another history from a newer one of the same.
// ARGV 4 field -> {0, epoch} absent | {1, epoch, value, mod}
extern const std::string kRecordReadScript;
// ARGV 4 field, 5 expected mod (0: absent), 6 value -> {1, epoch, mod} | {0, epoch}
extern const std::string kRecordWriteScript;

}  // namespace discovery::redis
