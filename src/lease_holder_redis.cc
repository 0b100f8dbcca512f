// The Redis LeaseHolder: leases are deadlines in the {ns}:dl ZSET, computed inside the scripts
// from Redis' own clock. One thread per holder refreshes ALL leases of the holder in one
// keepalive script call per tick (the analogue of etcd's one LeaseKeepAlive stream) and learns
// which ids are gone. Events as on etcd: kAtRisk after 2/3 TTL without a successful refresh,
// kAlive when refreshes work again, kLost when the script reports the lease gone (expired and
// reaped, revoked, or the store was flushed). A heartbeat never touches values or the log.
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "absl/random/random.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "lease_holder.h"
#include "redis/store.h"
#include "util/clock.h"
#include "util/event_loop.h"

namespace discovery {
namespace {

class RedisLeaseHolder final : public LeaseHolder {
 public:
  RedisLeaseHolder(std::shared_ptr<const redis::Store> store, util::EventLoop* events,
                   util::EventLoop* background)
      : store_(std::move(store)),
        events_(events),
        background_(background),
        calls_(store_->NewClient()),
        ticker_(store_->NewClient()) {
    thread_ = std::thread([this] { Run(); });
  }
  ~RedisLeaseHolder() override {
    {
      std::lock_guard<std::mutex> l(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  static absl::StatusOr<int64_t> DoGrant(const redis::Store& store, redis::Client& c,
                                         absl::Duration ttl) {
    if (ttl < absl::Seconds(1)) return absl::InvalidArgumentError("lease TTL below 1 s");
    // Random ids, as etcd's: unique across histories (see kGrantScript). < 2^52: exact in Lua.
    thread_local absl::BitGen gen;
    const int64_t candidate = absl::Uniform<int64_t>(gen, int64_t{1} << 20, int64_t{1} << 52);
    auto r = store.Eval(c, redis::kGrantScript,
                        {absl::StrCat(absl::ToInt64Milliseconds(ttl)), absl::StrCat(candidate)});
    if (!r.ok()) return r.status();
    return r->AsInt();
  }
  static absl::Status DoRevoke(const redis::Store& store, redis::Client& c, int64_t lease) {
    auto r = store.Eval(c, redis::kRevokeScript, {absl::StrCat(lease)});
    if (!r.ok()) return r.status();
    if (r->AsInt() == 0) return absl::NotFoundError(absl::StrCat("lease ", lease, " not found"));
    return absl::OkStatus();
  }

  absl::StatusOr<int64_t> Grant(absl::Duration ttl) override {
    return DoGrant(*store_, *calls_, ttl);
  }
  void GrantAsync(absl::Duration ttl, GrantCallback done) override {
    background_->Post([store = store_, c = calls_, ttl, done = std::move(done)] {
      done(DoGrant(*store, *c, ttl));
    });
  }

  void KeepAlive(int64_t lease, absl::Duration ttl, absl::Duration interval,
                 Listener listener) override {
    {
      std::lock_guard<std::mutex> l(mu_);
      leases_[lease] = Entry{
          ttl, interval, std::move(listener), util::MonoNow(), false, util::MonoNow() + interval};
    }
    cv_.notify_all();
  }
  void Forget(int64_t lease) override {
    std::lock_guard<std::mutex> l(mu_);
    leases_.erase(lease);
  }
  absl::Status Revoke(int64_t lease) override {
    Forget(lease);
    return DoRevoke(*store_, *calls_, lease);
  }
  void RevokeAsync(int64_t lease, std::function<void(absl::Status)> done) override {
    Forget(lease);
    background_->Post([store = store_, c = calls_, lease, done = std::move(done)] {
      done(DoRevoke(*store, *c, lease));
    });
  }

 private:
  struct Entry {
    absl::Duration ttl;
    absl::Duration interval;
    Listener listener;
    absl::Time last_ok;
    bool at_risk;
    absl::Time next;
  };

  void Emit(const Listener& listener, EventType type, int64_t id) {
    events_->Post([listener, type, id] { listener(Event{type, id}); });
  }

  void Run() {
    std::unique_lock<std::mutex> l(mu_);
    while (!stopping_) {
      absl::Time wake = util::MonoNow() + absl::Seconds(1);
      for (const auto& [id, e] : leases_) wake = std::min(wake, e.next);
      cv_.wait_until(l, util::ToSteady(wake));
      if (stopping_) break;
      const absl::Time now = util::MonoNow();
      std::vector<std::string> due;
      for (auto& [id, e] : leases_) {
        if (e.next <= now) due.push_back(absl::StrCat(id));
      }
      if (due.empty()) continue;
      l.unlock();
      // One call for every due lease of this process.
      auto r = store_->Eval(*ticker_, redis::kKeepAliveScript, due);
      l.lock();
      const absl::Time after = util::MonoNow();
      std::map<int64_t, bool> gone;
      if (r.ok()) {
        for (const auto& g : r->elements) gone[g.AsInt()] = true;
      }
      for (const std::string& s : due) {
        int64_t id = 0;
        if (!absl::SimpleAtoi(s, &id)) continue;
        auto it = leases_.find(id);
        if (it == leases_.end()) continue;  // forgotten meanwhile
        Entry& e = it->second;
        if (r.ok() && gone.count(id) != 0) {
          Emit(e.listener, EventType::kLost, id);
          leases_.erase(it);
          continue;
        }
        if (r.ok()) {
          e.last_ok = after;
          e.next = after + e.interval;
          if (e.at_risk) {
            e.at_risk = false;
            Emit(e.listener, EventType::kAlive, id);
          }
          continue;
        }
        // Redis unreachable: retry sooner than the interval, but not in a tight loop (the
        // client waits for its own reconnect backoff).
        ++failures_;
        e.next = after + std::min(e.interval, absl::Milliseconds(500));
        if (!e.at_risk && after - e.last_ok > e.ttl * 2 / 3) {
          e.at_risk = true;
          Emit(e.listener, EventType::kAtRisk, id);
        }
      }
    }
  }

  std::shared_ptr<const redis::Store> store_;
  util::EventLoop* events_;
  util::EventLoop* background_;
  std::shared_ptr<redis::Client> calls_;
  std::unique_ptr<redis::Client> ticker_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<int64_t, Entry> leases_;
  bool stopping_ = false;
  uint64_t failures_ = 0;
  std::thread thread_;
};

}  // namespace

std::unique_ptr<LeaseHolder> NewRedisLeaseHolder(std::shared_ptr<const redis::Store> store,
                                                 util::EventLoop* events,
                                                 util::EventLoop* background) {
  return std::make_unique<RedisLeaseHolder>(std::move(store), events, background);
}

}  // namespace discovery
