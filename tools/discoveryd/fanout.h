// File: tools/discoveryd/fanout.h
//
// The routing half of the SSE fan-out (EventHub, sse.h), without sockets or etcd:
//   - SharedBytes: an immutable, reference-counted byte buffer. A frame is serialised once and
//     the same buffer is queued to every client that gets it (EventStream::SendFrames); it is
//     freed when the last client's socket has taken it.
//   - SubscriberIndex: subscribers by filter, in one of four buckets: every event ("all"),
//     one type, one (type, group), one group of any type. An event visits only the buckets it
//     can match (its type, its group and, for a move, its previous group), so it costs
//     O(matching subscribers), not O(subscribers). match_checks() counts the subscribers
//     visited (the test's and /metrics' proof of that).
//   - RouteRevision: the frames of one revision, per matching subscriber, in order, with the
//     revision's `id:` line (shared too) before the subscriber's LAST frame of the revision.
//
//   SubscriberIndex index;
//   index.Add(7, {"world", "kr-1"});
//   RouteRevision(index, entries, id_line, [&](uint64_t id, std::vector<SharedBytes> frames) {
//     streams[id]->SendFrames(std::move(frames));
//   });
//
// Thread-safety: none; EventHub calls it under its lock.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace discoveryd {

using SharedBytes = std::shared_ptr<const std::string>;

inline SharedBytes MakeShared(std::string bytes) {
  return std::make_shared<const std::string>(std::move(bytes));
}

struct StreamFilter {
  std::string type{};   // empty = every type
  std::string group{};  // empty = every group
};

// One event of a revision, serialised once.
struct FanoutEntry {
  int64_t revision = 0;
  std::string type;
  std::string group;
  std::string previous_group;  // == group unless the instance moved groups
  SharedBytes frame;           // "event: ...\ndata: ...\n\n" (no id line)
};

class SubscriberIndex {
 public:
  void Add(uint64_t id, const StreamFilter& filter);
  void Remove(uint64_t id, const StreamFilter& filter);
  size_t size() const { return size_; }

  // Calls fn(id) once for every subscriber whose filter matches `e`, and for no other.
  void ForEachMatch(const FanoutEntry& e, const std::function<void(uint64_t)>& fn) const;

  // Subscribers visited by ForEachMatch so far (each one matches: nothing else is visited).
  uint64_t match_checks() const { return match_checks_; }

 private:
  using Bucket = std::unordered_set<uint64_t>;
  Bucket* BucketFor(const StreamFilter& filter, bool create);
  void Visit(const Bucket* b, const std::function<void(uint64_t)>& fn) const;
  static std::string TypeGroup(const std::string& type, const std::string& group) {
    std::string k = type;
    k.push_back('\0');
    k += group;
    return k;
  }

  Bucket all_;
  std::unordered_map<std::string, Bucket> by_type_;
  std::unordered_map<std::string, Bucket> by_type_group_;  // key: type '\0' group
  std::unordered_map<std::string, Bucket> by_group_;       // a group of any type
  size_t size_ = 0;
  mutable uint64_t match_checks_ = 0;
};

// Routes one revision's entries (all of the same revision, in dispatch order): for every
// subscriber matching at least one, calls send(id, frames) with its matching frames in order
// and `id_line` right before the last of them.
void RouteRevision(const SubscriberIndex& index, const std::vector<FanoutEntry>& entries,
                   const SharedBytes& id_line,
                   const std::function<void(uint64_t, std::vector<SharedBytes>)>& send);

}  // namespace discoveryd
