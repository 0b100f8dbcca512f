// The watcher cache's per-type persistent sorted structure: see cache_typeset.h.
#include "cache_typeset.h"

#include <algorithm>
#include <utility>

namespace discovery::cache {

namespace {
constexpr size_t kCopySlack = 4;  // spare slots in a chunk copied for a change
constexpr size_t kChunkMin = 32;  // the smallest split limit (ChunkLimit)

// Byte i of the sort key group + '\x1f' + instanceId, or -1 past its end.
int KeyAt(const Instance& x, size_t i) {
  if (i < x.group.size()) return static_cast<unsigned char>(x.group[i]);
  if (i == x.group.size()) return 0x1f;
  i -= x.group.size() + 1;
  return i < x.instance_id.size() ? static_cast<unsigned char>(x.instance_id[i]) : -1;
}
size_t KeySize(const Instance& x) { return x.group.size() + 1 + x.instance_id.size(); }
}  // namespace

size_t ChunkLimit(size_t n) {
  size_t limit = kChunkMin;
  while (limit < Snapshot::kChunkMax && limit * limit < n) limit *= 2;
  return limit;
}

KeyRef SplitKey(std::string_view rest) {
  const size_t slash = rest.find('/');
  if (slash == std::string_view::npos) return {rest, {}};
  return {rest.substr(0, slash), rest.substr(slash + 1)};
}

bool SortsBefore(const Instance& a, const Instance& b) {
  // Byte-wise over group + '\x1f' + instanceId, without building either key: equal groups
  // (the common case) compare by instanceId (string_view order is unsigned byte order);
  // groups that differ within their common length decide by that byte. Only a group that is a
  // prefix of the other needs the separator, compared like any other byte.
  const std::string_view ga(a.group), gb(b.group);
  if (ga == gb) return std::string_view(a.instance_id) < std::string_view(b.instance_id);
  const size_t common = std::min(ga.size(), gb.size());
  if (const int c = ga.substr(0, common).compare(gb.substr(0, common)); c != 0) return c < 0;
  const size_t n = std::max(KeySize(a), KeySize(b));
  for (size_t i = common; i < n; ++i) {
    const int ca = KeyAt(a, i), cb = KeyAt(b, i);
    if (ca != cb) return ca < cb;
  }
  return false;
}

bool SameSortKey(const Instance& a, const Instance& b) {
  return a.group == b.group && a.instance_id == b.instance_id;
}

int CompareSortKey(const Instance& x, std::string_view probe) {
  const size_t n = std::max(KeySize(x), probe.size());
  for (size_t i = 0; i < n; ++i) {
    const int cx = KeyAt(x, i);
    const int cp = i < probe.size() ? static_cast<unsigned char>(probe[i]) : -1;
    if (cx != cp) return cx < cp ? -1 : 1;
  }
  return 0;
}

TypeSetBuilder::TypeSetBuilder(std::shared_ptr<const Snapshot::TypeSet> base)
    : base_(std::move(base)) {
  if (base_ == nullptr) return;
  chunks_ = base_->chunks;
  owned_.assign(chunks_.size(), false);
  size_ = base_->size();
}

void TypeSetBuilder::Mark(size_t c) {
  dirty_lo_ = std::min(dirty_lo_, c);
  dirty_hi_ = std::max(dirty_hi_, c + 1);
}

void TypeSetBuilder::Inserted(size_t c) {
  // The chunks after it moved up by one: the range grows by one (and covers `c`).
  dirty_lo_ = std::min(dirty_lo_, c);
  dirty_hi_ = std::max(dirty_hi_, c) + 1;
}

void TypeSetBuilder::Removed(size_t c) {
  Mark(c);
  --dirty_hi_;
}

size_t TypeSetBuilder::ChunkFor(const Instance& in) const {
  return std::partition_point(chunks_.begin(), chunks_.end(),
                              [&](const std::shared_ptr<const Snapshot::Chunk>& c) {
                                return SortsBefore(*c->items.back(), in);
                              }) -
         chunks_.begin();
}

std::vector<InstancePtr>& TypeSetBuilder::Mutable(size_t c) {
  if (!owned_[c]) {
    // Room for a few inserts: a copy of exactly size() would double its capacity (and keep
    // that waste in the published snapshot) at the first insert.
    auto copy = std::make_shared<Snapshot::Chunk>();
    copy->items.reserve(chunks_[c]->items.size() + kCopySlack);
    copy->items = chunks_[c]->items;
    chunks_[c] = std::move(copy);
    owned_[c] = true;
    ++copied_;
    Mark(c);
  }
  // Created by this builder as non-const and not published yet: writing it is ours to do.
  return const_cast<Snapshot::Chunk&>(*chunks_[c]).items;
}

void TypeSetBuilder::Erase(const Instance& in) {
  const size_t c = ChunkFor(in);
  if (c == chunks_.size()) return;
  const auto& items = chunks_[c]->items;
  auto it =
      std::lower_bound(items.begin(), items.end(), in,
                       [](const InstancePtr& x, const Instance& y) { return SortsBefore(*x, y); });
  if (it == items.end() || !SameSortKey(**it, in)) return;
  const size_t pos = it - items.begin();
  std::vector<InstancePtr>& v = Mutable(c);
  v.erase(v.begin() + static_cast<std::ptrdiff_t>(pos));
  --size_;
  if (v.empty()) {
    chunks_.erase(chunks_.begin() + static_cast<std::ptrdiff_t>(c));
    owned_.erase(owned_.begin() + static_cast<std::ptrdiff_t>(c));
    Removed(c);
    return;
  }
  // Deletes must not leave a trail of tiny chunks: join a small chunk with its successor.
  const size_t limit = ChunkLimit(size_);
  if (v.size() < limit / 8 && c + 1 < chunks_.size() &&
      v.size() + chunks_[c + 1]->items.size() <= limit) {
    const auto& next = chunks_[c + 1]->items;
    v.insert(v.end(), next.begin(), next.end());
    chunks_.erase(chunks_.begin() + static_cast<std::ptrdiff_t>(c + 1));
    owned_.erase(owned_.begin() + static_cast<std::ptrdiff_t>(c + 1));
    Removed(c + 1);
  }
}

void TypeSetBuilder::Upsert(InstancePtr in) {
  if (chunks_.empty()) {
    auto chunk = std::make_shared<Snapshot::Chunk>();
    chunk->items.push_back(std::move(in));
    chunks_.push_back(std::move(chunk));
    owned_.push_back(true);
    Inserted(0);
    ++size_;
    return;
  }
  size_t c = std::min(ChunkFor(*in), chunks_.size() - 1);  // past the end: append to the last
  const auto& items = chunks_[c]->items;
  auto it =
      std::lower_bound(items.begin(), items.end(), *in,
                       [](const InstancePtr& x, const Instance& y) { return SortsBefore(*x, y); });
  const size_t pos = it - items.begin();
  if (it != items.end() && SameSortKey(**it, *in)) {
    ReplaceAt(c, pos, std::move(in));
    return;
  }
  std::vector<InstancePtr>& v = Mutable(c);
  const size_t limit = ChunkLimit(size_);
  v.insert(v.begin() + static_cast<std::ptrdiff_t>(pos), std::move(in));
  ++size_;
  if (v.size() > limit) Split(c);
}

void TypeSetBuilder::Replace(const Instance& prev, InstancePtr next) {
  const size_t c = ChunkFor(*next);
  if (c < chunks_.size()) {
    const auto& items = chunks_[c]->items;
    // A linear scan of at most kChunkMax adjacent pointers: no instance is read.
    for (size_t pos = 0; pos < items.size(); ++pos) {
      if (items[pos].get() != &prev) continue;
      ReplaceAt(c, pos, std::move(next));
      return;
    }
  }
  Upsert(std::move(next));
}

void TypeSetBuilder::ReplaceAt(size_t c, size_t pos, InstancePtr in) {
  std::vector<InstancePtr>& v = Mutable(c);
  v[pos] = std::move(in);
  // A chunk from when the type was larger (or made by FromSorted) is cut down to this size at
  // its next change: only far over the limit, so that a replace rarely splits.
  if (v.size() > 2 * ChunkLimit(size_)) Split(c);
}

void TypeSetBuilder::Split(size_t c) {
  std::vector<InstancePtr>& v = Mutable(c);
  auto upper = std::make_shared<Snapshot::Chunk>();
  const auto half = v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2);
  upper->items.assign(std::make_move_iterator(half), std::make_move_iterator(v.end()));
  v.erase(half, v.end());
  v.shrink_to_fit();  // (a split chunk would keep twice the slots it holds)
  chunks_.insert(chunks_.begin() + static_cast<std::ptrdiff_t>(c + 1), std::move(upper));
  owned_.insert(owned_.begin() + static_cast<std::ptrdiff_t>(c + 1), true);
  Inserted(c + 1);
}

