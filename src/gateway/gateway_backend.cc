#include "gateway/gateway_backend.h"

#include <spdlog/spdlog.h>

#include <boost/asio/ssl/context.hpp>
#include <cstdlib>
#include <map>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gateway/transport.h"
#include "nlohmann/json.hpp"
#include "store_backend.h"
#include "util/event_loop.h"
#include "util/logging.h"
#include "util/sync.h"

namespace discovery {
namespace gateway {
namespace {

using nlohmann::json;

// Lease ids per heartbeat call: ~20 KB of JSON, well under discoveryd's limit (LeaseApi's
// max_batch, 2,000; more is answered 413) and its 64 KiB default body limit.
constexpr size_t kMaxHeartbeatBatch = 1000;

std::string Hex(int64_t v) { return absl::StrFormat("%x", v); }

int64_t ParseHexId(const json& j) {
  if (!j.is_string()) return 0;
  uint64_t v = 0;
  if (!absl::SimpleHexAtoi(j.get<std::string>(), &v)) return 0;
  return static_cast<int64_t>(v);
}

// A 2xx answer's JSON body, or the status of the answer.
absl::StatusOr<json> JsonCall(HttpClient& http, const std::string& method, const std::string& path,
                              const json& body, absl::Duration timeout = absl::ZeroDuration()) {
  auto r = http.Call(method, path, body.is_null() ? std::string() : body.dump(), timeout);
  if (!r.ok()) return r.status();
  if (r->status < 200 || r->status > 299) return StatusFromHttp(r->status, r->body);
  json j = json::parse(r->body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InternalError(absl::StrCat("gateway ", r->url, ": answer is not a JSON object"));
  }
  return j;
}

// Every lease of the process, refreshed by ONE batch call per interval on its own loop (a
// blocking HTTP call never delays the backend's loop or background executor).
class Heartbeats {
 public:
  Heartbeats(std::shared_ptr<HttpClient> http, util::EventLoop& listeners,
             std::shared_ptr<spdlog::logger> logger)
      : http_(std::move(http)), listeners_(listeners), logger_(std::move(logger)) {}
  ~Heartbeats() { Stop(); }
  void Stop() { loop_.Stop(); }

  void Add(int64_t lease, absl::Duration ttl, absl::Duration interval,
           LeaseHolder::Listener listener) {
    util::MutexLock lock(&mu_);
    leases_[lease] =
        Entry{ttl, interval, util::MonoNow(), false, ++generation_, std::move(listener)};
    // One timer chain: armed when the first lease comes, brought forward when a lease needs a
    // shorter interval (a Tick running now recomputes the period itself).
    if (!armed_) {
      armed_ = true;
      period_ = interval;
      timer_ = loop_.PostAfter(interval, [this] { Tick(); });
    } else if (interval < period_ && loop_.Cancel(timer_)) {
      period_ = interval;
      timer_ = loop_.PostAfter(interval, [this] { Tick(); });
    }
  }

  void Remove(int64_t lease) {
    {
      util::MutexLock lock(&mu_);
      leases_.erase(lease);
    }
    // A listener call already posted checks the lease is still there; wait for one running.
    if (!listeners_.InLoopThread()) listeners_.RunSync([] {});
  }

  uint64_t calls() const { return calls_.load(); }
  uint64_t failures() const { return failures_.load(); }

 private:
  struct Entry {
    absl::Duration ttl;
    absl::Duration interval;
    absl::Time last_ok;
    bool at_risk;
    uint64_t generation;
    LeaseHolder::Listener listener;
  };

  struct Pending {
    int64_t id;
    LeaseHolder::EventType type;
    uint64_t generation;
    LeaseHolder::Listener lost;  // kLost: the entry is erased, its listener moved here
  };

