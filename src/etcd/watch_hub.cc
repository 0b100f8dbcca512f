#include "etcd/watch_hub.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "etcd/client.h"
#include "spdlog/spdlog.h"
#include "util/clock.h"

namespace discovery::etcd {

namespace {
// How often a progress request probes the stream, and how long an answer may take.
constexpr absl::Duration kProbeEvery = absl::Seconds(2);
constexpr absl::Duration kProbeTimeout = absl::Seconds(3);
}  // namespace

WatchHub::WatchHub(Client* client)
    : client_(client), logger_(client->logger()), loop_(client->loop()) {}

WatchHub::~WatchHub() = default;

WatchHub::WatchId WatchHub::Add(Spec spec, Listener listener) {
  WatchId id = 0;
  loop_.RunSync([&] {
    if (shutdown_) return;
    id = next_id_++;
    Watch w;
    w.next_revision = spec.start_revision;
    w.spec = std::move(spec);
    w.listener = std::move(listener);
    watches_.emplace(id, std::move(w));
    if (stream_ != nullptr) {
      SendCreate(id);
    } else if (!connecting_) {
      Connect();
    }
  });
  return id;
}

void WatchHub::Remove(WatchId id) {
  loop_.RunSync([&] {
    auto it = watches_.find(id);
    if (it == watches_.end()) return;
    if (it->second.server_id >= 0) {
      by_server_id_.erase(it->second.server_id);
      if (stream_ != nullptr) {
        pb::WatchRequest req;
        req.mutable_cancel_request()->set_watch_id(it->second.server_id);
        stream_->Send(std::move(req));
      }
    }
    for (WatchId& p : pending_creates_) {
      if (p == id) p = 0;
    }
    watches_.erase(it);
  });
}

void WatchHub::BreakStreamForTest() {
  loop_.RunSync([&] {
    if (stream_ != nullptr) stream_->Cancel();
  });
}

void WatchHub::SetPausedForTest(bool paused) {
  loop_.RunSync([&] {
    paused_ = paused;
    if (paused && stream_ != nullptr) stream_->Cancel();
    if (!paused && stream_ == nullptr && !connecting_) Connect();
  });
}

void WatchHub::Shutdown() {
  loop_.RunSync([&] {
    shutdown_ = true;
    watches_.clear();
    if (liveness_timer_ != 0) loop_.Cancel(liveness_timer_);
    if (stream_ != nullptr) stream_->Cancel();
    stream_.reset();
  });
  streams_.AwaitNone();
}

void WatchHub::Connect() {
  if (shutdown_ || paused_ || watches_.empty()) return;
  if (!TokenReadyOrFetch(client_, loop_, &connecting_, [this](bool has_token) {
        if (!has_token) {
          ScheduleReconnect();
        } else if (stream_ == nullptr) {
          Connect();
        }
      })) {
    return;
  }
  int index = 0;
  std::shared_ptr<Stubs> stubs = client_->CurrentStubs(&index);
  const uint64_t generation = ++generation_;
  open_streams_.store(1);
  by_server_id_.clear();
  pending_creates_.clear();
  progress_sent_ = absl::InfiniteFuture();
  last_message_ = util::MonoNow();
  SPDLOG_LOGGER_DEBUG(logger_, "opening Watch stream to {}", client_->endpoints()[index].url);
  stream_ = WatchStream::Start(
      &streams_,
      [&](grpc::ClientContext* ctx,
          grpc::ClientBidiReactor<pb::WatchRequest, pb::WatchResponse>* r) {
        client_->PrepareContext(ctx, absl::InfiniteFuture());
        // A member without a leader then cancels the watch instead of going silent.
        ctx->AddMetadata("hasleader", "true");
        stubs->watch->async()->Watch(ctx, r);
      },
      {.on_response = [this,
                       generation](pb::WatchResponse& r) { OnResponse(generation, std::move(r)); },
       .on_done =
           [this, generation, index](bool had_response, const grpc::Status& status) {
             OnStreamDone(generation, index, had_response,
                          status.ok() ? std::string() : status.error_message());
           }},
      stubs);
  for (auto& [id, w] : watches_) {
    w.server_id = -1;
    SendCreate(id);
  }
  if (liveness_timer_ == 0) {
    liveness_timer_ = loop_.PostAfter(kProbeEvery, [this] {
      liveness_timer_ = 0;
      CheckLiveness();
    });
  }
}

void WatchHub::SendCreate(WatchId id) {
  Watch& w = watches_.at(id);
  pb::WatchRequest req;
  auto* c = req.mutable_create_request();
  c->set_key(w.spec.key);
  c->set_range_end(w.spec.range_end);
  c->set_start_revision(w.next_revision);
  c->set_prev_kv(w.spec.prev_kv);
  if (stream_->Send(std::move(req))) pending_creates_.push_back(id);
}

void WatchHub::ScheduleReconnect() {
  if (connecting_ || shutdown_ || watches_.empty()) return;
  connecting_ = true;
  absl::Duration delay = backoff_.Next();
  loop_.PostAfter(delay, [this] {
    connecting_ = false;
    if (stream_ == nullptr) Connect();
  });
}

void WatchHub::CheckLiveness() {
  if (shutdown_ || stream_ == nullptr) return;
  absl::Time now = util::MonoNow();
  if (progress_sent_ != absl::InfiniteFuture() && now - progress_sent_ > kProbeTimeout) {
    SPDLOG_LOGGER_WARN(logger_, "Watch stream unanswered for {}; reconnecting",
                       absl::FormatDuration(now - progress_sent_));
    stream_->Cancel();
    return;  // OnStreamDone reconnects
  }
  if (progress_sent_ == absl::InfiniteFuture() && now - last_message_ >= kProbeEvery) {
    pb::WatchRequest req;
    req.mutable_progress_request();
    if (stream_->Send(std::move(req))) progress_sent_ = now;
  }
  liveness_timer_ = loop_.PostAfter(absl::Milliseconds(500), [this] {
    liveness_timer_ = 0;
    CheckLiveness();
  });
}

void WatchHub::Break(WatchId id, const absl::Status& why) {
  auto it = watches_.find(id);
  if (it == watches_.end()) return;
  Listener listener = std::move(it->second.listener);
  std::string key = it->second.spec.key;
  if (it->second.server_id >= 0) by_server_id_.erase(it->second.server_id);
  watches_.erase(it);
  SPDLOG_LOGGER_INFO(logger_, "watch on {} ended: {}", key, why.ToString());
  if (listener.on_broken) listener.on_broken(why);
}

void WatchHub::OnResponse(uint64_t generation, pb::WatchResponse resp) {
  loop_.Post([this, generation, resp = std::move(resp)]() mutable {
    if (generation != generation_ || shutdown_) return;
    backoff_.Reset();
    last_message_ = util::MonoNow();
    progress_sent_ = absl::InfiniteFuture();
    if (resp.created()) {
      if (pending_creates_.empty()) return;
      WatchId id = pending_creates_.front();
      pending_creates_.pop_front();
      if (id == 0 || watches_.count(id) == 0) {
        // Removed while being created: cancel it on the server.
        if (resp.watch_id() >= 0 && !resp.canceled() && stream_ != nullptr) {
          pb::WatchRequest req;
          req.mutable_cancel_request()->set_watch_id(resp.watch_id());
          stream_->Send(std::move(req));
        }
        return;
      }
      Watch& w = watches_.at(id);
      uint64_t cluster = resp.header().cluster_id();
      if (w.spec.expected_cluster_id == 0) w.spec.expected_cluster_id = cluster;
      if (cluster != 0 && cluster != w.spec.expected_cluster_id) {
        if (resp.watch_id() >= 0 && stream_ != nullptr) {
          pb::WatchRequest req;
          req.mutable_cancel_request()->set_watch_id(resp.watch_id());
          stream_->Send(std::move(req));
        }
        Break(id, absl::FailedPreconditionError(
                      absl::StrFormat("etcd cluster changed (id %x, expected %x)", cluster,
                                      w.spec.expected_cluster_id)));
        return;
      }
      if (resp.canceled()) {
        if (resp.compact_revision() > 0) {
          Break(id, absl::OutOfRangeError(
                        absl::StrCat("revision compacted at ", resp.compact_revision())));
        } else {
          Break(id, absl::PermissionDeniedError(
                        absl::StrCat("etcd refused the watch: ", resp.cancel_reason())));
        }
        return;
      }
      w.server_id = resp.watch_id();
      by_server_id_[w.server_id] = id;
      return;
    }
    if (resp.watch_id() < 0) return;  // progress answer for the whole stream
    auto sit = by_server_id_.find(resp.watch_id());
    if (sit == by_server_id_.end()) return;  // cancelled meanwhile
    WatchId id = sit->second;
    Watch& w = watches_.at(id);
    if (resp.canceled()) {
      if (resp.compact_revision() > 0) {
        Break(id, absl::OutOfRangeError(
                      absl::StrCat("revision compacted at ", resp.compact_revision())));
      } else {
        Break(id, absl::UnavailableError(
                      absl::StrCat("etcd cancelled the watch: ", resp.cancel_reason())));
      }
      return;
    }
    if (resp.events_size() > 0) {
      w.next_revision =
          std::max(w.next_revision, resp.events(resp.events_size() - 1).kv().mod_revision() + 1);
      if (w.listener.on_events) w.listener.on_events(resp);
    }
  });
}

void WatchHub::OnStreamDone(uint64_t generation, int endpoint_index, bool had_response,
                            std::string error) {
  loop_.Post([this, generation, endpoint_index, had_response, error = std::move(error)] {
    if (generation != generation_ || shutdown_) return;
    stream_.reset();
    open_streams_.store(0);
    SPDLOG_LOGGER_INFO(logger_, "Watch stream to {} ended ({}); resuming {} watch(es)",
                       client_->endpoints()[endpoint_index].url, error.empty() ? "closed" : error,
                       watches_.size());
    if (!had_response || !error.empty()) client_->MarkFailed(endpoint_index);
    if (absl::StrContains(error, "auth token") && client_->has_auth()) client_->ClearToken();
    ScheduleReconnect();
  });
}

}  // namespace discovery::etcd
