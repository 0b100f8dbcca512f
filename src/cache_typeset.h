// Internal: the watcher cache's per-type persistent sorted structure (Snapshot::TypeSet).
//
// A type's instances are kept in (group, instanceId) order in immutable chunks of at most
// ChunkLimit(n) pointers, and the chunks in immutable segments of at most ChunkLimit(n)
// chunks (n: the type's instances). A TypeSetBuilder starts from the published set, copies a
// segment and a chunk the first time a change lands in them (copy-on-write), splits chunks and
// segments that grow past the limit, drops empty ones and merges small neighbours, and
// Finish() publishes a new set that shares every untouched segment and chunk with the
// previous one.
//
// Why two levels and cbrt(n): a publish copies the changed chunk (its instance pointers), the
// changed segment (its chunk pointers) and the segment index, each copied pointer a
// reference-count increment on a usually cold control block, and frees as many when the old
// snapshot goes. With one level (chunks of sqrt(n) and a chunk index of n / sqrt(n)) that was
// ~70 pointers at 1,000 instances and ~790 at 100,000, the largest part of the watch thread's
// per-event CPU above raw gRPC; two levels of cbrt(n) make it ~40 and ~170.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/container/inlined_vector.h"
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

// The split limit of a type of `n` instances, for chunks (instances) and segments (chunks):
// the power of two nearest above cbrt(n), from 16 to Snapshot::kChunkMax.
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
  size_t size() const { return segs_.empty() ? 0 : segs_.back().end; }
  // The new set (null when empty); shares every segment and chunk no change landed in with
  // `base`.
  std::shared_ptr<const Snapshot::TypeSet> Finish();
  size_t chunks_copied() const { return copied_; }

 private:
  using Segment = Snapshot::Segment;
  using Chunk = Snapshot::Chunk;
  struct Loc {
    size_t seg, chunk;
  };
  // The first chunk whose last instance does not sort before `in` ({segments, 0} when every
  // chunk ends before it).
  Loc ChunkFor(const Instance& in) const;
  // Copy-on-write: segment `s` (or chunk `c` of it, and its segment) made this builder's own.
  Segment& MutableSegment(size_t s);
  std::vector<InstancePtr>& MutableChunk(size_t s, size_t c);
  // Chunk (s, c) changed size by `delta` and maybe its last instance: the ends and lasts of
  // it, its segment and everything after follow.
  void Resized(size_t s, size_t c, std::ptrdiff_t delta);
  // Sets slot `pos` of chunk (s, c) (same sort key) to `in`.
  void ReplaceAt(size_t s, size_t c, size_t pos, InstancePtr in);
  // Moves the instances of chunk (s, c) from index `keep` on into a new chunk after it (and
  // splits the segment when it grows past the limit); moves the chunks of segment `s` from
  // index `keep` on into a new segment after it.
  void SplitChunk(size_t s, size_t c, size_t keep);
  void SplitSegment(size_t s, size_t keep);
  // Removes empty chunk (s, c) (and its segment when that empties); joins a small chunk
  // (s, c) or segment `s` with a neighbour.
  void RemoveChunk(size_t s, size_t c);
  void MaybeMerge(size_t s, size_t c);
  void MergeSegment(size_t s);
  // Segments and chunks created by this builder: a publish makes one or two of each (a short
  // list, searched linearly); a large batch (a sync) thousands (then a hash set).
  bool Owned(const void* p) const;
  void Own(const void* p);

  std::vector<Snapshot::Ref<Segment>> segs_;
  absl::InlinedVector<const void*, 8> owned_;
  absl::flat_hash_set<const void*> owned_many_;
  size_t copied_ = 0;
};

}  // namespace discovery::cache