  void Tick() {
    std::vector<int64_t> ids;
    absl::Duration period;
    absl::Duration min_ttl;
    {
      util::MutexLock lock(&mu_);
      if (leases_.empty()) {
        armed_ = false;
        return;
      }
      period = absl::InfiniteDuration();
      min_ttl = absl::InfiniteDuration();
      ids.reserve(leases_.size());
      for (const auto& [id, e] : leases_) {
        ids.push_back(id);
        period = std::min(period, e.interval);
        min_ttl = std::min(min_ttl, e.ttl);
      }
      period_ = period;
    }
    const absl::Time started = util::MonoNow();
    // Chunks of at most kMaxHeartbeatBatch ids, one after the other on the same keep-alive
    // connection. Each chunk may take a third of the TTL (not of the interval: a first sight
    // of many leases at a discoveryd costs it an etcd round trip); one chunk failing does not
    // stop the others.
    const absl::Duration chunk_timeout = std::max(period, min_ttl / 3);
    bool failed = false;
    std::vector<Pending> events;
    for (size_t from = 0; from < ids.size(); from += kMaxHeartbeatBatch) {
      // A gateway that fails slowly must not hold the at-risk check back for many chunks.
      if (failed && util::MonoNow() - started >= min_ttl / 3) break;
      const size_t to = std::min(ids.size(), from + kMaxHeartbeatBatch);
      json chunk = json::array();
      for (size_t i = from; i < to; ++i) chunk.push_back(Hex(ids[i]));
      calls_.fetch_add(1);
      auto r = JsonCall(*http_, "POST", "/sd/v1/heartbeat", json{{"leases", std::move(chunk)}},
                        chunk_timeout);
      const absl::Time now = util::MonoNow();
      util::MutexLock lock(&mu_);
      if (!r.ok()) {
        failed = true;
        uint64_t n = failures_.fetch_add(1) + 1;
        if (n == 1 || n % 100 == 0) {
          SPDLOG_LOGGER_WARN(logger_, "gateway heartbeat failed ({} so far): {}", n,
                             r.status().ToString());
        }
        continue;
      }
      if (auto g = r->find("gone"); g != r->end() && g->is_array()) {
        for (const json& j : *g) {
          auto it = leases_.find(ParseHexId(j));
          if (it == leases_.end()) continue;
          events.push_back(
              {it->first, LeaseHolder::EventType::kLost, 0, std::move(it->second.listener)});
          leases_.erase(it);
        }
      }
      for (size_t i = from; i < to; ++i) {
        auto it = leases_.find(ids[i]);
        if (it == leases_.end()) continue;
        it->second.last_ok = now;
        if (it->second.at_risk) {
          it->second.at_risk = false;
          events.push_back(
              {it->first, LeaseHolder::EventType::kAlive, it->second.generation, nullptr});
        }
      }
    }
    // The next round starts one period after this one started (not after it ended).
    const absl::Time now = util::MonoNow();
    absl::Duration next = std::max(absl::ZeroDuration(), period - (now - started));
    {
      util::MutexLock lock(&mu_);
      if (!failed) {
        backoff_.Reset();
      } else {
        // Retry sooner than the interval (jittered, capped at it).
        next = std::min(next, backoff_.Next());
        for (auto& [id, e] : leases_) {
          if (!e.at_risk && now - e.last_ok > e.ttl * 2 / 3) {
            e.at_risk = true;
            events.push_back({id, LeaseHolder::EventType::kAtRisk, e.generation, nullptr});
          }
        }
      }
    }
    for (Pending& p : events) Notify(std::move(p));
    util::MutexLock lock(&mu_);
    timer_ = loop_.PostAfter(next, [this] { Tick(); });
  }

  // Listeners run on the backend's loop; a lease removed (or re-added) meanwhile is not
  // notified, except kLost, whose entry is gone by design.
  void Notify(Pending p) {
    listeners_.Post([this, p = std::move(p)] {
      if (p.type == LeaseHolder::EventType::kLost) {
        if (p.lost) p.lost(LeaseHolder::Event{p.type, p.id});
        return;
      }
      LeaseHolder::Listener l;
      {
        util::MutexLock lock(&mu_);
        auto it = leases_.find(p.id);
        if (it == leases_.end() || it->second.generation != p.generation) return;
        l = it->second.listener;
      }
      l(LeaseHolder::Event{p.type, p.id});
    });
  }

  std::shared_ptr<HttpClient> http_;
  util::EventLoop& listeners_;
  std::shared_ptr<spdlog::logger> logger_;
  util::EventLoop loop_{"gw-heartbeat"};
  util::Mutex mu_;
  std::map<int64_t, Entry> leases_ ABSL_GUARDED_BY(mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  bool armed_ ABSL_GUARDED_BY(mu_) = false;
  absl::Duration period_ ABSL_GUARDED_BY(mu_);
  util::EventLoop::TimerId timer_ ABSL_GUARDED_BY(mu_) = 0;
  util::Backoff backoff_ ABSL_GUARDED_BY(mu_){absl::Milliseconds(200), absl::Seconds(5)};
  std::atomic<uint64_t> calls_{0};
  std::atomic<uint64_t> failures_{0};
};

class GatewayLeaseHolder final : public LeaseHolder {
 public:
  GatewayLeaseHolder(std::shared_ptr<HttpClient> http, std::shared_ptr<Heartbeats> heartbeats,
                     util::EventLoop& background)
      : http_(std::move(http)), heartbeats_(std::move(heartbeats)), background_(background) {}