std::shared_ptr<const Snapshot::TypeSet> TypeSetBuilder::Finish() {
  if (size_ == 0) return nullptr;
  auto set = std::make_shared<Snapshot::TypeSet>();
  const size_t n = chunks_.size();
  set->ends.resize(n);
  // Only the chunks in [lo, hi) are read (every chunk copied, split, merged or inserted is in
  // it): a publish costs O(changed chunks), not a read of every chunk of the type.
  const size_t lo = std::min(dirty_lo_, n), hi = std::min(std::max(dirty_hi_, lo), n);
  for (size_t i = 0; i < lo; ++i) set->ends[i] = base_->ends[i];
  size_t total = lo == 0 ? 0 : set->ends[lo - 1];
  for (size_t i = lo; i < hi; ++i) {
    const auto& c = chunks_[i];
    // Published chunks hold 16 B per instance: no more than a little spare capacity (a
    // type's 100,000 instances grown by inserts would otherwise keep up to 3x that).
    if (owned_[i] && c->items.capacity() > c->items.size() + c->items.size() / 8 + kCopySlack) {
      const_cast<Snapshot::Chunk&>(*c).items.shrink_to_fit();  // ours until published
    }
    total += c->items.size();
    set->ends[i] = total;
  }
  if (hi < n) {  // untouched base chunks, moved by the chunks inserted or removed before them
    const size_t base_n = base_->chunks.size(), base_size = base_->size();
    for (size_t i = hi; i < n; ++i) {
      set->ends[i] = base_->ends[i + base_n - n] + size_ - base_size;  // (unsigned wrap-around)
    }
  }
  set->chunks = std::move(chunks_);
  chunks_.clear();
  owned_.clear();
  base_ = nullptr;
  dirty_lo_ = SIZE_MAX;
  dirty_hi_ = 0;
  size_ = 0;
  return set;
}

}  // namespace discovery::cache
