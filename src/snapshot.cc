// Snapshot, Filter, ChangeType names and Subscription: the immutable views and handles the
// watcher hands out (nothing here touches etcd).
#include <algorithm>
#include <utility>

#include "absl/container/inlined_vector.h"
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

size_t Snapshot::TypeSet::chunk_count() const {
  size_t n = 0;
  for (const auto& seg : segments) n += seg.ptr->chunks.size();
  return n;
}

std::shared_ptr<const Snapshot::TypeSet> Snapshot::TypeSet::FromSorted(
    const std::vector<InstancePtr>& sorted) {
  // Chunks and segments three quarters full: room for inserts before the first split.
  const size_t per = std::max<size_t>(1, cache::ChunkLimit(sorted.size()) * 3 / 4);
  auto set = std::make_shared<TypeSet>();
  std::shared_ptr<Segment> seg;
  for (size_t i = 0; i < sorted.size(); i += per) {
    if (seg == nullptr || seg->chunks.size() == per) {
      seg = std::make_shared<Segment>();
      set->segments.push_back({seg, set->size(), nullptr});
    }
    auto chunk = std::make_shared<Chunk>();
    const size_t end = std::min(sorted.size(), i + per);
    chunk->items.assign(sorted.begin() + static_cast<std::ptrdiff_t>(i),
                        sorted.begin() + static_cast<std::ptrdiff_t>(end));
    const Instance* last = chunk->items.back().get();
    seg->chunks.push_back({std::move(chunk), seg->size() + (end - i), last});
    set->segments.back().end = end;
    set->segments.back().last = last;
  }
  return set;
}

Snapshot::TypeView::iterator::iterator(const TypeSet* set, size_t seg, size_t chunk, size_t pos)
    : set_(set), seg_(seg), chunk_(chunk), pos_(pos) {
  if (seg_ < set_->segments.size()) items_ = &set_->segments[seg_].ptr->chunks[chunk_].ptr->items;
}

void Snapshot::TypeView::iterator::Next() {
  pos_ = 0;
  if (++chunk_ == set_->segments[seg_].ptr->chunks.size()) {
    chunk_ = 0;
    if (++seg_ == set_->segments.size()) {
      items_ = nullptr;
      return;
    }
  }
  items_ = &set_->segments[seg_].ptr->chunks[chunk_].ptr->items;
}

namespace {
// The first entry of `refs` whose end is above `index`, and `index` relative to it.
template <class T>
std::pair<size_t, size_t> Locate(const std::vector<Snapshot::Ref<T>>& refs, size_t index) {
  const size_t i = std::upper_bound(refs.begin(), refs.end(), index,
                                    [](size_t x, const Snapshot::Ref<T>& r) { return x < r.end; }) -
                   refs.begin();
  return {i, index - (i == 0 ? 0 : refs[i - 1].end)};
}
}  // namespace

