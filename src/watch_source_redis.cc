// The Redis WatchSource. One thread with its own connection:
//   sync:   run the reaper (it also creates the epoch and reports epoch + seq0), read the
//           instance hash in pages (HSCAN + HMGET of each page's modification seqs), then fold
//           in every log record after seq0 (XRANGE): a state consistent at the last record's seq.
//   follow: XREAD BLOCK the log from that seq, applying the records under the prefix in order;
//           every reaper_period run the reaper (idempotent: every watcher may run it).
//   resync: records after our seq trimmed from the log (a slow watcher) -> a full state, the
//           cache emits only the differences; an epoch that changed (store flushed, restarted
//           without persistence) or a seq that went backwards -> a full state with history_reset.
//   same identity, new history: after every reconnect and every reaper period the watcher also
//           reads `master_replid` (INFO replication). When it changed (a Sentinel failover, a
//           restart, a restored copy) or the connection is new, the log record at our seq must
//           still carry the nonce we read there: if not, the store is another history even when
//           its seq already passed ours (a promoted replica that lost the last writes, then took
//           new ones) -> full state with history_reset (values compared, no ghosts); if it does,
//           a replid change still gets a full state (differences only, same history).
// Failed reads are retried through util::Backoff (counted in stats().resync_backoffs).
#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "redis/store.h"
#include "spdlog/spdlog.h"
#include "util/clock.h"
#include "util/event_loop.h"
#include "util/logging.h"
#include "watch_source.h"

