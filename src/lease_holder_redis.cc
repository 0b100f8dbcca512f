// The Redis LeaseHolder: leases are deadlines in the {ns}:dl ZSET, computed inside the scripts
// from Redis' own clock. One thread per holder refreshes ALL leases of the holder in one
// keepalive script call per tick (the analogue of etcd's one LeaseKeepAlive stream) and learns
// which ids are gone. Events as on etcd: kAtRisk after 2/3 TTL without a successful refresh,
// kAlive when refreshes work again, kLost when the script reports the lease gone (expired and
// reaped, revoked, or the store was flushed). A heartbeat never touches values or the log.
// Schedule (as the etcd LeaseKeeper): leases are grouped by keepalive interval, each group has
// one next-burst time, one timer waits for the earliest, and a burst refreshes every group due
// within half its interval in one EVALSHA (chunks of kMaxIdsPerCall ids above that), so 10,000
// leases registered over several seconds still cost one script call per interval.
#include "lease_holder_redis.h"

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "absl/random/random.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "lease_holder.h"
#include "redis/store.h"
#include "spdlog/spdlog.h"
#include "util/clock.h"
#include "util/event_loop.h"
#include "util/logging.h"

namespace discovery {
namespace {

std::atomic<uint64_t> g_bursts{0}, g_calls{0}, g_failed_calls{0}, g_lost{0};

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
      const absl::Time now = util::MonoNow();
      Drop(lease);
      leases_[lease] = Entry{ttl, interval, std::move(listener), now, false};
      Group& g = groups_[interval];
      // A new group's first burst is one interval away; an existing group's next burst is
      // never later than that, so joining it refreshes the lease in time (early is harmless).
      if (g.ids.empty()) g.next = now + interval;
      if (g.in_burst) g.cap = std::min(g.cap, now + interval);
      g.ids.insert(lease);
    }
    cv_.notify_all();
  }
  void Forget(int64_t lease) override {
    std::lock_guard<std::mutex> l(mu_);
    Drop(lease);
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
  // Ids per EVALSHA: a burst above this is sent in chunks, so that one script never blocks
  // Redis for long (5,000 ZADD XX take a few ms).
  static constexpr size_t kMaxIdsPerCall = 5000;

  struct Entry {
    absl::Duration ttl;
    absl::Duration interval;
    Listener listener;
    absl::Time last_ok;
    bool at_risk;
  };
  // All leases of one keepalive interval share one schedule: one burst per interval.
  struct Group {
    absl::Time next = absl::InfiniteFuture();
    // Joined while this group's burst was in flight: its next burst must come by this time.
    absl::Time cap = absl::InfiniteFuture();
    bool in_burst = false;
    std::set<int64_t> ids;
  };

  // Under mu_.
  void Drop(int64_t lease) {
    auto it = leases_.find(lease);
    if (it == leases_.end()) return;
    auto g = groups_.find(it->second.interval);
    if (g != groups_.end()) {
      g->second.ids.erase(lease);
      if (g->second.ids.empty()) groups_.erase(g);
    }
    leases_.erase(it);
  }

  void Emit(const Listener& listener, EventType type, int64_t id) {
    events_->Post([listener, type, id] { listener(Event{type, id}); });
  }

  // One timer for whatever group is due next (there are as many groups as distinct intervals,
  // usually one): no work per lease on a wake-up unless a burst is due. A burst takes every
  // group due within the next half of its interval, so groups never drift into many small
  // calls; the next burst waits until this one is answered.
  void Run() {
    std::unique_lock<std::mutex> l(mu_);
    while (!stopping_) {
      absl::Time wake = absl::InfiniteFuture();
      for (const auto& [interval, g] : groups_) wake = std::min(wake, g.next);
      if (wake == absl::InfiniteFuture()) {
        cv_.wait(l);
      } else {
        cv_.wait_until(l, util::ToSteady(wake));
      }
      if (stopping_) break;
      const absl::Time now = util::MonoNow();
      if (wake > now) continue;  // woken early (a new group or a spurious wake-up)
      std::vector<absl::Duration> burst;
      std::vector<std::string> ids;
      for (auto& [interval, g] : groups_) {
        if (g.next > now + interval / 2) continue;
        burst.push_back(interval);
        g.in_burst = true;
        for (int64_t id : g.ids) ids.push_back(absl::StrCat(id));
      }
      if (ids.empty()) continue;
      g_bursts.fetch_add(1);
      l.unlock();
      // One call for every due lease of this process (chunked above kMaxIdsPerCall).
      std::set<int64_t> gone;
      absl::Status failed;
      for (size_t i = 0; i < ids.size(); i += kMaxIdsPerCall) {
        std::vector<std::string> chunk(ids.begin() + i,
                                       ids.begin() + std::min(ids.size(), i + kMaxIdsPerCall));
        auto r = store_->Eval(*ticker_, redis::kKeepAliveScript, std::move(chunk));
        ++calls_made_;
        g_calls.fetch_add(1);
        if (!r.ok()) {
          failed = r.status();
          break;
        }
        for (const auto& g : r->elements) gone.insert(g.AsInt());
      }
      l.lock();
      const absl::Time after = util::MonoNow();
      absl::Duration retry = absl::ZeroDuration();
      if (!failed.ok()) {
        // Redis unreachable: retry sooner than the interval, with a jittered backoff (the
        // client also waits for its own reconnect backoff).
        ++failed_calls_;
        g_failed_calls.fetch_add(1);
        retry = backoff_.Next();
        SPDLOG_LOGGER_WARN(logger_,
                           "redis keepalive of {} leases failed ({} of {} calls): {}; "
                           "retry in {}",
                           ids.size(), failed_calls_, calls_made_, failed.ToString(),
                           absl::FormatDuration(retry));
      } else {
        backoff_.Reset();
      }
      for (absl::Duration interval : burst) {
        auto git = groups_.find(interval);
        if (git == groups_.end()) continue;  // every lease forgotten meanwhile
        Group& g = git->second;
        if (!g.in_burst) continue;  // emptied and created anew meanwhile: keeps its own next
        g.next = std::min(after + (failed.ok() ? interval : std::min(interval, retry)), g.cap);
        g.cap = absl::InfiniteFuture();
        g.in_burst = false;
      }
      for (const std::string& s : ids) {
        int64_t id = 0;
        if (!absl::SimpleAtoi(s, &id)) continue;
        auto it = leases_.find(id);
        if (it == leases_.end()) continue;  // forgotten meanwhile
        Entry& e = it->second;
        if (failed.ok() && gone.count(id) != 0) {
          Emit(e.listener, EventType::kLost, id);
          g_lost.fetch_add(1);
          Drop(id);
          continue;
        }
        if (failed.ok()) {
          e.last_ok = after;
          if (e.at_risk) {
            e.at_risk = false;
            Emit(e.listener, EventType::kAlive, id);
          }
          continue;
        }
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
  std::map<absl::Duration, Group> groups_;  // by keepalive interval
  bool stopping_ = false;
  util::Backoff backoff_{absl::Milliseconds(100), absl::Seconds(1)};
  uint64_t calls_made_ = 0;
  uint64_t failed_calls_ = 0;
  std::shared_ptr<spdlog::logger> logger_ = util::ComponentLogger(nullptr, "discovery.redis");
  std::thread thread_;
};

}  // namespace

RedisLeaseCounters GetRedisLeaseCounters() {
  return {g_bursts.load(), g_calls.load(), g_failed_calls.load(), g_lost.load()};
}

std::unique_ptr<LeaseHolder> NewRedisLeaseHolder(std::shared_ptr<const redis::Store> store,
                                                 util::EventLoop* events,
                                                 util::EventLoop* background) {
  return std::make_unique<RedisLeaseHolder>(std::move(store), events, background);
}

}  // namespace discovery
