// Internal: the watcher cache's per-type persistent sorted structure (Snapshot::TypeSet).
//
// A type's instances are kept in (group, instanceId) order in immutable chunks of at most
// ChunkLimit(instances of the type) pointers (never more than Snapshot::kChunkMax). A
// TypeSetBuilder starts from the published set, copies a chunk the first time a change lands in it
// (copy-on-write), splits chunks that grow past the limit, drops empty ones and merges small
// neighbours, and Finish() publishes a new set that shares every untouched chunk with the previous
// one. A publish therefore costs O(changed instances x chunk size + number of chunks), independent
// of how the type's instances are spread.
//
// Why the limit follows the type's size: a publish copies the changed chunk (ChunkLimit
// shared_ptrs, each a reference-count increment on the instance's control block, usually a
// cold cache line) and the chunk index (n / ChunkLimit chunk pointers, the same). sqrt(n)
// minimises the sum: 32 up to 1,024 instances, 128 at 10,000, kChunkMax (256) above 16,384.
// A fixed 256 made one update in a type of 1,000 copy 256 pointers where ~70 suffice; the
// watch thread's profile showed the copy as the largest part of our per-event CPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "discovery/watcher.h"

namespace discovery::cache {

// The sort key of an instance is group + '\x1f' + instanceId, compared byte-wise (unsigned).
bool SortsBefore(const Instance& a, const Instance& b);
bool SameSortKey(const Instance& a, const Instance& b);
// <0, 0, >0 as the sort key of `x` compares to `probe` (a raw key, e.g. group + '\x1f').
int CompareSortKey(const Instance& x, std::string_view probe);

// The watcher's per-key index (etcd key -> cached instance, mod_revision) without a copy of the
// key: every cached key is <prefix><type>/<instanceId> of its own instance (Decode rejects any
// other), so the entry is found by (type, instanceId) views of the key. Saves the key string
// and the map node's second copy of it (~100 B per cached instance at 100k).
struct KeyRef {
  std::string_view type;
  std::string_view id;
};
// `rest` is the key without the watch prefix: "type/instanceId" (anything else finds nothing).
KeyRef SplitKey(std::string_view rest);

// The split limit of a type of `n` instances: the power of two nearest above sqrt(n), from 32
// to Snapshot::kChunkMax.
size_t ChunkLimit(size_t n);

struct Entry {
  // Mutable in the set: replacing the instance keeps its type and instanceId (the hash key).
  mutable InstancePtr in;
  mutable int64_t mod_revision = 0;
};
struct EntryHash {
  using is_transparent = void;
  size_t operator()(KeyRef k) const {
    const size_t h = std::hash<std::string_view>()(k.type);
    return h ^ (std::hash<std::string_view>()(k.id) + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2));
  }
  size_t operator()(const Entry& e) const { return (*this)(KeyOf(e)); }
  static KeyRef KeyOf(const Entry& e) { return {e.in->type, e.in->instance_id}; }
};
struct EntryEq {
  using is_transparent = void;
  static bool Same(KeyRef a, KeyRef b) { return a.type == b.type && a.id == b.id; }
  bool operator()(const Entry& a, const Entry& b) const {
    return Same(EntryHash::KeyOf(a), EntryHash::KeyOf(b));
  }
  bool operator()(KeyRef a, KeyRef b) const { return Same(a, b); }
  bool operator()(KeyRef a, const Entry& b) const { return Same(a, EntryHash::KeyOf(b)); }
  bool operator()(const Entry& a, KeyRef b) const { return Same(EntryHash::KeyOf(a), b); }
};
// Open addressing (absl's Swiss table): the entry (instance pointer + revision, 24 bytes)
// sits in the table itself, found through one control group and one slot, where a
// std::unordered_set node was a separate allocation behind a bucket and its predecessor (two
// more cold lines on every watch event, and ~48 bytes more per cached instance).
using EntryIndex = absl::flat_hash_set<Entry, EntryHash, EntryEq>;

class TypeSetBuilder {
 public:
  // `base` may be null (an empty type).
  explicit TypeSetBuilder(std::shared_ptr<const Snapshot::TypeSet> base);
  // Removes the instance with `in`'s sort key, if present.
  void Erase(const Instance& in);
  // Inserts `in`, or replaces the instance with the same sort key.
  void Upsert(InstancePtr in);
  // Replaces `prev` (held by the set) by `next`, which has the same sort key: found by
  // address in its chunk, without comparing keys inside it (the common update: a status or
  // load change; each comparison would read a cold instance). Falls back to Upsert(next)
  // when `prev` is not in the set.
  void Replace(const Instance& prev, InstancePtr next);
  size_t size() const { return size_; }
  // The new set (null when empty); shares every chunk no change landed in with `base`.
  std::shared_ptr<const Snapshot::TypeSet> Finish();
  size_t chunks_copied() const { return copied_; }

 private:
  // Index of the first chunk whose last instance does not sort before `in` (chunks_.size()
  // when every chunk ends before it).
  size_t ChunkFor(const Instance& in) const;
  std::vector<InstancePtr>& Mutable(size_t c);
  // Sets slot `pos` of chunk `c` (same sort key) to `in`.
  void ReplaceAt(size_t c, size_t pos, InstancePtr in);
  // Moves the upper half of chunk `c` into a new chunk after it.
  void Split(size_t c);
  // Chunk `c` changed (Mark), a chunk was inserted at or removed from index `c` (Inserted,
  // Removed): the range of chunks whose `ends` Finish recomputes follows.
  void Mark(size_t c);
  void Inserted(size_t c);
  void Removed(size_t c);

  // The set this builder started from: Finish takes the `ends` of the chunks no change
  // landed in from it (those before dirty_lo_ as they were, those from dirty_hi_ on shifted
  // by the chunks and instances added or removed) instead of reading every chunk.
  std::shared_ptr<const Snapshot::TypeSet> base_;
  std::vector<std::shared_ptr<const Snapshot::Chunk>> chunks_;
  std::vector<bool> owned_;  // chunks_[i] was created by this builder (not yet published)
  size_t dirty_lo_ = SIZE_MAX, dirty_hi_ = 0;  // [lo, hi): chunks changed, inserted or moved
  size_t size_ = 0;
  size_t copied_ = 0;
};

}  // namespace discovery::cache
