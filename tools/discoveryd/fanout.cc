#include "fanout.h"

#include <utility>

namespace discoveryd {

SubscriberIndex::Bucket* SubscriberIndex::BucketFor(const StreamFilter& f, bool create) {
  std::unordered_map<std::string, Bucket>* map = nullptr;
  std::string key;
  if (f.type.empty() && f.group.empty()) return &all_;
  if (f.group.empty()) {
    map = &by_type_;
    key = f.type;
  } else if (f.type.empty()) {
    map = &by_group_;
    key = f.group;
  } else {
    map = &by_type_group_;
    key = TypeGroup(f.type, f.group);
  }
  if (create) return &(*map)[key];
  auto it = map->find(key);
  return it == map->end() ? nullptr : &it->second;
}

void SubscriberIndex::Add(uint64_t id, const StreamFilter& filter) {
  if (BucketFor(filter, true)->insert(id).second) ++size_;
}

void SubscriberIndex::Remove(uint64_t id, const StreamFilter& filter) {
  Bucket* b = BucketFor(filter, false);
  if (b == nullptr || b->erase(id) == 0) return;
  --size_;
  if (b->empty() && b != &all_) {
    // Drop the empty bucket: filters made up by clients must not pile up.
    if (filter.group.empty()) {
      by_type_.erase(filter.type);
    } else if (filter.type.empty()) {
      by_group_.erase(filter.group);
    } else {
      by_type_group_.erase(TypeGroup(filter.type, filter.group));
    }
  }
}

void SubscriberIndex::Visit(const Bucket* b, const std::function<void(uint64_t)>& fn) const {
  if (b == nullptr) return;
  match_checks_ += b->size();
  for (uint64_t id : *b) fn(id);
}

void SubscriberIndex::ForEachMatch(const FanoutEntry& e,
                                   const std::function<void(uint64_t)>& fn) const {
  auto find = [](const std::unordered_map<std::string, Bucket>& m,
                 const std::string& k) -> const Bucket* {
    auto it = m.find(k);
    return it == m.end() ? nullptr : &it->second;
  };
  Visit(&all_, fn);
  Visit(find(by_type_, e.type), fn);
  Visit(find(by_type_group_, TypeGroup(e.type, e.group)), fn);
  Visit(find(by_group_, e.group), fn);
  if (e.previous_group != e.group) {
    // A move between groups: the old group's subscribers see it (as its last state there).
    Visit(find(by_type_group_, TypeGroup(e.type, e.previous_group)), fn);
    Visit(find(by_group_, e.previous_group), fn);
  }
}

void RouteRevision(const SubscriberIndex& index, const std::vector<FanoutEntry>& entries,
                   const SharedBytes& id_line,
                   const std::function<void(uint64_t, std::vector<SharedBytes>)>& send) {
  if (entries.size() == 1) {
    // The common case (one key per revision): no per-revision bookkeeping.
    const SharedBytes& frame = entries.front().frame;
    index.ForEachMatch(entries.front(), [&](uint64_t id) {
      send(id, std::vector<SharedBytes>{id_line, frame});
    });
    return;
  }
  // Several keys in one revision (a Txn, a lease revoke): each subscriber's matching entries,
  // in order; subscribers in first-match order.
  std::unordered_map<uint64_t, std::vector<uint32_t>> matched;
  std::vector<uint64_t> order;
  for (uint32_t i = 0; i < entries.size(); ++i) {
    index.ForEachMatch(entries[i], [&](uint64_t id) {
      auto [it, fresh] = matched.try_emplace(id);
      if (fresh) order.push_back(id);
      it->second.push_back(i);
    });
  }
  for (uint64_t id : order) {
    const std::vector<uint32_t>& idx = matched[id];
    std::vector<SharedBytes> frames;
    frames.reserve(idx.size() + 1);
    for (size_t k = 0; k < idx.size(); ++k) {
      if (k + 1 == idx.size()) frames.push_back(id_line);
      frames.push_back(entries[idx[k]].frame);
    }
    send(id, std::move(frames));
  }
}

}  // namespace discoveryd
