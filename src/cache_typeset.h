// Internal: the watcher cache's per-type persistent sorted structure (Snapshot::TypeSet).
//
// A type's instances are kept in (group, instanceId) order in immutable chunks of at most
// Snapshot::kChunkMax pointers. A TypeSetBuilder starts from the published set, copies a chunk
// the first time a change lands in it (copy-on-write), splits chunks that grow past the limit,
// drops empty ones and merges small neighbours, and Finish() publishes a new set that shares
// every untouched chunk with the previous one. A publish therefore costs O(changed instances
// x chunk size + number of chunks), independent of how the type's instances are spread.
#pragma once

#include <cstddef>
#include <memory>
#include <string_view>
#include <vector>

#include "discovery/watcher.h"

namespace discovery::cache {

// The sort key of an instance is group + '\x1f' + instanceId, compared byte-wise (unsigned).
bool SortsBefore(const Instance& a, const Instance& b);
bool SameSortKey(const Instance& a, const Instance& b);
// <0, 0, >0 as the sort key of `x` compares to `probe` (a raw key, e.g. group + '\x1f').
int CompareSortKey(const Instance& x, std::string_view probe);

class TypeSetBuilder {
 public:
  // `base` may be null (an empty type).
  explicit TypeSetBuilder(std::shared_ptr<const Snapshot::TypeSet> base);
  // Removes the instance with `in`'s sort key, if present.
  void Erase(const Instance& in);
  // Inserts `in`, or replaces the instance with the same sort key.
  void Upsert(InstancePtr in);
  size_t size() const { return size_; }
  // The new set (null when empty); shares every chunk no change landed in with `base`.
  std::shared_ptr<const Snapshot::TypeSet> Finish();
  size_t chunks_copied() const { return copied_; }

 private:
  // Index of the first chunk whose last instance does not sort before `in` (chunks_.size()
  // when every chunk ends before it).
  size_t ChunkFor(const Instance& in) const;
  std::vector<InstancePtr>& Mutable(size_t c);

  std::vector<std::shared_ptr<const Snapshot::Chunk>> chunks_;
  std::vector<bool> owned_;  // chunks_[i] was created by this builder (not yet published)
  size_t size_ = 0;
  size_t copied_ = 0;
};

}  // namespace discovery::cache
