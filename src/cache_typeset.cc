// The watcher cache's per-type persistent sorted structure: see cache_typeset.h.
#include "cache_typeset.h"

#include <algorithm>
#include <utility>

namespace discovery::cache {

namespace {
constexpr size_t kCopySlack = 4;     // spare slots in a chunk copied for a change
constexpr size_t kChunkMin = 16;     // the smallest split limit (ChunkLimit)
constexpr size_t kOwnedListed = 16;  // owned segments and chunks kept in a list, not a set

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
  while (limit < Snapshot::kChunkMax && limit * limit * limit < n) limit *= 2;
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

TypeSetBuilder::TypeSetBuilder(std::shared_ptr<const Snapshot::TypeSet> base) {
  if (base != nullptr) segs_ = base->segments;
}

bool TypeSetBuilder::Owned(const void* p) const {
  if (!owned_many_.empty()) return owned_many_.contains(p);
  return std::find(owned_.begin(), owned_.end(), p) != owned_.end();
}

void TypeSetBuilder::Own(const void* p) {
  if (owned_many_.empty() && owned_.size() < kOwnedListed) {
    owned_.push_back(p);
    return;
  }
  if (owned_many_.empty()) owned_many_.insert(owned_.begin(), owned_.end());
  owned_many_.insert(p);
}

namespace {
template <class T>
size_t FirstNotBefore(const std::vector<Snapshot::Ref<T>>& refs, const Instance& in) {
  return std::partition_point(refs.begin(), refs.end(),
                              [&](const Snapshot::Ref<T>& r) { return SortsBefore(*r.last, in); }) -
         refs.begin();
}
// Moves refs[keep..] to the end of `out` (ends rebased to start from 0).
template <class T>
void MoveTail(std::vector<Snapshot::Ref<T>>& refs, size_t keep,
              std::vector<Snapshot::Ref<T>>& out) {
  const size_t below = keep == 0 ? 0 : refs[keep - 1].end;
  for (size_t i = keep; i < refs.size(); ++i) {
    out.push_back({std::move(refs[i].ptr), refs[i].end - below, refs[i].last});
  }
  refs.erase(refs.begin() + static_cast<std::ptrdiff_t>(keep), refs.end());
}
// Appends `from` to `refs` (ends rebased to follow refs' last).
template <class T>
void Append(std::vector<Snapshot::Ref<T>>& refs, const std::vector<Snapshot::Ref<T>>& from) {
  const size_t base = refs.empty() ? 0 : refs.back().end;
  for (const auto& r : from) refs.push_back({r.ptr, base + r.end, r.last});
}
// Removes refs[i + 1] after its content joined refs[i]: refs[i] now ends where it did.
template <class T>
void Joined(std::vector<Snapshot::Ref<T>>& refs, size_t i) {
  refs[i].end = refs[i + 1].end;
  refs[i].last = refs[i + 1].last;
  refs.erase(refs.begin() + static_cast<std::ptrdiff_t>(i + 1));
}
}  // namespace

TypeSetBuilder::Loc TypeSetBuilder::ChunkFor(const Instance& in) const {
  const size_t s = FirstNotBefore(segs_, in);
  if (s == segs_.size()) return {s, 0};
  return {s, FirstNotBefore(segs_[s].ptr->chunks, in)};
}

Snapshot::Segment& TypeSetBuilder::MutableSegment(size_t s) {
  if (!Owned(segs_[s].ptr.get())) {
    auto copy = std::make_shared<Segment>();
    copy->chunks.reserve(segs_[s].ptr->chunks.size() + 1);  // (room for one split)
    copy->chunks = segs_[s].ptr->chunks;
    Own(copy.get());
    segs_[s].ptr = std::move(copy);
  }
  // Created by this builder as non-const and not published yet: writing it is ours to do.
  return const_cast<Segment&>(*segs_[s].ptr);
}

std::vector<InstancePtr>& TypeSetBuilder::MutableChunk(size_t s, size_t c) {
  Segment& seg = MutableSegment(s);
  auto& ref = seg.chunks[c];
  if (!Owned(ref.ptr.get())) {
    // Room for a few inserts: a copy of exactly size() would double its capacity (and keep
    // that waste in the published snapshot) at the first insert.
    auto copy = std::make_shared<Chunk>();
    copy->items.reserve(ref.ptr->items.size() + kCopySlack);
    copy->items = ref.ptr->items;
    Own(copy.get());
    ref.ptr = std::move(copy);
    ++copied_;
  }
  return const_cast<Chunk&>(*ref.ptr).items;  // (ours, as above)
}

void TypeSetBuilder::Resized(size_t s, size_t c, std::ptrdiff_t delta) {
  Segment& seg = MutableSegment(s);
  for (size_t i = c; i < seg.chunks.size(); ++i) seg.chunks[i].end += delta;
  for (size_t i = s; i < segs_.size(); ++i) segs_[i].end += delta;
  const auto& items = seg.chunks[c].ptr->items;
  if (items.empty()) return;  // (RemoveChunk follows)
  seg.chunks[c].last = items.back().get();
  if (c + 1 == seg.chunks.size()) segs_[s].last = seg.chunks[c].last;
}

void TypeSetBuilder::Erase(const Instance& in) {
  const auto [s, c] = ChunkFor(in);
  if (s == segs_.size()) return;
  const auto& items = segs_[s].ptr->chunks[c].ptr->items;
  auto it =
      std::lower_bound(items.begin(), items.end(), in,
                       [](const InstancePtr& x, const Instance& y) { return SortsBefore(*x, y); });
  if (it == items.end() || !SameSortKey(**it, in)) return;
  const size_t pos = it - items.begin();
  std::vector<InstancePtr>& v = MutableChunk(s, c);
  v.erase(v.begin() + static_cast<std::ptrdiff_t>(pos));
  Resized(s, c, -1);
  if (v.empty()) {
    RemoveChunk(s, c);
  } else {
    MaybeMerge(s, c);
  }
}

void TypeSetBuilder::RemoveChunk(size_t s, size_t c) {
  Segment& seg = MutableSegment(s);
  // Its end equals its predecessor's (it holds nothing): the others stay right.
  seg.chunks.erase(seg.chunks.begin() + static_cast<std::ptrdiff_t>(c));
  if (seg.chunks.empty()) {
    segs_.erase(segs_.begin() + static_cast<std::ptrdiff_t>(s));
    if (!segs_.empty()) MergeSegment(std::min(s, segs_.size() - 1));
    return;
  }
  segs_[s].last = seg.chunks.back().last;
  MaybeMerge(s, std::min(c, seg.chunks.size() - 1));
}

// Deletes must not leave a trail of tiny chunks or segments: a small one joins its
// predecessor or its successor (a chunk within its segment) when the two fit in one.
void TypeSetBuilder::MaybeMerge(size_t s, size_t c) {
  const size_t limit = ChunkLimit(size());
  const auto& chunks = segs_[s].ptr->chunks;
  auto items = [&](size_t i) { return chunks[i].ptr->items.size(); };
  const size_t have = items(c);
  if (have < limit / 8) {
    size_t into = SIZE_MAX;  // the first of the two joined
    if (c > 0 && items(c - 1) + have <= limit) {
      into = c - 1;
    } else if (c + 1 < chunks.size() && have + items(c + 1) <= limit) {
      into = c;
    }
    if (into != SIZE_MAX) {
      std::vector<InstancePtr>& v = MutableChunk(s, into);  // (may replace `chunks`)
      Segment& seg = MutableSegment(s);
      const auto& next = seg.chunks[into + 1].ptr->items;
      v.insert(v.end(), next.begin(), next.end());
      Joined(seg.chunks, into);
    }
  }
  MergeSegment(s);
}

void TypeSetBuilder::MergeSegment(size_t s) {
  const size_t limit = ChunkLimit(size());
  auto chunks = [&](size_t i) { return segs_[i].ptr->chunks.size(); };
  const size_t have = chunks(s);
  if (have >= limit / 8) return;
  size_t into = SIZE_MAX;
  if (s > 0 && chunks(s - 1) + have <= limit) {
    into = s - 1;
  } else if (s + 1 < segs_.size() && have + chunks(s + 1) <= limit) {
    into = s;
  }
  if (into == SIZE_MAX) return;
  Append(MutableSegment(into).chunks, segs_[into + 1].ptr->chunks);
  Joined(segs_, into);
}

void TypeSetBuilder::Upsert(InstancePtr in) {
  if (segs_.empty()) {
    auto chunk = std::make_shared<Chunk>();
    auto seg = std::make_shared<Segment>();
    const Instance* last = in.get();
    chunk->items.push_back(std::move(in));
    Own(chunk.get());
    Own(seg.get());
    seg->chunks.push_back({std::move(chunk), 1, last});
    segs_.push_back({std::move(seg), 1, last});
    return;
  }
  auto [s, c] = ChunkFor(*in);
  if (s == segs_.size()) {  // past the end: append to the last chunk
    s = segs_.size() - 1;
    c = segs_[s].ptr->chunks.size() - 1;
  }
  const auto& items = segs_[s].ptr->chunks[c].ptr->items;
  auto it =
      std::lower_bound(items.begin(), items.end(), *in,
                       [](const InstancePtr& x, const Instance& y) { return SortsBefore(*x, y); });
  const size_t pos = it - items.begin();
  if (it != items.end() && SameSortKey(**it, *in)) {
    ReplaceAt(s, c, pos, std::move(in));
    return;
  }
  std::vector<InstancePtr>& v = MutableChunk(s, c);
  v.insert(v.begin() + static_cast<std::ptrdiff_t>(pos), std::move(in));
  Resized(s, c, 1);
  if (v.size() > ChunkLimit(size())) {
    // Appending past the type's last instance (a sync in key order, one group) starts a new
    // chunk and leaves the full one full; halves would leave every chunk half empty.
    const bool append =
        s + 1 == segs_.size() && c + 1 == segs_[s].ptr->chunks.size() && pos + 1 == v.size();
    SplitChunk(s, c, append ? v.size() - 1 : v.size() / 2);
  }
}

void TypeSetBuilder::Replace(const Instance& prev, InstancePtr next) {
  const auto [s, c] = ChunkFor(*next);
  if (s < segs_.size()) {
    const auto& items = segs_[s].ptr->chunks[c].ptr->items;
    // A linear scan of at most kChunkMax adjacent pointers: no instance is read.
    for (size_t pos = 0; pos < items.size(); ++pos) {
      if (items[pos].get() != &prev) continue;
      ReplaceAt(s, c, pos, std::move(next));
      return;
    }
  }
  Upsert(std::move(next));
}

void TypeSetBuilder::ReplaceAt(size_t s, size_t c, size_t pos, InstancePtr in) {
  std::vector<InstancePtr>& v = MutableChunk(s, c);
  v[pos] = std::move(in);
  // The replaced instance may be freed with the old snapshot: no `last` may point at it.
  if (pos + 1 == v.size()) Resized(s, c, 0);
  // A chunk or segment from when the type was larger (or made by FromSorted) is cut down to
  // this size at its next change: only far over the limit, so that a replace rarely splits.
  const size_t limit = ChunkLimit(size());
  if (v.size() > 2 * limit) {
    SplitChunk(s, c, v.size() / 2);
  } else if (segs_[s].ptr->chunks.size() > 2 * limit) {
    SplitSegment(s, segs_[s].ptr->chunks.size() / 2);
  }
}

void TypeSetBuilder::SplitChunk(size_t s, size_t c, size_t keep) {
  std::vector<InstancePtr>& v = MutableChunk(s, c);
  Segment& seg = MutableSegment(s);
  auto upper = std::make_shared<Chunk>();
  const auto cut = v.begin() + static_cast<std::ptrdiff_t>(keep);
  upper->items.assign(std::make_move_iterator(cut), std::make_move_iterator(v.end()));
  v.erase(cut, v.end());
  v.shrink_to_fit();  // (a split chunk would keep twice the slots it holds)
  const bool tail = upper->items.size() == 1 && s + 1 == segs_.size() && c + 1 == seg.chunks.size();
  Snapshot::Ref<Chunk> ref{std::move(upper), seg.chunks[c].end, seg.chunks[c].last};
  seg.chunks[c].end -= ref.ptr->items.size();
  seg.chunks[c].last = v.back().get();
  Own(ref.ptr.get());
  seg.chunks.insert(seg.chunks.begin() + static_cast<std::ptrdiff_t>(c + 1), std::move(ref));
  if (seg.chunks.size() > ChunkLimit(size())) {
    // An append's new chunk (see Upsert) starts a new segment alone.
    SplitSegment(s, tail ? seg.chunks.size() - 1 : seg.chunks.size() / 2);
  }
}

void TypeSetBuilder::SplitSegment(size_t s, size_t keep) {
  Segment& seg = MutableSegment(s);
  auto upper = std::make_shared<Segment>();
  MoveTail(seg.chunks, keep, upper->chunks);
  Snapshot::Ref<Segment> ref{nullptr, segs_[s].end, segs_[s].last};
  segs_[s].end -= upper->size();
  segs_[s].last = seg.chunks.back().last;
  Own(upper.get());
  ref.ptr = std::move(upper);
  segs_.insert(segs_.begin() + static_cast<std::ptrdiff_t>(s + 1), std::move(ref));
}

std::shared_ptr<const Snapshot::TypeSet> TypeSetBuilder::Finish() {
  if (size() == 0) return nullptr;
  // Published chunks hold 16 B per instance: no more than a little spare capacity (a type's
  // 100,000 instances grown by inserts would otherwise keep up to 3x that). Only the
  // segments this builder made are visited: a publish stays O(changed).
  for (const auto& seg : segs_) {
    if (!Owned(seg.ptr.get())) continue;
    for (const auto& c : seg.ptr->chunks) {
      const size_t n = c.ptr->items.size();
      if (c.ptr->items.capacity() > n + n / 8 + kCopySlack && Owned(c.ptr.get())) {
        const_cast<Chunk&>(*c.ptr).items.shrink_to_fit();  // ours until published
      }
    }
  }
  auto set = std::make_shared<Snapshot::TypeSet>();
  set->segments = std::move(segs_);
  segs_.clear();
  owned_.clear();
  owned_many_.clear();
  return set;
}

}  // namespace discovery::cache