namespace discovery {
namespace {

int64_t SeqOfId(const std::string& id) {
  int64_t v = 0;
  (void)absl::SimpleAtoi(id.substr(0, id.find('-')), &v);
  return v;
}

struct Record {
  int64_t seq = 0;
  bool deleted = false;
  std::string key;
  std::string value;
  std::string nonce;  // field n: (seq, nonce) names a record across histories
};

// XRANGE/XREAD entries: [id, [field, value, ...]].
std::vector<Record> Records(const redis::Reply& entries) {
  std::vector<Record> out;
  for (const auto& e : entries.elements) {
    if (e.elements.size() < 2) continue;
    Record rec;
    rec.seq = SeqOfId(e.elements[0].str);
    const auto& f = e.elements[1].elements;
    for (size_t i = 0; i + 1 < f.size(); i += 2) {
      if (f[i].str == "op") rec.deleted = f[i + 1].str == "del";
      if (f[i].str == "key") rec.key = f[i + 1].str;
      if (f[i].str == "value") rec.value = f[i + 1].str;
      if (f[i].str == "n") rec.nonce = f[i + 1].str;
    }
    out.push_back(std::move(rec));
  }
  return out;
}

class RedisWatchSource final : public WatchSource,
                               public std::enable_shared_from_this<RedisWatchSource> {
 public:
  RedisWatchSource(std::shared_ptr<const redis::Store> store, util::EventLoop* loop,
                   SourceOptions options, std::shared_ptr<spdlog::logger> logger,
                   std::weak_ptr<WatchSink> sink)
      : store_(std::move(store)),
        loop_(loop),
        options_(std::move(options)),
        logger_(std::move(logger)),
        sink_(std::move(sink)) {}
  ~RedisWatchSource() override { Stop(); }

  void Start() override {
    std::lock_guard<std::mutex> l(mu_);
    if (thread_.joinable() || stopping_) return;
    thread_ = std::thread([this] { Run(); });
  }
  void Stop() override {
    {
      std::lock_guard<std::mutex> l(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
    if (!loop_->InLoopThread()) loop_->RunSync([] {});  // a sink call in progress has ended
  }
  SourceStats stats() const override {
    SourceStats s;
    s.resync_backoffs = backoffs_.load();
    return s;
  }

 private:
  struct Reaped {
    std::string epoch;
    int64_t seq = 0;
  };

  bool Stopping() {
    std::lock_guard<std::mutex> l(mu_);
    return stopping_;
  }
  void Sleep(absl::Duration d) {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait_until(l, util::ToSteady(util::MonoNow() + d), [this] { return stopping_; });
  }
  // Runs `f(sink)` on the loop unless stopped.
  template <typename F>
  void OnLoop(F f) {
    std::weak_ptr<RedisWatchSource> weak = weak_from_this();
    loop_->Post([weak, f = std::move(f)]() mutable {
      auto self = weak.lock();
      if (self == nullptr || self->Stopping()) return;
      if (auto sink = self->sink_.lock()) f(*sink);
    });
  }

  absl::StatusOr<Reaped> Reap(redis::Client& c) {
    auto r = store_->Eval(
        c, redis::kReapScript,
        {absl::StrCat(absl::ToInt64Milliseconds(store_->options.reaper_grace)), "1000"});
    if (!r.ok()) return r.status();
    if (r->elements.size() < 4) return absl::InternalError("redis reaper: malformed reply");
    if (r->elements[3].AsInt() > 0) {
      SPDLOG_LOGGER_WARN(logger_, "redis reaper: no run for {} ms: every deadline shifted",
                         r->elements[3].AsInt());
    }
    last_reap_ = util::MonoNow();
    return Reaped{r->elements[0].str, r->elements[1].AsInt()};
  }

  // Whether records after `seq` were trimmed from the log (its first entry is beyond seq + 1).
  // A gap in the seqs without that is a jump (a foreign entry made the scripts skip seqs), not
  // a loss: nothing between ever existed.
  absl::StatusOr<bool> Trimmed(redis::Client& c, int64_t seq) {
    auto first = c.Command({"XRANGE", store_->keys[6], "-", "+", "COUNT", "1"});
    if (!first.ok()) return first.status();
    std::vector<Record> recs = Records(*first);
    return !recs.empty() && recs.front().seq > seq + 1;
  }

  // master_replid from INFO replication ("" when the server does not report one).
  static absl::StatusOr<std::string> ReplId(redis::Client& c) {
    auto info = c.Command({"INFO", "replication"});
    if (!info.ok()) return info.status();
    const std::string kField = "master_replid:";
    size_t at = info->str.find(kField);
    if (at == std::string::npos) return std::string();
    size_t end = info->str.find_first_of("\r\n", at);
    at += kField.size();
    return info->str.substr(at, end == std::string::npos ? std::string::npos : end - at);
  }

  // The nonce of the log record at `seq`; nullopt when the log has no such record.
  absl::StatusOr<std::optional<std::string>> NonceAt(redis::Client& c, int64_t seq) {
    const std::string id = absl::StrCat(seq, "-0");
    auto r = c.Command({"XRANGE", store_->keys[6], id, id});
    if (!r.ok()) return r.status();
    std::vector<Record> recs = Records(*r);
    if (recs.empty()) return std::optional<std::string>();
    return std::optional<std::string>(recs.front().nonce);
  }

  // A state consistent at its revision (see the file comment); nullopt-free errors.
  // `replid` and `anchor` (the nonce of the record at the state's revision) come with it.
  absl::StatusOr<SourceState> ReadState(redis::Client& c, std::string* epoch, std::string* replid,
                                        std::string* anchor) {
    auto id = ReplId(c);
    if (!id.ok()) return id.status();
    auto reaped = Reap(c);
    if (!reaped.ok()) return reaped.status();
    const std::vector<std::string>& k = store_->keys;
    std::map<std::string, std::pair<std::string, int64_t>> kvs;
    std::string cursor = "0";
    do {
      auto page =
          c.Command({"HSCAN", k[1], cursor, "COUNT", absl::StrCat(options_.range_page_size)});
      if (!page.ok()) return page.status();
      if (page->elements.size() < 2) return absl::InternalError("redis HSCAN: malformed reply");
      cursor = page->elements[0].str;
      const auto& items = page->elements[1].elements;
      std::vector<std::string> hmget = {"HMGET", k[2]};
      std::vector<std::pair<std::string, std::string>> got;
      for (size_t i = 0; i + 1 < items.size(); i += 2) {
        if (!absl::StartsWith(items[i].str, options_.prefix)) continue;
        got.emplace_back(items[i].str, items[i + 1].str);
        hmget.push_back(items[i].str);
      }
      if (got.empty()) continue;
      auto mods = c.Command(hmget);
      if (!mods.ok()) return mods.status();
      for (size_t i = 0; i < got.size() && i < mods->elements.size(); ++i) {
        kvs[got[i].first] = {std::move(got[i].second), mods->elements[i].AsInt()};
      }
    } while (cursor != "0");
    int64_t revision = reaped->seq;
    std::optional<std::string> last_nonce;
    for (;;) {  // fold in the changes made while the pages were read
      auto more =
          c.Command({"XRANGE", k[6], absl::StrCat("(", revision, "-0"), "+", "COUNT", "10000"});
      if (!more.ok()) return more.status();
      std::vector<Record> recs = Records(*more);
      if (recs.empty()) break;
      if (recs.front().seq != revision + 1) {
        auto trimmed = Trimmed(c, revision);
        if (!trimmed.ok()) return trimmed.status();
        if (*trimmed) return absl::UnavailableError("redis change log trimmed during a full read");
      }
      for (Record& r : recs) {
        revision = r.seq;
        last_nonce = r.nonce;
        if (!absl::StartsWith(r.key, options_.prefix)) continue;
        if (r.deleted) {
          kvs.erase(r.key);
        } else {
          kvs[r.key] = {std::move(r.value), r.seq};
        }
      }
    }
    if (!last_nonce.has_value() && revision > 0) {
      auto n = NonceAt(c, revision);
      if (!n.ok()) return n.status();
      last_nonce = n->value_or("");
    }
    *replid = *id;
    *anchor = last_nonce.value_or("");
    SourceState st;
    st.revision = revision;
    (void)absl::SimpleAtoi(reaped->epoch, &st.store_id);
    st.kvs.reserve(kvs.size());
    for (auto& [key, v] : kvs) st.kvs.push_back({key, std::move(v.first), v.second});
    *epoch = reaped->epoch;
    return st;
  }

  void Run() {
    auto client = store_->NewClient();
    util::Backoff retry(absl::Milliseconds(200), absl::Seconds(10));
    bool need_sync = true;
    bool reset = false;
    std::string epoch;
    std::string replid;
    std::string anchor;  // nonce of the log record at `seq`
    int64_t seq = 0;
    uint64_t seen_reconnects = 0;
    while (!Stopping()) {
      if (need_sync) {
        std::string seen;
        const uint64_t reconnects = client->reconnects();
        auto st = ReadState(*client, &seen, &replid, &anchor);
        if (st.ok() && client->reconnects() != reconnects) {
          // Read across a reconnect (perhaps from two servers around a failover): again.
          st = absl::UnavailableError("redis reconnected during a full read");
        }
        if (!st.ok()) {
          OnLoop([why = st.status()](WatchSink& s) { s.SyncFailed(why); });
          absl::Duration d = retry.Next();
          backoffs_.fetch_add(1);
          SPDLOG_LOGGER_WARN(logger_, "redis sync of {} failed: {}; retry in {}", options_.prefix,
                             std::string(st.status().message()), absl::FormatDuration(d));
          Sleep(d);
          continue;
        }
        retry.Reset();
        const bool history_reset = reset || (!epoch.empty() && seen != epoch);
        epoch = seen;
        seq = st->revision;
        auto state = std::make_shared<SourceState>(*std::move(st));
        OnLoop([state, history_reset](WatchSink& s) {
          s.ApplyState(*state, history_reset);
          s.EndOfBatch();
        });
        need_sync = reset = false;
        seen_reconnects = client->reconnects();
      }
      const uint64_t reconnects = client->reconnects();
      const bool reconnected = reconnects != seen_reconnects;
      if (reconnected || util::MonoNow() - last_reap_ >= store_->options.reaper_period) {
        auto r = Reap(*client);
        if (!r.ok()) {
          backoffs_.fetch_add(1);
          Sleep(retry.Next());
          continue;
        }
        if (r->epoch != epoch || r->seq < seq) {
          SPDLOG_LOGGER_WARN(logger_, "redis store replaced (epoch {} -> {}, seq {} -> {}): resync",
                             epoch, r->epoch, seq, r->seq);
          need_sync = reset = true;
          continue;
        }
        auto id = ReplId(*client);
        if (!id.ok()) {
          backoffs_.fetch_add(1);
          Sleep(retry.Next());
          continue;
        }
        if (*id != replid || reconnected) {
          absl::StatusOr<std::optional<std::string>> at = std::optional<std::string>(anchor);
          if (seq > 0) at = NonceAt(*client, seq);
          if (!at.ok()) {
            backoffs_.fetch_add(1);
            Sleep(retry.Next());
            continue;
          }
          if (client->reconnects() != reconnects) continue;  // reconnected meanwhile: again
          if (*at != anchor) {
            SPDLOG_LOGGER_WARN(logger_,
                               "redis {}: the log record at seq {} is {} (replid {} -> {}): a new "
                               "history (failover to a replica that lost writes, or a restored "
                               "copy): resync, values compared",
                               options_.prefix, seq, at->has_value() ? "another one" : "gone",
                               replid, *id);
            need_sync = reset = true;
            continue;
          }
          if (*id != replid) {
            SPDLOG_LOGGER_WARN(logger_,
                               "redis {}: replication id changed {} -> {} (failover or restart), "
                               "same history at seq {}: resync, differences only",
                               options_.prefix, replid, *id, seq);
            need_sync = true;
            continue;
          }
          seen_reconnects = reconnects;
        }
      }
      const absl::Duration block = store_->options.reaper_period;
      auto r = client->Command(
          {"XREAD", "COUNT", "1000", "BLOCK", absl::StrCat(absl::ToInt64Milliseconds(block)),
           "STREAMS", store_->keys[6], absl::StrCat(seq, "-0")},
          block + store_->options.call_timeout);
      if (!r.ok()) {
        backoffs_.fetch_add(1);
        Sleep(retry.Next());
        continue;
      }
      retry.Reset();
      // Read over a new connection (perhaps another master): check the history first.
      if (client->reconnects() != seen_reconnects) continue;
      if (r->nil() || r->elements.empty() || r->elements[0].elements.size() < 2) continue;
      std::vector<Record> recs = Records(r->elements[0].elements[1]);
      if (recs.empty()) continue;
      if (recs.front().seq != seq + 1 && Trimmed(*client, seq).value_or(true)) {
        SPDLOG_LOGGER_WARN(logger_, "redis change log of {} trimmed past seq {}: resync",
                           options_.prefix, seq);
        need_sync = true;
        continue;
      }
      seq = recs.back().seq;
      anchor = recs.back().nonce;
      auto batch = std::make_shared<std::vector<Record>>(std::move(recs));
      OnLoop([batch, prefix = options_.prefix, seq](WatchSink& s) {
        std::vector<SourceChange> changes;
        for (const Record& rec : *batch) {
          if (!absl::StartsWith(rec.key, prefix)) continue;
          changes.push_back(SourceChange{rec.key, rec.value, rec.seq, rec.deleted});
        }
        s.ApplyChanges(changes, seq);
        s.EndOfBatch();
      });
    }
  }

  std::shared_ptr<const redis::Store> store_;
  util::EventLoop* loop_;
  const SourceOptions options_;
  std::shared_ptr<spdlog::logger> logger_;
  std::weak_ptr<WatchSink> sink_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
  absl::Time last_reap_ = absl::InfinitePast();
  std::atomic<uint64_t> backoffs_{0};
};

}  // namespace

std::shared_ptr<WatchSource> NewRedisWatchSource(std::shared_ptr<const redis::Store> store,
                                                 util::EventLoop* loop,
                                                 const SourceOptions& options,
                                                 std::shared_ptr<spdlog::logger> logger,
                                                 std::weak_ptr<WatchSink> sink) {
  return std::make_shared<RedisWatchSource>(std::move(store), loop, options, std::move(logger),
                                            std::move(sink));
}

}  // namespace discovery
