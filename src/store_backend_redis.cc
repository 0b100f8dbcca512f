// The Redis StoreBackend (issue 17): writer and Ping here, the lease holder in
// lease_holder_redis.cc, the watch source in watch_source_redis.cc, scripts in redis/scripts.cc.
#include <cstdlib>

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "discovery/redis.h"
#include "instance_writer.h"
#include "lease_holder.h"
#include "redis/store.h"
#include "store_backend.h"
#include "util/event_loop.h"

namespace discovery {

std::shared_ptr<WatchSource> NewRedisWatchSource(std::shared_ptr<const redis::Store> store,
                                                 util::EventLoop* loop,
                                                 const SourceOptions& options,
                                                 std::shared_ptr<spdlog::logger> logger,
                                                 std::weak_ptr<WatchSink> sink);

namespace redis {
std::vector<std::string> Store::Args(std::vector<std::string> args) const {
  // Fresh candidates every call: a store created again (FLUSHALL, restart without persistence)
  // gets another epoch and another lease id range than the one before.
  thread_local absl::BitGen gen;
  std::vector<std::string> out = {
      absl::StrCat(absl::Uniform<uint64_t>(gen, 1, uint64_t{1} << 62)),
      absl::StrCat(options.log_max_len),
      absl::StrCat(absl::Uniform<int64_t>(gen, 1, int64_t{1} << 31) * (int64_t{1} << 20))};
  out.insert(out.end(), std::make_move_iterator(args.begin()), std::make_move_iterator(args.end()));
  return out;
}
}  // namespace redis

namespace {

std::optional<InstanceWriter::Current> CurrentOf(const redis::Reply& r) {
  // {0, store_seq, present, value, owner, mod}
  if (r.elements.size() < 6 || r.elements[2].AsInt() == 0) return std::nullopt;
  return InstanceWriter::Current{r.elements[3].str, r.elements[4].AsInt(), r.elements[5].AsInt()};
}

class RedisInstanceWriter final : public InstanceWriter {
 public:
  RedisInstanceWriter(std::shared_ptr<const redis::Store> store, util::EventLoop* background)
      : store_(std::move(store)), background_(background), client_(store_->NewClient()) {}

  static absl::StatusOr<int64_t> DoPut(const redis::Store& store, redis::Client& c,
                                       const std::string& key, const std::string& value,
                                       int64_t lease) {
    auto r = store.Eval(c, redis::kPutIfAbsentScript, {key, value, absl::StrCat(lease)});
    if (!r.ok()) return r.status();
    if (r->elements.empty()) return absl::InternalError("redis put: malformed script reply");
    const int64_t st = r->elements[0].AsInt();
    if (st < 0) return absl::NotFoundError(absl::StrCat("lease ", lease, " not found"));
    if (st == 0) return 0;
    return r->elements[1].AsInt();
  }

  absl::StatusOr<std::optional<Current>> Read(const std::string& key) override {
    auto r = store_->Eval(*client_, redis::kReadScript, {key});
    if (!r.ok()) return r.status();
    if (r->elements.empty()) return absl::InternalError("redis read: malformed script reply");
    if (r->elements[0].AsInt() == 0) return std::optional<Current>();
    if (r->elements.size() < 5) return absl::InternalError("redis read: malformed script reply");
    return std::optional<Current>(
        Current{r->elements[2].str, r->elements[3].AsInt(), r->elements[4].AsInt()});
  }

  absl::StatusOr<int64_t> PutIfAbsent(const std::string& key, const std::string& value,
                                      int64_t lease) override {
    return DoPut(*store_, *client_, key, value, lease);
  }
  void PutIfAbsentAsync(const std::string& key, const std::string& value, int64_t lease,
                        PutCallback done) override {
    background_->Post([store = store_, c = client_, key, value, lease, done = std::move(done)] {
      done(DoPut(*store, *c, key, value, lease));
    });
  }

  absl::StatusOr<WriteResult> PutIfUnchanged(const std::string& key, const std::string& value,
                                             int64_t lease, int64_t expected) override {
    auto r = store_->Eval(*client_, redis::kPutIfUnchangedScript,
                          {key, value, absl::StrCat(lease), absl::StrCat(expected)});
    if (!r.ok()) return r.status();
    if (r->elements.empty()) return absl::InternalError("redis update: malformed script reply");
    const int64_t st = r->elements[0].AsInt();
    if (st < 0) return absl::NotFoundError(absl::StrCat("lease ", lease, " not found"));
    WriteResult out;
    out.store_revision = r->elements[1].AsInt();
    if (st == 1) {
      out.written = true;
      out.revision = r->elements[1].AsInt();
    } else {
      out.current = CurrentOf(*r);
    }
    return out;
  }

