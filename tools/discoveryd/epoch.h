// File: tools/discoveryd/epoch.h
//
// The SSE epoch every discoveryd replica of one store agrees on (sse.h puts it in event ids as
// `<epoch>.<revision>`). It is a record of the store BESIDE the watched prefix, named
// EpochKey(prefix) ("/services/" -> "/services.epoch"), so the watcher of the prefix never sees
// it. Where it lives is the EpochStore's business (store_ops.h): an etcd key, or a field of
// {ns}:records on Redis. Either way it reads:
//
//   {"epoch":"<8 hex>","replaces":"<the epoch it replaced, or empty>"}
//
//  - start: read the key; when missing, create it with a Txn guarded by create_revision == 0
//    (the first replica wins, the others read the winner's value; on Redis a script guarded by
//    the record's modification counter);
//  - the local watcher replaced its history (etcd wiped / restored: revisions went back)
//    while epoch P was in force: read the key; if it `replaces` P another replica already
//    handled the same reset: adopt it; otherwise write a new epoch replacing P with a Txn
//    guarded by the mod_revision read (create_revision == 0 when the key is missing, as after
//    a wipe), re-reading on conflict;
//  - the key is watched: another replica replacing our epoch is adopted ("replaced"). A watch
//    that broke because etcd is another cluster re-reads the key but leaves adoption to the
//    local history reset that follows (else the replica would adopt, then replace, the new
//    epoch).
//
// Store trouble never blocks serving: a failed step is logged, counted (stats().failures) and
// retried with util::Backoff; when a reset (or, once Urgent() was called, the first read) has
// failed, the keeper reports a provisional random epoch, and reports the agreed one as
// "replaced" once it gets it.
//
// Thread-safety: thread-safe. `on_epoch` runs on the keeper's thread or the store's watch thread;
// it must not block (discoveryd's hub only posts to its loop).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "store_ops.h"
#include "util/sync.h"

namespace spdlog {
class logger;
}

namespace discoveryd {

// "<prefix without its trailing '/'>.epoch".
std::string EpochKey(const std::string& prefix);
// 8 random lower-case hex digits.
std::string RandomEpoch();

class EpochKeeper {
 public:
  enum class Why {
    kInitial,   // the first epoch (agreed or provisional)
    kReset,     // the answer to HistoryReset (agreed or provisional)
    kReplaced,  // another replica replaced it, or the agreed one replaced a provisional one
  };
  using OnEpoch = std::function<void(const std::string& epoch, Why why)>;
  struct Options {
    absl::Duration call_timeout = absl::Seconds(3);
    absl::Duration backoff_initial = absl::Milliseconds(200);
    absl::Duration backoff_max = absl::Seconds(30);
    std::shared_ptr<spdlog::logger> logger{};
  };
  struct Stats {
    uint64_t failures = 0;  // store steps that failed (each retried with backoff)
    uint64_t created = 0;   // epochs this replica wrote (first one, or replacing one)
    uint64_t adopted = 0;   // epochs another replica wrote that this one took over
    bool provisional = false;
  };

  EpochKeeper(std::unique_ptr<EpochStore> store, Options options, OnEpoch on_epoch);
  ~EpochKeeper();  // Stop()
  EpochKeeper(const EpochKeeper&) = delete;
  EpochKeeper& operator=(const EpochKeeper&) = delete;

  // Starts the keeper's thread: the first read, then the watch.
  void Start();
  // Stops the thread and the watch; no on_epoch call runs after it returns. Idempotent.
  void Stop();
  // The local watcher replaced its history while `previous` was the epoch in force. Answered
  // by one on_epoch(..., kReset).
  void HistoryReset(const std::string& previous);

  // Someone is waiting for an epoch right now (discoveryd's cache synced): while the store keeps
  // failing, report a provisional one instead of waiting for the next successful read.
  void Urgent();

  std::string epoch() const;
  Stats stats() const;

 private:
  struct Record {
    bool exists = false;
    bool valid = false;
    std::string epoch;
    std::string replaces;
    int64_t mod_revision = 0;
    int64_t store_revision = 0;
  };
  void Run();
  absl::StatusOr<Record> Read();
  // Writes {fresh, replaces} guarded by `seen` (create_revision == 0 when it does not exist).
  // True when written, false on a conflict.
  absl::StatusOr<bool> Write(const Record& seen, const std::string& fresh,
                             const std::string& replaces, int64_t* store_revision);
  absl::Status DoRead(bool defer_adoption, bool answer_reset);
  absl::Status DoReset(const std::string& previous);
  void EnsureWatch(int64_t from_revision);
  void OnWatchValue(const std::string& value);
  void Report(const std::string& epoch, Why why, bool provisional);
  bool NeedProvisional() const;
  void ReportProvisional(Why why);

  std::unique_ptr<EpochStore> store_;
  Options options_;
  OnEpoch on_epoch_;
  std::shared_ptr<spdlog::logger> logger_;

  mutable discovery::util::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool read_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool read_defer_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t reset_seq_ ABSL_GUARDED_BY(mu_) = 0;  // HistoryReset calls
  uint64_t reset_done_ ABSL_GUARDED_BY(mu_) = 0;
  std::string reset_previous_ ABSL_GUARDED_BY(mu_);
  uint64_t watch_id_ ABSL_GUARDED_BY(mu_) = 0;
  std::string epoch_ ABSL_GUARDED_BY(mu_);
  bool provisional_ ABSL_GUARDED_BY(mu_) = false;
  bool urgent_ ABSL_GUARDED_BY(mu_) = false;
  Stats stats_ ABSL_GUARDED_BY(mu_);
  // Serialises epoch_ updates with their on_epoch calls (so they are seen in order).
  discovery::util::Mutex report_mu_;
  std::thread thread_;
};

}  // namespace discoveryd