Snapshot::TypeView::iterator Snapshot::TypeView::At(size_t index) const {
  if (set_ == nullptr) return {};
  const auto [s, local] = Locate(set_->segments, index);
  if (s == set_->segments.size()) return iterator(set_, s, 0, 0);
  const auto [c, pos] = Locate(set_->segments[s].ptr->chunks, local);
  return iterator(set_, s, c, pos);
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

namespace {
// Type names per block of the snapshot's type directory: a publish copies the block list
// (types / kTypeBlock shared pointers) and each block a change lands in (up to
// 2 x kTypeBlock entries; a block that grows past that is split in two).
constexpr size_t kTypeBlock = 16;
}  // namespace

Snapshot::Snapshot(int64_t revision,
                   std::map<std::string, std::shared_ptr<const TypeSet>, std::less<>> types,
                   uint64_t history)
    : revision_(revision), history_(history) {
  std::shared_ptr<TypeBlock> block;
  for (auto& [name, set] : types) {
    if (set == nullptr || set->size() == 0) continue;
    if (block == nullptr || block->entries.size() == kTypeBlock) {
      block = std::make_shared<TypeBlock>();
      blocks_.push_back(block);
    }
    size_ += set->size();
    block->entries.emplace_back(name, std::move(set));
  }
}

std::shared_ptr<const Snapshot> Snapshot::Patch(
    const Snapshot* prev, int64_t revision, uint64_t history,
    const std::vector<std::pair<std::string, std::shared_ptr<const TypeSet>>>& changed) {
  struct Made : Snapshot {  // (make_shared: one allocation; the constructor is private)
    Made(int64_t r, uint64_t h) : Snapshot(r, h) {}
  };
  std::shared_ptr<Snapshot> out = std::make_shared<Made>(revision, history);
  if (prev != nullptr) {
    out->blocks_ = prev->blocks_;
    out->size_ = prev->size_;
  }
  auto& blocks = out->blocks_;
  // Blocks copied by this patch (inline for a directory of up to 2,048 types).
  absl::InlinedVector<TypeBlock*, 128> owned(blocks.size(), nullptr);
  for (const auto& [name, set] : changed) {
    const bool present = set != nullptr && set->size() > 0;
    // The block whose first name is the last one not after `name` (block 0 for a name before
    // every block): where the name is, or would be inserted.
    auto after =
        std::upper_bound(blocks.begin(), blocks.end(), name,
                         [](const std::string& n, const std::shared_ptr<const TypeBlock>& b) {
                           return n < b->entries.front().first;
                         });
    if (blocks.empty()) {
      if (!present) continue;
      auto first = std::make_shared<TypeBlock>();  // (filled below: no block stays empty)
      owned.push_back(first.get());
      blocks.push_back(std::move(first));
      after = blocks.end();
    }
    const size_t b = after == blocks.begin() ? 0 : static_cast<size_t>(after - blocks.begin()) - 1;
    const auto& shared = blocks[b]->entries;
    auto at = std::lower_bound(shared.begin(), shared.end(), name,
                               [](const auto& e, const std::string& n) { return e.first < n; });
    const bool found = at != shared.end() && at->first == name;
    if (!found && !present) continue;
    const size_t pos = static_cast<size_t>(at - shared.begin());
    if (owned[b] == nullptr) {  // copy-on-write: the previous snapshot keeps its block
      auto copy = std::make_shared<TypeBlock>(*blocks[b]);
      owned[b] = copy.get();
      blocks[b] = std::move(copy);
    }
    auto& entries = owned[b]->entries;
    if (found) out->size_ -= entries[pos].second->size();
    if (found && present) {
      entries[pos].second = set;
    } else if (found) {
      entries.erase(entries.begin() + static_cast<std::ptrdiff_t>(pos));
    } else {
      entries.emplace(entries.begin() + static_cast<std::ptrdiff_t>(pos), name, set);
    }
    if (present) out->size_ += set->size();
    if (entries.empty()) {
      blocks.erase(blocks.begin() + static_cast<std::ptrdiff_t>(b));
      owned.erase(owned.begin() + static_cast<std::ptrdiff_t>(b));
    } else if (entries.size() > 2 * kTypeBlock) {  // split: the upper half into a new block
      auto upper = std::make_shared<TypeBlock>();
      upper->entries.assign(std::make_move_iterator(entries.begin() + kTypeBlock),
                            std::make_move_iterator(entries.end()));
      entries.resize(kTypeBlock);
      owned.insert(owned.begin() + static_cast<std::ptrdiff_t>(b) + 1, upper.get());
      blocks.insert(blocks.begin() + static_cast<std::ptrdiff_t>(b) + 1, std::move(upper));
    }
  }
  return out;
}

const Snapshot::TypeSet* Snapshot::type_set(std::string_view type) const {
  auto after = std::upper_bound(blocks_.begin(), blocks_.end(), type,
                                [](std::string_view t, const std::shared_ptr<const TypeBlock>& b) {
                                  return t < b->entries.front().first;
                                });
  if (after == blocks_.begin()) return nullptr;
  const auto& entries = (*std::prev(after))->entries;
  auto at = std::lower_bound(entries.begin(), entries.end(), type,
                             [](const auto& e, std::string_view t) { return e.first < t; });
  return at != entries.end() && at->first == type ? at->second.get() : nullptr;
}

std::vector<InstancePtr> Snapshot::All() const {
  std::vector<InstancePtr> out;
  out.reserve(size_);
  ForEachType([&](const std::string&, const TypeSet& set) {
    for (const InstancePtr& in : TypeView(&set, 0, set.size())) out.push_back(in);
  });
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
    ForEachType(
        [&](const std::string&, const TypeSet& set) { visit(TypeView(&set, 0, set.size())); });
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
  ForEachType([&](const std::string& name, const TypeSet&) { out.push_back(name); });
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
