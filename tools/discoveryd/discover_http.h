// File: tools/discoveryd/discover_http.h
//
// `GET /sd/v1/instances?type=&group=&status=` (discover without healthCheck) over HTTP:
//
//   - answered from DiscoverCache (discover_cache.h): the body encoded once per (snapshot,
//     filter) and written without a copy; `ETag: "<epoch>-<revision>"` (the gzip body:
//     "<epoch>-<revision>-gzip"), `If-None-Match` naming it -> 304 without a body;
//     `Cache-Control: no-cache`, `Vary: Accept-Encoding`, `X-Discovery-Index`.
//   - gzip when Accept-Encoding allows it and the body is >= kMinGzipBytes, compressed once.
//   - blocking query: `&waitIndex=REV[&wait=30s]` answers as soon as the MATCHING set has
//     changed after REV (X-Discovery-Index > REV), or after `wait` (default and maximum 5 min)
//     with the unchanged set. At most `max_waiting` requests wait at once; past it 503 +
//     Retry-After. A waitIndex above the current revision (another history, another replica
//     ahead) answers at once. X-Discovery-Index is the revision at which this filter's
//     matching set last changed as far as this replica knows: after a restart (or the cache
//     evicting the filter) it is the current revision, so a waiter may wake once without a
//     change (as Consul's blocking queries may): compare the body, wait again.
//   - a body that is not cached yet (new snapshot, new filter) and a first gzip are built on
//     the caller-given worker executor, never on an io thread; a hit is answered on the io
//     thread. Waiters are checked on one thread of this class, on every watcher change and
//     at their deadlines (util::MonoNow).
//
// Thread-safety: thread-safe. Start() once, Stop() before the watcher goes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "discover_cache.h"
#include "discovery/watcher.h"
#include "http_message.h"
#include "router.h"
#include "util/sync.h"

namespace discoveryd {

inline constexpr absl::Duration kMaxBlockingWait = absl::Minutes(5);

class DiscoverEndpoint {
 public:
  struct Options {
    size_t max_entries = 1024;             // cached filters (LRU)
    size_t max_bytes = size_t{256} << 20;  // identity bodies cached (LRU)
    size_t max_waiting = 4096;             // blocking queries waiting at once; past it 503
  };
  // What the request asked for, from its headers.
  struct Request {
    ListCall call;
    bool gzip = false;          // Accept-Encoding allows gzip
    std::string if_none_match;  // empty when absent
  };
  using Reply = std::function<void(HttpResponse)>;
  using Post = std::function<void(std::function<void()>)>;  // runs work off the io threads

  DiscoverEndpoint(discovery::Watcher* watcher, std::function<std::string()> epoch,
                   Post post_to_worker, Options options);
  ~DiscoverEndpoint();
  void Start();
  // Answers every waiting request (with the current set) and joins the thread. Idempotent.
  void Stop();

  // Answers `request` through `reply`, exactly once: at once from the cache when it can,
  // else from a worker, or later (blocking query).
  void Handle(Request request, Reply reply);

  // Prometheus text lines: discovery_http_discover_cache_{hits,misses,evictions,
  // too_large}_total, _entries, _bytes, _max_bytes, discovery_http_discover_gzip_encoded_total,
  // discovery_http_blocking_{waiting,max_waiting}, discovery_http_blocking_{total,changed_total,
  // timeouts_total,refused_total}.
  std::string RenderMetrics() const;

  struct Stats {
    size_t waiting = 0;
    uint64_t blocking = 0;  // blocking queries accepted
    uint64_t changed = 0;   // answered because the matching set changed
    uint64_t timeouts = 0;  // answered at `wait`
    uint64_t refused = 0;   // over max_waiting
  };
  Stats stats() const;
  DiscoverCache::Stats cache_stats() const { return cache_.stats(); }

 private:
  struct Waiter {
    Request request;
    Reply reply;
    absl::Time deadline;  // util::MonoNow() based
  };
  // The response for `request` from `entry` (304, gzip or identity).
  static HttpResponse Respond(const Request& request, const DiscoverEntry& entry);
  // True when a blocking `request` can be answered with `entry` now.
  static bool Changed(const Request& request, const DiscoverEntry& entry);
  void Build(Request request, Reply reply);
  void Loop();

  discovery::Watcher* watcher_;
  std::function<std::string()> epoch_;
  Post post_;
  Options options_;
  DiscoverCache cache_;
  discovery::Subscription changes_;
  discovery::Subscription resets_;
  std::thread thread_;

  mutable discovery::util::Mutex mu_;
  std::vector<Waiter> waiting_ ABSL_GUARDED_BY(mu_);
  std::vector<Waiter> fresh_ ABSL_GUARDED_BY(mu_);  // added since the last round
  size_t checking_ ABSL_GUARDED_BY(mu_) = 0;        // taken out by the loop's current round
  bool changed_ ABSL_GUARDED_BY(mu_) = false;       // the watcher published since
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  Stats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace discoveryd