  absl::StatusOr<DeleteResult> Delete(const std::string& key, DeleteGuard guard) override {
    auto r = store_->Eval(*client_, redis::kDeleteScript,
                          {key, absl::StrCat(guard.lease), absl::StrCat(guard.mod_revision)});
    if (!r.ok()) return r.status();
    if (r->elements.size() < 2) return absl::InternalError("redis delete: malformed script reply");
    DeleteResult out;
    out.store_revision = r->elements[1].AsInt();
    if (r->elements[0].AsInt() == 1) {
      out.deleted = true;
      out.lease_id = r->elements.size() > 2 ? r->elements[2].AsInt() : 0;
    } else {
      out.current = CurrentOf(*r);
    }
    return out;
  }

 private:
  std::shared_ptr<const redis::Store> store_;
  util::EventLoop* background_;
  std::shared_ptr<redis::Client> client_;
};

class RedisBackend final : public StoreBackend {
 public:
  explicit RedisBackend(std::shared_ptr<const redis::Store> store)
      : store_(std::move(store)), ping_(store_->NewClient()) {}

  std::string_view kind() const override { return "redis"; }
  util::EventLoop& loop() override { return loop_; }
  util::EventLoop& background() override { return background_; }

  std::shared_ptr<WatchSource> NewWatchSource(const SourceOptions& options,
                                              std::shared_ptr<spdlog::logger> logger,
                                              std::weak_ptr<WatchSink> sink) override {
    return NewRedisWatchSource(store_, &loop_, options, std::move(logger), std::move(sink));
  }
  std::unique_ptr<LeaseHolder> NewLeaseHolder() override {
    return NewRedisLeaseHolder(store_, &loop_, &background_);
  }
  std::unique_ptr<InstanceWriter> NewInstanceWriter(absl::Duration timeout) override {
    if (timeout <= absl::ZeroDuration()) timeout = store_->options.call_timeout;
    auto store = std::make_shared<redis::Store>(*store_);
    store->options.call_timeout = timeout;
    return std::make_unique<RedisInstanceWriter>(std::move(store), &background_);
  }
  absl::Status Ping(absl::Duration timeout) override {
    auto r = ping_->Command({"PING"}, timeout);
    return r.status();
  }
  const std::shared_ptr<const redis::Store>& store() const { return store_; }

 private:
  std::shared_ptr<const redis::Store> store_;
  std::unique_ptr<redis::Client> ping_;
  util::EventLoop loop_{"redis-loop"};
  util::EventLoop background_{"redis-bg"};
};

}  // namespace

namespace redis {
std::shared_ptr<const Store> StoreOf(const StoreBackend& backend) {
  const auto* redis = dynamic_cast<const RedisBackend*>(&backend);
  return redis != nullptr ? redis->store() : nullptr;
}
}  // namespace redis

RedisOptions RedisOptions::FromEnv() {
  RedisOptions out;
  if (const char* env = std::getenv("DISCOVERY_STORE");
      env != nullptr &&
      (absl::StartsWith(env, "redis://") || absl::StartsWith(env, "redis+sentinel://"))) {
    out.url = env;
  }
  return out;
}

absl::StatusOr<std::shared_ptr<Connection>> ConnectRedis(const RedisOptions& options) {
  auto url = redis::ParseUrl(options.url);
  if (!url.ok()) return url.status();
  if (options.ns.empty() || options.ns.find_first_of("{}") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("redis namespace '", options.ns, "': must be non-empty without { or }"));
  }
  if (options.call_timeout <= absl::ZeroDuration() || options.log_max_len < 100) {
    return absl::InvalidArgumentError("redis options: call_timeout > 0 and log_max_len >= 100");
  }
  auto store = std::make_shared<redis::Store>();
  store->options = options;
  store->url = *url;
  store->keys = redis::Keys(options.ns);
  return Connection::FromBackend(std::make_shared<RedisBackend>(std::move(store)));
}

}  // namespace discovery
