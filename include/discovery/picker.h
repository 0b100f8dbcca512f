// File: discovery/picker.h
//
// Load-balancing pickers over a set of instances. A picker holds an immutable candidate set
// that is replaced as a whole by `Update()` (the watcher does that when its snapshot
// changes); `Pick()` reads it without taking a lock that `Update()` could hold for long.
//
//   auto picker = discovery::NewPicker({.kind = discovery::PickerKind::kWeightedRoundRobin});
//   picker->Update(instances);              // usually done for you by Watcher::NewPicker
//   discovery::InstancePtr target = picker->Pick();
//   if (target == nullptr) { /* no candidate */ }
//
// Thread-safety: every method of every picker is thread-safe; `Pick()` may run on any number
// of threads while `Update()` runs.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "discovery/instance.h"

namespace discovery {

enum class PickerKind {
  kRoundRobin,          // each candidate in turn
  kWeightedRoundRobin,  // smooth weighted round robin (nginx style) by Instance::weight
  kRandom,              // uniform random
  kLeastLoad,           // power of two random choices, lower performance[load_field] wins
  kConsistentHash,      // ring hash of the pick key: sticky sessions, minimal movement
};

struct PickerOptions {
  PickerKind kind = PickerKind::kRoundRobin;
  // kLeastLoad: numeric field of Instance::performance; missing/non-numeric counts as 0.
  std::string load_field = "load";
  // kConsistentHash: virtual nodes per instance on the ring (more = smoother spread).
  int virtual_nodes = 160;
};

class Picker {
 public:
  virtual ~Picker() = default;
  // Replaces the candidate set. Candidates are used as given (no status filtering here).
  virtual void Update(std::vector<InstancePtr> candidates) = 0;
  // A candidate, or nullptr when the set is empty (or every weight is 0 for kWeightedRoundRobin).
  // `key` is used by kConsistentHash (e.g. a session or player id) and ignored by the others.
  virtual InstancePtr Pick(std::string_view key = {}) = 0;
  // Number of candidates in the current set.
  virtual size_t size() const = 0;
};

std::unique_ptr<Picker> NewPicker(const PickerOptions& options);

}  // namespace discovery
