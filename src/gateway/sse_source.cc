// The gateway's watch source: one SSE stream (GET /sd/v1/subscribe) per Watcher, read by its
// own thread with Boost.Beast and fed to the watcher's cache on the backend's loop.
//
//   init* synced{resumed:false}  -> ApplyState (history_reset after a `reset` frame; another
//                                   epoch is another store_id, which replaces the cache too)
//   update/remove ... (id: on the last frame of a revision) -> ApplyChanges + EndOfBatch
//   synced{resumed:true}         -> nothing to replace: the ring's events came before it
//   reset                        -> forget the position; the next state replaces the cache
//
// Reconnects (stream ended, refused, or silent for longer than silence_timeout) go to the
// next URL after a util::Backoff pause (reset by each `synced`) and resume with Last-Event-ID.
#include <spdlog/spdlog.h>

#include <atomic>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <condition_variable>
#include <functional>
#include <limits>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "discovery/instance.h"
#include "gateway/gateway_backend.h"
#include "gateway/sse_parser.h"
#include "gateway/transport.h"
#include "nlohmann/json.hpp"
#include "util/clock.h"
#include "util/event_loop.h"
#include "util/logging.h"

namespace discovery::gateway {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
using nlohmann::json;

std::chrono::steady_clock::duration Chrono(absl::Duration d) {
  return absl::ToChronoMicroseconds(std::max(d, absl::Milliseconds(1)));
}

class SseSource final : public WatchSource, public std::enable_shared_from_this<SseSource> {
 public:
  SseSource(SseSourceOptions options, SourceOptions requested, util::EventLoop& loop,
            std::shared_ptr<spdlog::logger> logger, std::weak_ptr<WatchSink> sink)
      : options_(std::move(options)),
        requested_(std::move(requested)),
        loop_(loop),
        logger_(std::move(logger)),
        sink_(std::move(sink)) {}
  ~SseSource() override { Stop(); }

  void Start() override {
    // The watched range is the gateway's prefix, or `<prefix><type>/` (WatcherOptions::type:
    // subscribed with ?type=, discoveryd filters).
    const std::string& want = requested_.prefix;
    std::string rest = want.size() >= options_.prefix.size() &&
                               want.compare(0, options_.prefix.size(), options_.prefix) == 0
                           ? want.substr(options_.prefix.size())
                           : std::string("\x01");
    if (!rest.empty()) {
      const size_t slash = rest.find('/');
      if (slash == std::string::npos || slash + 1 != rest.size() || slash == 0 ||
          !ValidateName("type", rest.substr(0, slash)).ok()) {
        Post({[why = absl::InvalidArgumentError(absl::StrCat(
                   "gateway mode: the watched prefix \"", want, "\" is not the gateway's (\"",
                   options_.prefix, "\") or <prefix><type>/"))](WatchSink& s) {
          s.SyncFailed(why);
        }});
        return;
      }
      type_query_ = absl::StrCat("?type=", rest.substr(0, slash));
    }
    if (options_.urls.empty()) return;
    thread_ = std::thread([this] { Run(); });
  }

  void Stop() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
      stopping_ = true;
      if (conn_ != nullptr) conn_->Cancel();
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    stopped_->store(true);
    if (!loop_.InLoopThread()) loop_.RunSync([] {});
  }

  SourceStats stats() const override {
    SourceStats s;
    s.resync_backoffs = reconnects_.load();
    s.resync_delay = absl::Milliseconds(last_delay_ms_.load());
    return s;
  }

 private:
  using Action = std::function<void(WatchSink&)>;

  // Runs `actions` on the loop, in order, unless the source was stopped.
  void Post(std::vector<Action> actions) {
    if (actions.empty()) return;
    loop_.Post([stopped = stopped_, sink = sink_, actions = std::move(actions)] {
      if (stopped->load()) return;
      auto s = sink.lock();
      if (!s) return;
      for (const Action& a : actions) a(*s);
    });
  }

