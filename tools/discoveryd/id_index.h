// File: tools/discoveryd/id_index.h
//
// instanceId -> the cached instances with that id (one per type), for the REST calls that name
// an instance without `?type=` (GET/PATCH/DELETE /sd/v1/instances/{id}, heartbeat). The watch
// cache keeps a type's instances in (group, instanceId) order, so finding an id there without
// its type and group walks every cached instance: ~2 ms of CPU per request at 100,000, for
// anyone who reaches the port. This index answers in O(1) and costs ~120 bytes per cached
// instance (measured at 100,000 with 26-character ids: the table slot with the id string and
// one instance pointer, and the id's heap copy; the instance itself is the cache's).
//
//   IdIndex ids;
//   Subscription s = watcher.Subscribe({}, [&](const ChangeEvent& ev) { ids.Apply(ev); },
//                                      /*initial=*/true);
//   std::vector<std::string> types = ids.TypesOf("world-kr1-01");   // sorted, empty if none
//
// Fed by the watcher's events only (initial = the whole cache, then every change in order; a
// history reset arrives as the differences, so the index stays exactly the cache's key set).
//
// Thread-safety: thread-safe (Apply on the watcher's thread, TypesOf from the HTTP workers).
#pragma once

#include <cstddef>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "discovery/watcher.h"

namespace discoveryd {

class IdIndex {
 public:
  void Apply(const discovery::ChangeEvent& ev);
  // The types holding an instance `id`, sorted (the same id may be registered under several).
  std::vector<std::string> TypesOf(std::string_view id) const;
  // Cached instances indexed (== the watcher's snapshot size once the events are applied).
  size_t size() const;

 private:
  using Slots = absl::InlinedVector<discovery::InstancePtr, 1>;  // one per type, any order
  mutable std::mutex mu_;
  absl::flat_hash_map<std::string, Slots> by_id_;
  size_t size_ = 0;
};

}  // namespace discoveryd
