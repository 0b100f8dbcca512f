// discoveryd's StoreOps on Redis (store_ops.h): the Redis backend's scripts (src/redis/
// scripts.h) on clients of discoveryd's own, and the epoch record in {ns}:records.
//
// Redis has no watch on one key: the epoch record is polled (every kEpochPoll, one read script)
// by one thread per record. A record written after the one the keeper read is reported as
// etcd's watch would; a record that vanished, or one of another store history (the store's
// own epoch in {ns}:meta changed: FLUSHALL, a restart without persistence), ends the feed
// with kDataLoss, as an etcd watch broken by a wiped cluster: the keeper then lets the local
// history reset (which the watcher reports for the same cause) decide the new epoch, so a
// replica never adopts a new epoch first and replaces it again. A failed poll is retried with
// jittered exponential backoff (kEpochPoll doubling up to kEpochPollMax, back to kEpochPoll
// after a good read) and counted (feed_failures(): discovery_sse_epoch_failures_total).
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "lease_holder.h"
#include "redis/store.h"
#include "store_backend.h"
#include "store_ops.h"
#include "util/clock.h"
#include "util/logging.h"

namespace discoveryd {
namespace {

namespace redis = discovery::redis;
constexpr absl::Duration kEpochPoll = absl::Seconds(1);
constexpr absl::Duration kEpochPollMax = absl::Seconds(30);

class RedisEpochStore final : public EpochStore {
 public:
  RedisEpochStore(std::shared_ptr<const redis::Store> store, std::string key)
      : store_(std::move(store)),
        key_(std::move(key)),
        calls_(store_->NewClient()),
        poll_client_(store_->NewClient()) {}
  ~RedisEpochStore() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  const std::string& name() const override { return key_; }
  uint64_t feed_failures() const override { return poll_failures_.load(); }

  // Record::store_revision is the record's own counter here (0: absent): what Watch starts
  // after, as etcd's watch starts after the revision read.
  absl::StatusOr<Record> Read(absl::Duration) override {
    std::string history;
    auto r = ReadWith(*calls_, &history);
    if (r.ok()) SetHistory(history);
    return r;
  }

  absl::StatusOr<bool> Write(const Record& seen, const std::string& value, absl::Duration,
                             int64_t* store_revision) override {
    // The store's call timeout bounds the script.
    auto r = store_->Eval(*calls_, redis::kRecordWriteScript,
                          {key_, absl::StrCat(seen.exists ? seen.mod_revision : 0), value});
    if (!r.ok()) return r.status();
    if (r->elements.size() < 2) return absl::InternalError("redis record write: malformed reply");
    SetHistory(r->elements[1].str);
    if (r->elements[0].AsInt() != 1 || r->elements.size() < 3) return false;
    *store_revision = r->elements[2].AsInt();
    return true;
  }

  uint64_t Watch(int64_t from_revision, Listener listener) override {
    std::lock_guard<std::mutex> lock(mu_);
    listener_ = std::move(listener);
    watch_id_ = ++next_id_;
    watch_from_ = from_revision;
    watch_history_ = history_;
    if (!thread_.joinable()) thread_ = std::thread([this] { Poll(); });
    cv_.notify_all();
    return watch_id_;
  }

  void Unwatch(uint64_t id) override {
    std::lock_guard<std::mutex> calling(call_mu_);  // a listener call running now ends first
    std::lock_guard<std::mutex> lock(mu_);
    if (watch_id_ == id) watch_id_ = 0;
  }

 private:
  void SetHistory(const std::string& history) {
    std::lock_guard<std::mutex> lock(mu_);
    history_ = history;
  }

  absl::StatusOr<Record> ReadWith(redis::Client& c, std::string* history) {
    auto r = store_->Eval(c, redis::kRecordReadScript, {key_});
    if (!r.ok()) return r.status();
    if (r->elements.size() < 2) return absl::InternalError("redis record read: malformed reply");
    *history = r->elements[1].str;
    Record out;
    if (r->elements[0].AsInt() == 1 && r->elements.size() >= 4) {
      out.exists = true;
      out.value = r->elements[2].str;
      out.mod_revision = r->elements[3].AsInt();
      out.store_revision = out.mod_revision;
    }
    return out;
  }

