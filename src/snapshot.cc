// Snapshot, Filter, ChangeType names and Subscription: the immutable views and handles the
// watcher hands out (nothing here touches etcd).
#include <utility>

#include "discovery/watcher.h"

namespace discovery {

std::string_view ToString(ChangeType type) {
  switch (type) {
    case ChangeType::kAdded:
      return "added";
    case ChangeType::kUpdated:
      return "updated";
    case ChangeType::kStatusChanged:
      return "status_changed";
    case ChangeType::kRemoved:
      return "removed";
  }
  return "unknown";
}

bool Filter::Matches(const Instance& in) const {
  if (!type.empty() && in.type != type) return false;
  if (!group.empty() && in.group != group) return false;
  if (status.has_value() && in.status != *status) return false;
  return true;
}

// ---- Snapshot ----

Snapshot::Snapshot(int64_t revision,
                   std::map<std::string, std::shared_ptr<const TypeSet>, std::less<>> types,
                   uint64_t history)
    : revision_(revision), history_(history), types_(std::move(types)) {
  for (const auto& [name, set] : types_) size_ += set->instances.size();
}

std::vector<InstancePtr> Snapshot::All() const {
  std::vector<InstancePtr> out;
  out.reserve(size_);
  for (const auto& [name, set] : types_) {
    out.insert(out.end(), set->instances.begin(), set->instances.end());
  }
  return out;
}

std::vector<InstancePtr> Snapshot::Select(const Filter& filter) const {
  std::vector<InstancePtr> out;
  auto visit = [&](const TypeSet& set) {
    for (const InstancePtr& in : set.instances) {
      if (filter.Matches(*in)) out.push_back(in);
    }
  };
  if (!filter.type.empty()) {
    auto it = types_.find(filter.type);
    if (it != types_.end()) visit(*it->second);
  } else {
    for (const auto& [name, set] : types_) visit(*set);
  }
  return out;
}

const std::vector<InstancePtr>& Snapshot::OfType(std::string_view type) const {
  static const std::vector<InstancePtr> kEmpty;
  auto it = types_.find(type);
  return it == types_.end() ? kEmpty : it->second->instances;
}

InstancePtr Snapshot::Find(std::string_view type, std::string_view instance_id) const {
  for (const InstancePtr& in : OfType(type)) {
    if (in->instance_id == instance_id) return in;
  }
  return nullptr;
}

std::vector<std::string> Snapshot::Types() const {
  std::vector<std::string> out;
  for (const auto& [name, set] : types_) out.push_back(name);
  return out;
}

// ---- Subscription ----

Subscription::Subscription(Subscription&& o) noexcept : cancel_(std::move(o.cancel_)) {
  o.cancel_ = nullptr;
}
Subscription& Subscription::operator=(Subscription&& o) noexcept {
  if (this != &o) {
    Reset();
    cancel_ = std::move(o.cancel_);
    o.cancel_ = nullptr;
  }
  return *this;
}
Subscription::~Subscription() { Reset(); }
void Subscription::Reset() {
  if (cancel_) {
    auto cancel = std::move(cancel_);
    cancel_ = nullptr;
    cancel();
  }
}
}  // namespace discovery