  static absl::StatusOr<int64_t> GrantOn(HttpClient& http, absl::Duration ttl) {
    auto j =
        JsonCall(http, "POST", "/sd/v1/leases", json{{"ttlSeconds", absl::ToInt64Seconds(ttl)}});
    if (!j.ok()) return j.status();
    int64_t id = ParseHexId(j->value("leaseId", json()));
    if (id == 0) return absl::InternalError("gateway granted a lease without a valid leaseId");
    return id;
  }
  static absl::Status RevokeOn(HttpClient& http, int64_t lease) {
    return JsonCall(http, "DELETE", absl::StrCat("/sd/v1/leases/", Hex(lease)), json()).status();
  }
  absl::StatusOr<int64_t> Grant(absl::Duration ttl) override { return GrantOn(*http_, ttl); }
  void GrantAsync(absl::Duration ttl, GrantCallback done) override {
    background_.Post([http = http_, ttl, done = std::move(done)] { done(GrantOn(*http, ttl)); });
  }
  void KeepAlive(int64_t lease, absl::Duration ttl, absl::Duration interval,
                 Listener listener) override {
    heartbeats_->Add(lease, ttl, interval, std::move(listener));
  }
  void Forget(int64_t lease) override { heartbeats_->Remove(lease); }
  absl::Status Revoke(int64_t lease) override { return RevokeOn(*http_, lease); }
  void RevokeAsync(int64_t lease, std::function<void(absl::Status)> done) override {
    background_.Post(
        [http = http_, lease, done = std::move(done)] { done(RevokeOn(*http, lease)); });
  }

 private:
  std::shared_ptr<HttpClient> http_;
  std::shared_ptr<Heartbeats> heartbeats_;
  util::EventLoop& background_;
};

std::optional<InstanceWriter::Current> CurrentFrom(const json& j) {
  if (!j.is_object()) return std::nullopt;
  InstanceWriter::Current c;
  c.value = j.value("value", std::string());
  c.lease_id = ParseHexId(j.value("leaseId", json()));
  c.mod_revision = j.value("modRevision", int64_t{0});
  return c;
}

class GatewayWriter final : public InstanceWriter {
 public:
  GatewayWriter(std::shared_ptr<HttpClient> http, util::EventLoop& background,
                absl::Duration timeout)
      : http_(std::move(http)), background_(background), timeout_(timeout) {}

  static absl::StatusOr<int64_t> PutOn(HttpClient& http, const std::string& key,
                                       const std::string& value, int64_t lease,
                                       absl::Duration timeout) {
    auto j = JsonCall(http, "POST", "/sd/v1/writes/put-if-absent",
                      json{{"key", key}, {"value", value}, {"leaseId", Hex(lease)}}, timeout);
    if (!j.ok()) return j.status();
    return j->value("revision", int64_t{0});
  }
  absl::StatusOr<int64_t> PutIfAbsent(const std::string& key, const std::string& value,
                                      int64_t lease) override {
    return PutOn(*http_, key, value, lease, timeout_);
  }
  void PutIfAbsentAsync(const std::string& key, const std::string& value, int64_t lease,
                        PutCallback done) override {
    background_.Post([http = http_, timeout = timeout_, key, value, lease, done = std::move(done)] {
      done(PutOn(*http, key, value, lease, timeout));
    });
  }
  absl::StatusOr<WriteResult> PutIfUnchanged(const std::string& key, const std::string& value,
                                             int64_t lease, int64_t expected) override {
    auto j = JsonCall(
        *http_, "POST", "/sd/v1/writes/put-if-unchanged",
        json{{"key", key}, {"value", value}, {"leaseId", Hex(lease)}, {"expected", expected}},
        timeout_);
    if (!j.ok()) return j.status();
    WriteResult w;
    w.written = j->value("written", false);
    w.revision = j->value("revision", int64_t{0});
    w.store_revision = j->value("storeRevision", int64_t{0});
    w.current = CurrentFrom(j->value("current", json()));
    return w;
  }
  absl::StatusOr<DeleteResult> Delete(const std::string& key, DeleteGuard guard) override {
    json body{{"key", key}};
    if (guard.lease != 0) body["lease"] = Hex(guard.lease);
    if (guard.mod_revision != 0) body["modRevision"] = guard.mod_revision;
    auto j = JsonCall(*http_, "POST", "/sd/v1/writes/delete", body, timeout_);
    if (!j.ok()) return j.status();
    DeleteResult d;
    d.deleted = j->value("deleted", false);
    d.lease_id = ParseHexId(j->value("leaseId", json()));
    d.store_revision = j->value("storeRevision", int64_t{0});
    d.current = CurrentFrom(j->value("current", json()));
    return d;
  }