  // One read per period while a watch is open. The store's epoch changed (FLUSHALL, a restart
  // without persistence) or the record vanished: kDataLoss, the watch ends. Else a record
  // written after `from` is reported.
  void Poll() {
    discovery::util::Backoff backoff(kEpochPoll, kEpochPollMax);
    absl::Duration wait = kEpochPoll;
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      cv_.wait_for(lock, absl::ToChronoMilliseconds(wait));
      if (stop_) return;
      if (watch_id_ == 0) continue;
      const uint64_t id = watch_id_;
      lock.unlock();
      std::string history;
      absl::StatusOr<Record> r = ReadWith(*poll_client_, &history);
      if (r.ok()) {
        backoff.Reset();
        wait = kEpochPoll;
      } else {
        poll_failures_.fetch_add(1);
        wait = backoff.Next();
      }
      {
        std::lock_guard<std::mutex> calling(call_mu_);
        Listener listener;
        bool broken = false;
        bool changed = false;
        {
          std::lock_guard<std::mutex> l(mu_);
          if (watch_id_ == id && r.ok()) {
            listener = listener_;
            if (!r->exists || (!watch_history_.empty() && history != watch_history_)) {
              broken = true;
              watch_id_ = 0;
            } else if (r->mod_revision >= watch_from_) {
              changed = true;
              watch_from_ = r->mod_revision + 1;
            }
            if (watch_history_.empty()) watch_history_ = history;
          }
        }
        if (broken) {
          listener.on_broken(
              absl::DataLossError(absl::StrCat(key_, ": the Redis store lost its history")));
        } else if (changed) {
          listener.on_value(r->value);
        }
      }
      lock.lock();
    }
  }

  std::shared_ptr<const redis::Store> store_;
  std::string key_;
  std::unique_ptr<redis::Client> calls_;
  std::unique_ptr<redis::Client> poll_client_;
  std::mutex call_mu_;  // held while a listener runs
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> poll_failures_{0};
  bool stop_ = false;
  std::string history_;  // the store's epoch at the last Read / Write
  uint64_t next_id_ = 0;
  uint64_t watch_id_ = 0;
  int64_t watch_from_ = 0;
  std::string watch_history_;
  Listener listener_;
  std::thread thread_;
};

class RedisStoreOps final : public StoreOps {
 public:
  RedisStoreOps(std::shared_ptr<const redis::Store> store,
                std::unique_ptr<discovery::LeaseHolder> holder)
      : store_(std::move(store)), client_(store_->NewClient()), holder_(std::move(holder)) {}

  absl::StatusOr<Granted> Grant(int64_t ttl_seconds) override {
    auto id = holder_->Grant(absl::Seconds(ttl_seconds));
    if (!id.ok()) return id.status();
    return Granted{*id, ttl_seconds};
  }
  absl::StatusOr<int64_t> KeepAliveOnce(int64_t lease) override {
    std::unordered_map<int64_t, int64_t> ttls;
    if (absl::Status s = RefreshMany({lease}, absl::ZeroDuration(), &ttls); !s.ok()) return s;
    if (ttls[lease] <= 0) return absl::NotFoundError(absl::StrCat("lease ", lease, " not found"));
    return ttls[lease];
  }
  absl::Status RefreshMany(const std::vector<int64_t>& ids, absl::Duration,
                           std::unordered_map<int64_t, int64_t>* ttls) override {
    std::vector<std::string> args;
    args.reserve(ids.size());
    for (int64_t id : ids) args.push_back(absl::StrCat(id));
    auto r = store_->Eval(*client_, redis::kRefreshScript, std::move(args));
    if (!r.ok()) return r.status();
    if (r->elements.size() != ids.size()) {
      return absl::InternalError("redis refresh: malformed script reply");
    }
    for (size_t i = 0; i < ids.size(); ++i) {
      const int64_t ms = r->elements[i].AsInt();
      // Whole seconds as granted; a live lease never reads as gone.
      (*ttls)[ids[i]] = ms <= 0 ? 0 : std::max<int64_t>(1, ms / 1000);
    }
    return absl::OkStatus();
  }
  absl::Status Revoke(int64_t lease) override { return holder_->Revoke(lease); }
  bool RevokeIfUnused(int64_t lease) override {
    auto r = store_->Eval(*client_, redis::kRevokeIfUnusedScript, {absl::StrCat(lease)});
    return r.ok() && r->AsInt() == 1;
  }
  discovery::LeaseHolder& holder() override { return *holder_; }
  std::unique_ptr<EpochStore> NewEpochStore(const std::string& key) override {
    return std::make_unique<RedisEpochStore>(store_, key);
  }

 private:
  std::shared_ptr<const redis::Store> store_;
  std::unique_ptr<redis::Client> client_;
  std::unique_ptr<discovery::LeaseHolder> holder_;
};

}  // namespace

std::unique_ptr<StoreOps> NewRedisStoreOps(const std::shared_ptr<discovery::Connection>& conn) {
  return std::make_unique<RedisStoreOps>(redis::StoreOf(*conn->backend()),
                                         conn->backend()->NewLeaseHolder());
}

}  // namespace discoveryd