  void Run() {
    util::Backoff backoff(absl::Milliseconds(100), absl::Seconds(5));
    size_t index = 0;
    while (true) {
      bool synced = false;
      absl::Status s = StreamOnce(options_.urls[index], &synced);
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stopping_) return;
      }
      if (synced) backoff.Reset();
      SPDLOG_LOGGER_WARN(logger_, "gateway stream {} ended: {}; reconnecting",
                         options_.urls[index].text, s.ToString());
      if (!s.ok() && !synced_once_) Post({[s](WatchSink& sink) { sink.SyncFailed(s); }});
      index = (index + 1) % options_.urls.size();
      absl::Duration delay = backoff.Next();
      reconnects_.fetch_add(1);
      last_delay_ms_.store(absl::ToInt64Milliseconds(delay));
      const absl::Time until = util::MonoNow() + delay;
      std::unique_lock<std::mutex> lock(mu_);
      while (!stopping_ && util::MonoNow() < until) {
        cv_.wait_for(lock, Chrono(std::min(until - util::MonoNow(), absl::Milliseconds(50))));
      }
      if (stopping_) return;
    }
  }

  absl::Status StreamOnce(const Url& url, bool* synced) {
    if (url.tls && options_.tls == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("gateway ", url.text, ": https without a TLS context"));
    }
    auto conn = std::make_shared<GatewayConn>(url.tls ? options_.tls : nullptr);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return absl::CancelledError("stopped");
      conn_ = conn;
    }
    struct Clear {
      SseSource* self;
      ~Clear() {
        std::lock_guard<std::mutex> lock(self->mu_);
        self->conn_.reset();
      }
    } clear{this};
    // Connect (and the TLS handshake) within connect_timeout; Stop() cancels it at once.
    if (absl::Status s = conn->Connect(url, util::MonoNow() + options_.connect_timeout); !s.ok()) {
      return s;
    }
    beast::error_code ec;
    http::request<http::empty_body> req{http::verb::get,
                                        url.base_path + "/sd/v1/subscribe" + type_query_, 11};
    req.set(http::field::host, url.host + ":" + url.port);
    req.set(http::field::accept, "text/event-stream");
    req.set(http::field::cache_control, "no-cache");
    if (!options_.api_token.empty()) req.set("X-API-Token", options_.api_token);
    if (!last_id_.empty()) req.set("Last-Event-ID", last_id_);
    conn->lowest().expires_after(Chrono(options_.connect_timeout));
    conn->With([&](auto& stream) {
      http::async_write(stream, req, [&ec](beast::error_code e, size_t) { ec = e; });
    });
    conn->Run();
    if (ec) return absl::UnavailableError(absl::StrCat("send to ", url.text, ": ", ec.message()));

    beast::flat_buffer& buffer = conn->buffer;
    http::response_parser<http::buffer_body> parser;
    // No limit (a stream never ends). Not boost::none: Boost 1.74 compares a Content-Length
    // with the empty optional and reports body_limit for every non-200 answer with a body.
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    conn->lowest().expires_after(Chrono(options_.connect_timeout));
    conn->With([&](auto& stream) {
      http::async_read_header(stream, buffer, parser,
                              [&ec](beast::error_code e, size_t) { ec = e; });
    });
    conn->Run();
    if (ec) return absl::UnavailableError(absl::StrCat("read ", url.text, ": ", ec.message()));
    const int status = static_cast<int>(parser.get().result_int());
    std::string error_body;
    SseParser sse;
    pending_.kvs.clear();
    changes_.clear();
    char buf[16384];
    while (!parser.is_done()) {
      parser.get().body().data = buf;
      parser.get().body().size = sizeof(buf);
      // No byte (event or keep-alive comment) for the silence timeout: the stream is dead.
      conn->lowest().expires_after(Chrono(options_.silence_timeout));
      conn->With([&](auto& stream) {
        http::async_read_some(stream, buffer, parser,
                              [&ec](beast::error_code e, size_t) { ec = e; });
      });
      conn->Run();
      if (ec == http::error::need_buffer) ec = {};
      const size_t n = sizeof(buf) - parser.get().body().size;
      if (status != 200) {
        if (error_body.size() < 4096) error_body.append(buf, n);
      } else if (n > 0) {
        std::vector<Action> actions;
        bool ok = sse.Feed(std::string_view(buf, n),
                           [&](const SseParser::Event& e) { OnEvent(e, synced, &actions); });
        Post(std::move(actions));
        if (!ok) return absl::DataLossError("SSE line or event over the parser's limit");
      }
      if (ec == beast::error::timeout) {
        SPDLOG_LOGGER_WARN(logger_, "gateway stream {} silent for {}: replaced", url.text,
                           absl::FormatDuration(options_.silence_timeout));
        return absl::DeadlineExceededError("stream silent");
      }
      if (ec) break;
    }
    if (status != 200) return StatusFromHttp(status, error_body);
    return absl::UnavailableError(absl::StrCat("stream from ", url.text, " ended"));
  }

  void OnEvent(const SseParser::Event& e, bool* synced, std::vector<Action>* out) {
    json d = json::parse(e.data, nullptr, false);
    if (d.is_discarded() || !d.is_object()) return;
    if (e.type == "init" || e.type == "update" || e.type == "remove") {
      const json& in = d.value("instance", json());
      if (!in.is_object() || !in.contains("type") || !in.contains("instanceId") ||
          !in["type"].is_string() || !in["instanceId"].is_string()) {
        return;
      }
      std::string key = absl::StrCat(options_.prefix, in["type"].get<std::string>(), "/",
                                     in["instanceId"].get<std::string>());
      const int64_t rev = d.value("revision", int64_t{0});
      if (e.type == "init") {
        pending_.kvs.push_back({std::move(key), in.dump(), 0});
      } else {
        changes_.push_back(
            {std::move(key), e.type == "remove" ? "" : in.dump(), rev, e.type == "remove"});
      }
      if (e.type != "init" && e.has_id) {
        out->push_back([changes = std::move(changes_), rev](WatchSink& s) {
          std::vector<SourceChange> v;
          v.reserve(changes.size());
          for (const Owned& c : changes) v.push_back({c.key, c.value, c.revision, c.deleted});
          s.ApplyChanges(v, rev);
          s.EndOfBatch();
        });
        changes_.clear();
        last_id_ = e.last_id;
      }
    } else if (e.type == "synced") {
      *synced = true;
      synced_once_ = true;
      if (!d.value("resumed", false)) {
        SourceState state = std::move(pending_);
        pending_ = SourceState{};
        state.revision = d.value("revision", int64_t{0});
        std::string epoch = e.last_id.substr(0, e.last_id.find('.'));
        state.store_id = std::hash<std::string>{}(epoch) | 1;
        // Keys carry no mod revision on this wire: a fresh one per state makes the cache
        // compare every value with what it holds (never "same revision, same value").
        const int64_t marker = --state_marker_;
        for (auto& kv : state.kvs) kv.revision = marker;
        const bool reset = reset_pending_;
        reset_pending_ = false;
        out->push_back([state = std::move(state), reset](WatchSink& s) mutable {
          s.ApplyState(state, reset);
        });
      } else {
        out->push_back([](WatchSink& s) { s.EndOfBatch(); });
      }
      if (e.has_id) last_id_ = e.last_id;
    } else if (e.type == "reset") {
      reset_pending_ = true;
      pending_.kvs.clear();
      changes_.clear();
      last_id_.clear();
    }
  }

  struct Owned {
    std::string key;
    std::string value;
    int64_t revision;
    bool deleted;
  };

  const SseSourceOptions options_;
  const SourceOptions requested_;
  util::EventLoop& loop_;
  std::shared_ptr<spdlog::logger> logger_;
  std::weak_ptr<WatchSink> sink_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;              // guarded by mu_
  std::shared_ptr<GatewayConn> conn_;  // guarded by mu_: the stream being read
  // Shared with the tasks posted to the loop (they may run after the source is gone).
  std::shared_ptr<std::atomic<bool>> stopped_ = std::make_shared<std::atomic<bool>>(false);
  std::atomic<uint64_t> reconnects_{0};
  std::atomic<int64_t> last_delay_ms_{0};
  std::string type_query_;  // set by Start
  // Reader thread only.
  std::string last_id_;
  SourceState pending_;
  std::vector<Owned> changes_;
  bool reset_pending_ = false;
  bool synced_once_ = false;
  int64_t state_marker_ = 0;
};

}  // namespace

std::shared_ptr<WatchSource> NewSseWatchSource(SseSourceOptions options,
                                               const SourceOptions& requested,
                                               util::EventLoop& loop,
                                               std::shared_ptr<spdlog::logger> logger,
                                               std::weak_ptr<WatchSink> sink) {
  return std::make_shared<SseSource>(std::move(options), requested, loop, std::move(logger),
                                     std::move(sink));
}

}  // namespace discovery::gateway
