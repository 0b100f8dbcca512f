// What every long-lived etcd stream shares, whatever its API: StreamTracker counts the streams
// whose threads have not finished, so that an owner's shutdown can wait for all of them
// (SyncBidiStream's reader threads); TokenReadyOrFetch gets the token a stream is opened with.
//
// (The callback-API BidiStream that lived here is gone: both streams, Watch and
// LeaseKeepAlive, run on gRPC's sync API, SyncBidiStream. bench/README.md "Keepalive" has the
// measurement that moved the keepalive stream.)
//
// Thread-safety: StreamTracker is thread-safe.
#pragma once

#include <functional>

#include "util/event_loop.h"
#include "util/sync.h"

namespace discovery::etcd {

class Client;

// Number of streams still running. Thread-safe.
class StreamTracker {
 public:
  void Started() {
    util::MutexLock lock(&mu_);
    ++live_;
  }
  void Finished() {
    util::MutexLock lock(&mu_);
    --live_;
  }
  // Blocks until every started stream has finished.
  void AwaitNone() {
    util::MutexLock lock(&mu_);
    mu_.Await([this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return live_ == 0; });
  }

 private:
  util::Mutex mu_;
  int live_ ABSL_GUARDED_BY(mu_) = 0;
};

// For stream owners, on their `loop`: true when a stream may be opened now. With credentials
// but no token yet (or with `force`: the stream's token was refused) it returns false, sets
// *connecting, fetches a token on the client's background loop (a blocking call), then clears
// *connecting and runs then(fetched) on `loop`: fetched is true when a new token was just
// obtained, so a stream opened right away carries a fresh token.
bool TokenReadyOrFetch(Client* client, util::EventLoop& loop, bool* connecting, bool force,
                       std::function<void(bool fetched)> then);

}  // namespace discovery::etcd
