// Snapshot, Filter, ChangeType names and Subscription: the immutable views and handles the
// watcher hands out (nothing here touches etcd).
#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "cache_typeset.h"
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

// ---- Snapshot::TypeSet / TypeView ----

std::shared_ptr<const Snapshot::TypeSet> Snapshot::TypeSet::FromSorted(
    const std::vector<InstancePtr>& sorted) {
  auto set = std::make_shared<TypeSet>();
  for (size_t i = 0; i < sorted.size(); i += kChunkMax / 2) {
    auto chunk = std::make_shared<Chunk>();
    const size_t end = std::min(sorted.size(), i + kChunkMax / 2);
    chunk->items.assign(sorted.begin() + static_cast<std::ptrdiff_t>(i),
                        sorted.begin() + static_cast<std::ptrdiff_t>(end));
    set->ends.push_back(end);
    set->chunks.push_back(std::move(chunk));
  }
  return set;
}

Snapshot::TypeView::iterator Snapshot::TypeView::At(size_t index) const {
  if (set_ == nullptr) return {};
  const size_t c =
      std::upper_bound(set_->ends.begin(), set_->ends.end(), index) - set_->ends.begin();
  if (c == set_->chunks.size()) return iterator(set_, c, 0);
  return iterator(set_, c, index - (c == 0 ? 0 : set_->ends[c - 1]));
}

Snapshot::TypeView Snapshot::TypeView::Group(std::string_view group) const {
  // A group's instances are the keys with the prefix group + '\x1f': contiguous, and they end
  // before group + '\x20'.
  std::string lo(group), hi(group);
  lo.push_back('\x1f');
  hi.push_back('\x20');
  auto bound = [&](const std::string& probe) {
    size_t a = first_, b = last_;  // first index whose key is >= probe
    while (a < b) {
      const size_t mid = a + (b - a) / 2;
      if (cache::CompareSortKey(**At(mid), probe) < 0) {
        a = mid + 1;
      } else {
        b = mid;
      }
    }
    return a;
  };
  const size_t from = bound(lo);
  return TypeView(set_, from, std::max(from, bound(hi)));
}

std::vector<InstancePtr> Snapshot::TypeView::ToVector() const {
  std::vector<InstancePtr> out;
  out.reserve(size());
  for (const InstancePtr& in : *this) out.push_back(in);
  return out;
}

// ---- Snapshot ----

Snapshot::Snapshot(int64_t revision,
                   std::map<std::string, std::shared_ptr<const TypeSet>, std::less<>> types,
                   uint64_t history)
    : revision_(revision), history_(history), types_(std::move(types)) {
  for (const auto& [name, set] : types_) size_ += set->size();
}

const Snapshot::TypeSet* Snapshot::type_set(std::string_view type) const {
  auto it = types_.find(type);
  return it == types_.end() ? nullptr : it->second.get();
}

std::vector<InstancePtr> Snapshot::All() const {
  std::vector<InstancePtr> out;
  out.reserve(size_);
  for (const auto& [name, set] : types_) {
    for (const InstancePtr& in : TypeView(set.get(), 0, set->size())) out.push_back(in);
  }
  return out;
}

std::vector<InstancePtr> Snapshot::Select(const Filter& filter) const {
  std::vector<InstancePtr> out;
  auto visit = [&](TypeView view) {
    for (const InstancePtr& in : view) {
      if (filter.Matches(*in)) out.push_back(in);
    }
  };
  if (!filter.type.empty()) {
    visit(filter.group.empty() ? OfType(filter.type) : OfGroup(filter.type, filter.group));
  } else {
    for (const auto& [name, set] : types_) visit(TypeView(set.get(), 0, set->size()));
  }
  return out;
}

Snapshot::TypeView Snapshot::OfType(std::string_view type) const {
  const TypeSet* set = type_set(type);
  return set == nullptr ? TypeView() : TypeView(set, 0, set->size());
}

Snapshot::TypeView Snapshot::OfGroup(std::string_view type, std::string_view group) const {
  return OfType(type).Group(group);
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
