// File: tools/discoveryd/discover_cache.h
//
// Discover answers (`GET /sd/v1/instances?type=&group=&status=`) encoded once per (snapshot,
// filter) and shared: every request for the same filter at the same snapshot writes the same
// immutable buffer (HttpResponse::shared_body, no copy), gzip-compressed at most once.
//
//   DiscoverCache cache({.max_entries = 1024});
//   std::shared_ptr<const DiscoverEntry> e = cache.Get(snapshot, epoch, filter);  // builds on miss
//   e->etag        // "\"<epoch>-<revision>\"" (strong; the gzip body has "-gzip" before the quote)
//   e->index       // the revision at which this filter's matching set last changed (blocking
//                  // queries: X-Discovery-Index)
//   e->Gzip()      // the gzip body, compressed on first use (null for bodies < kMinGzipBytes)
//
// The body is `{"instances":[...],"revision":N}` (the format discover always had). Bounded:
// at most `max_entries` filters (client input) and `max_bytes` of identity bodies (a few whole
// types of 100,000 instances are ~47 MB each; gzip copies add ~2 %), least recently used
// evicted. An answer larger than `max_bytes` on its own is served but not kept (counted). An entry
// is valid for one snapshot (same history and revision); the next one for the same filter compares
// its instances with the previous body to keep `index` when the matching set did not change.
//
// Thread-safety: thread-safe.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include "discovery/watcher.h"
#include "http_message.h"

namespace discoveryd {

// Bodies smaller than this are never compressed (the gzip header costs more than it saves).
inline constexpr size_t kMinGzipBytes = 1024;

// `body` gzip-compressed (RFC 1952), or an empty string when zlib fails.
std::string GzipCompress(std::string_view body);
// True when an Accept-Encoding value allows gzip (a "gzip" or "*" coding with q > 0).
bool AcceptsGzip(std::string_view accept_encoding);

class DiscoverEntry {
 public:
  // The snapshot it was built from, by (history, revision): no snapshot is kept alive.
  uint64_t history = 0;
  std::string key;             // the filter's cache key
  std::string epoch;           // the SSE epoch when built (ETag)
  int64_t revision = 0;        // the snapshot's revision
  int64_t index = 0;           // revision at which the matching set last changed
  size_t instances_bytes = 0;  // body prefix `{"instances":[...]` (for comparison)
  SharedBody body;
  std::string etag;       // "\"<epoch>-<revision>\""
  std::string gzip_etag;  // "\"<epoch>-<revision>-gzip\""

  // The gzip body (compressed on first call, then shared); null when the body is too small.
  SharedBody Gzip() const;
  bool gzip_ready() const;
  // True when an If-None-Match value names this entry (either representation, weak or not,
  // or "*").
  bool Matches(std::string_view if_none_match) const;

 private:
  friend class DiscoverCache;
  std::atomic<uint64_t>* gzip_counter_ = nullptr;  // the cache's
  mutable std::once_flag gzip_once_;
  mutable SharedBody gzip_;
  mutable std::atomic<bool> gzip_done_{false};
};

class DiscoverCache {
 public:
  struct Options {
    size_t max_entries = 1024;
    size_t max_bytes = size_t{256} << 20;  // identity bodies held
  };
  struct Stats {
    uint64_t hits = 0;
    uint64_t misses = 0;     // entries built (new filter or new snapshot)
    uint64_t evictions = 0;  // filters dropped by the LRU bounds (entries or bytes)
    uint64_t too_large = 0;  // answers over max_bytes on their own: served, not kept
    uint64_t gzip_encoded = 0;
    size_t entries = 0;
    size_t bytes = 0;  // bodies held (identity + gzip)
  };
  static std::string Key(const discovery::Filter& filter);

  explicit DiscoverCache(Options options) : options_(options) {}

  // The entry for `filter` at `snapshot` when it is cached (counts a hit), else null.
  std::shared_ptr<const DiscoverEntry> Find(const discovery::SnapshotPtr& snapshot,
                                            const discovery::Filter& filter);
  // The entry for `filter` at `snapshot`, built when missing: O(matching instances) outside
  // the cache lock. `epoch` goes into the ETag.
  std::shared_ptr<const DiscoverEntry> Get(const discovery::SnapshotPtr& snapshot,
                                           const std::string& epoch,
                                           const discovery::Filter& filter);
  Stats stats() const;

 private:
  // Drops least recently used entries while adding this many would pass a bound (mu_ held).
  void EvictLocked(size_t adding_entries, size_t adding_bytes);
  struct Slot {
    std::shared_ptr<const DiscoverEntry> entry;
    std::list<std::string>::iterator lru;
  };
  Options options_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, Slot> slots_;  // guarded by mu_
  std::list<std::string> lru_;                   // most recent first; guarded by mu_
  size_t body_bytes_ = 0;                        // identity bodies in slots_; guarded by mu_
  Stats stats_;                                  // guarded by mu_ (gzip_encoded: atomic below)
  std::atomic<uint64_t> gzip_encoded_{0};
};

}  // namespace discoveryd