 private:
  std::shared_ptr<HttpClient> http_;
  util::EventLoop& background_;
  absl::Duration timeout_;
};

class GatewayBackend final : public StoreBackend {
 public:
  GatewayBackend(GatewayClientOptions options, std::vector<Url> urls,
                 std::shared_ptr<boost::asio::ssl::context> tls)
      : options_(std::move(options)),
        urls_(urls),
        tls_(tls),
        logger_(util::ComponentLogger(options_.logger, "discovery.gateway")),
        http_(std::make_shared<HttpClient>(std::move(urls), options_.api_token,
                                           options_.call_timeout, std::move(tls))),
        heartbeats_(std::make_shared<Heartbeats>(http_, loop_, logger_)) {}
  ~GatewayBackend() override {
    heartbeats_->Stop();
    loop_.Stop();
    background_.Stop();
  }

  std::string_view kind() const override { return "gateway"; }
  util::EventLoop& loop() override { return loop_; }
  util::EventLoop& background() override { return background_; }

  std::shared_ptr<WatchSource> NewWatchSource(const SourceOptions& options,
                                              std::shared_ptr<spdlog::logger> logger,
                                              std::weak_ptr<WatchSink> sink) override {
    SseSourceOptions so{.urls = urls_,
                        .api_token = options_.api_token,
                        .prefix = options_.prefix,
                        .silence_timeout = options_.stream_silence_timeout,
                        .connect_timeout = options_.call_timeout,
                        .tls = tls_};
    return NewSseWatchSource(std::move(so), options, loop_, logger ? logger : logger_,
                             std::move(sink));
  }
  std::unique_ptr<LeaseHolder> NewLeaseHolder() override {
    return std::make_unique<GatewayLeaseHolder>(http_, heartbeats_, background_);
  }
  std::unique_ptr<InstanceWriter> NewInstanceWriter(absl::Duration timeout) override {
    return std::make_unique<GatewayWriter>(http_, background_, timeout);
  }
  absl::Status Ping(absl::Duration timeout) override {
    auto r = http_->Call("GET", "/healthz", "", timeout);
    if (!r.ok()) return r.status();
    if (r->status != 200) return StatusFromHttp(r->status, r->body);
    return absl::OkStatus();
  }

 private:
  GatewayClientOptions options_;
  std::vector<Url> urls_;
  std::shared_ptr<boost::asio::ssl::context> tls_;
  std::shared_ptr<spdlog::logger> logger_;
  util::EventLoop loop_{"gw-loop"};
  util::EventLoop background_{"gw-background"};
  std::shared_ptr<HttpClient> http_;
  std::shared_ptr<Heartbeats> heartbeats_;
};

}  // namespace
}  // namespace gateway

GatewayClientOptions GatewayClientOptions::FromEnv() {
  GatewayClientOptions o;
  if (const char* v = std::getenv("DISCOVERY_GATEWAY"); v != nullptr && *v != '\0') {
    o.urls = SplitEndpoints(v);
  }
  if (const char* v = std::getenv("DISCOVERY_API_TOKEN"); v != nullptr) o.api_token = v;
  if (const char* v = std::getenv("DISCOVERY_GATEWAY_CA"); v != nullptr) o.ca_file = v;
  if (const char* v = std::getenv("DISCOVERY_GATEWAY_CERT"); v != nullptr) o.cert_file = v;
  if (const char* v = std::getenv("DISCOVERY_GATEWAY_KEY"); v != nullptr) o.key_file = v;
  return o;
}

absl::StatusOr<std::shared_ptr<Connection>> ConnectGateway(const GatewayClientOptions& options) {
  if (options.urls.empty()) {
    return absl::InvalidArgumentError("gateway mode needs at least one URL (DISCOVERY_GATEWAY)");
  }
  if (options.prefix.empty() || options.prefix.back() != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("gateway prefix must end with '/', got \"", options.prefix, "\""));
  }
  if (options.call_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("gateway call_timeout must be positive");
  }
  std::vector<gateway::Url> urls;
  bool https = false;
  for (const std::string& u : options.urls) {
    auto parsed = gateway::ParseUrl(u);
    if (!parsed.ok()) return parsed.status();
    https = https || parsed->tls;
    urls.push_back(*std::move(parsed));
  }
  // The TLS files are loaded (and checked) once, here, when any URL is https://.
  std::shared_ptr<boost::asio::ssl::context> tls;
  if (https) {
    auto ctx = gateway::MakeClientTlsContext(
        {.ca_file = options.ca_file, .cert_file = options.cert_file, .key_file = options.key_file});
    if (!ctx.ok()) return ctx.status();
    tls = *std::move(ctx);
  }
  auto backend =
      std::make_shared<gateway::GatewayBackend>(options, std::move(urls), std::move(tls));
  return Connection::FromBackend(std::move(backend));
}

}  // namespace discovery
