#include "etcd/watch_hub.h"

#include <algorithm>

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
// A Read that returns sooner than this after the previous response was handled found its
// response already received: the reader is behind (see OnResponse).
constexpr absl::Duration kBehind = absl::Microseconds(20);
// This many such Reads in a row (a real backlog: a catch-up after a resync, a burst far beyond
// what the reader keeps up with) hand the drain to the loop thread, which then drains in
// batches while this thread keeps reading. Fewer in a row are drained here: at 10,000 puts/s
// a threshold of 4 handed most responses over, and the hop (a wake-up of the loop thread on a
// host already busy) cost more CPU and latency than batching saved (bench/README.md, "Watch
// path: per-event CPU": ack p50 0.07-0.10 -> 0-0.03 ms, 100k-instance callback p50 0.86 ->
// 0.53 ms).
constexpr int kBehindStreak = 64;
// When the reader thread last returned from OnResponse, and its Reads in a row that returned
// within kBehind (one reader per thread).
thread_local absl::Time reader_returned_at = absl::InfinitePast();
thread_local int reader_behind_streak = 0;
}  // namespace

WatchHub::WatchHub(Client* client)
    : client_(client),
      logger_(client->logger()),
      loop_(client->loop()),
      session_(client, client->loop(),
               {.name = "Watch",
                .backoff_initial = absl::Milliseconds(100),
                .backoff_max = absl::Seconds(5),
                .immediate_first_retry = false,
                .stall_timeout = kProbeTimeout,
                .fresh_token_after_stall = true,
                .fresh_token_after_error = true},
               {.wanted = [this] { return !shutdown_ && !paused_ && !watches_.empty(); },
                .open = [this](const StreamSession::OpenContext& oc) { return OpenStream(oc); },
                .cancel =
                    [this] {
                      if (stream_ != nullptr) stream_->Cancel();
                    },
                .closed = [this](const StreamSession::Ended&) { OnStreamClosed(); }}) {}

WatchHub::~WatchHub() = default;

std::string WatchHub::RangeKey(const Spec& spec) {
  return absl::StrCat(spec.key.size(), ":", spec.key, spec.range_end);
}

WatchHub::WatchId WatchHub::Add(Spec spec, Listener listener) {
  WatchId id = 0;
  loop_.RunSync([&] {
    if (shutdown_) return;
    id = next_id_++;
    Watch w;
    w.next_revision = spec.start_revision;
    w.spec = std::move(spec);
    w.listener = std::move(listener);
    // A watch on a range etcd just denied waits (backoff) before it asks again.
    absl::Duration wait = absl::ZeroDuration();
    if (auto d = denied_until_.find(RangeKey(w.spec)); d != denied_until_.end()) {
      wait = d->second - util::MonoNow();
    }
    w.postponed = wait > absl::ZeroDuration();
    watches_.emplace(id, std::move(w));
    if (wait > absl::ZeroDuration()) {
      loop_.PostAfter(wait, [this, id] {
        auto it = watches_.find(id);
        if (shutdown_ || it == watches_.end() || !it->second.postponed) return;
        it->second.postponed = false;
        CreateOrConnect(id);
      });
    } else {
      CreateOrConnect(id);
    }
  });
  return id;
}

void WatchHub::CreateOrConnect(WatchId id) {
  if (stream_ != nullptr) {
    SendCreate(id);
  } else {
    session_.Start();  // unless a stream is being opened (token fetch, backoff)
  }
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
    for (PendingCreate& p : pending_creates_) {
      if (p.id == id) p.id = 0;
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
    if (!paused) session_.Start();
  });
}

void WatchHub::Shutdown() {
  loop_.RunSync([&] {
    shutdown_ = true;
    session_.Shutdown();
    watches_.clear();
    if (liveness_timer_ != 0) loop_.Cancel(liveness_timer_);
    if (stream_ != nullptr) stream_->Cancel();
    stream_.reset();
  });
  // Shut down from a listener that runs inline on a reader thread (its client was destroyed
  // there): that reader must not be waited for by itself.
  WatchStream::DetachCurrentReader(session_.tracker());
  session_.tracker()->AwaitNone();
}

// StreamSession::open: the session chose the endpoint and has the token ready.
std::shared_ptr<void> WatchHub::OpenStream(const StreamSession::OpenContext& oc) {
  stream_fresh_token_ = oc.fresh_token;
  stream_delivered_ = false;
  stream_auth_refused_ = false;
  by_server_id_.clear();
  pending_creates_.clear();
  const uint64_t generation = oc.generation;
  const int index = oc.endpoint_index;
  std::shared_ptr<Stubs> stubs = oc.stubs;
  stream_ = WatchStream::Start(
      session_.tracker(), "discovery-watch",
      [&](grpc::ClientContext* ctx) {
        client_->PrepareContext(ctx, absl::InfiniteFuture());
        // A member without a leader then cancels the watch instead of going silent.
        ctx->AddMetadata("hasleader", "true");
      },
      [stubs](grpc::ClientContext* ctx) { return stubs->watch->Watch(ctx); },
      {.on_response = [this, generation](pb::WatchResponse& r) { OnResponse(generation, r); },
       .on_done =
           [this, generation, index](bool had_response, const grpc::Status& status) {
             session_.Done(generation, index, had_response, status);
           }},
      // Creates, cancels and probes are written by the stream's writer thread, never by the
      // loop: the LeaseKeepAlive stream to the same member shares this HTTP/2 connection, and
      // a keepalive burst stuck on a frozen member uses up its window; a write from the loop
      // would then block the loop until the member came back
      // (LeaseKeeperTest.WatchCreateBehindAStuckBurstDoesNotBlockTheLoop).
      WriteMode::kWriterThread);
  for (auto& [id, w] : watches_) {
    w.server_id = -1;
    if (!w.postponed) SendCreate(id);
  }
  // Creates sent later (Add) may go out after the token expired: not fresh.
  stream_fresh_token_ = false;
  if (liveness_timer_ == 0) {
    liveness_timer_ = loop_.PostAfter(kProbeEvery, [this] {
      liveness_timer_ = 0;
      CheckLiveness();
    });
  }
  return stream_;
}

// StreamSession::closed: the session logged the end, marked the endpoint failed or asked for a
// fresh token as the rules say; the reconnect follows with backoff.
void WatchHub::OnStreamClosed() {
  stream_.reset();
  SPDLOG_LOGGER_DEBUG(logger_, "resuming {} watch(es) on a new Watch stream", watches_.size());
  if (stream_delivered_ && !stream_auth_refused_) session_.ResetBackoff();
}

void WatchHub::SendCreate(WatchId id) {
  Watch& w = watches_.at(id);
  pb::WatchRequest req;
  auto* c = req.mutable_create_request();
  c->set_key(w.spec.key);
  c->set_range_end(w.spec.range_end);
  c->set_start_revision(w.next_revision);
  c->set_prev_kv(w.spec.prev_kv);
  if (stream_->Send(std::move(req))) pending_creates_.push_back({id, stream_fresh_token_});
}

void WatchHub::CheckLiveness() {
  if (shutdown_ || stream_ == nullptr) return;
  const absl::Time now = util::MonoNow();
  // An unanswered progress request: the session cancels the stream (with auth on, the next
  // one carries a fresh token) and reconnects; OpenStream restarts this timer.
  if (session_.CheckStall(now)) return;
  if (!session_.outstanding() && now - session_.last_message() >= kProbeEvery) {
    pb::WatchRequest req;
    req.mutable_progress_request();
    if (stream_->Send(std::move(req))) session_.Sent(now);
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

// Reader thread: queue the response; if nothing was queued yet (a loop turn already scheduled
// takes this response too), have the loop drain the inbox: right here on the reader thread
// when the loop is idle (EventLoop::Dispatch: no thread hop), else as its next task. This
// object may be gone when Dispatch returns (a listener destroyed the client): touch nothing.
void WatchHub::OnResponse(uint64_t generation, pb::WatchResponse& resp) {
  const absl::Time arrived = util::MonoNow();
  reader_behind_streak = arrived - reader_returned_at < kBehind ? reader_behind_streak + 1 : 0;
  bool wake = false;
  {
    util::MutexLock lock(&inbox_mu_);
    wake = inbox_.empty();
    if (wake) inbox_first_at_ = arrived;
    inbox_.emplace_back(generation, pb::WatchResponse());
    inbox_.back().second.Swap(&resp);
  }
  if (!wake) {
    reader_returned_at = util::MonoNow();
    return;
  }
  // Reads that returned at once found their responses already waiting: the reader is behind
  // the stream. Then the loop thread drains (in batches, while this thread keeps reading);
  // otherwise this thread drains at once (no hop).
  // (One such Read alone is the reader thread having been preempted on a busy host: handed to
  // the loop thread, it would pay a wake-up of that thread on the same busy host.)
  if (reader_behind_streak >= kBehindStreak) {
    loop_.Post([this] { DrainResponses(); });
  } else {
    loop_.Dispatch([this] { DrainResponses(); });
  }
  // (Only this thread's own clock from here: `this` may be gone.)
  reader_returned_at = util::MonoNow();
}

void WatchHub::DrainResponses() {
  {
    util::MutexLock lock(&inbox_mu_);
    draining_.swap(inbox_);
    draining_first_at_ = inbox_first_at_;
    inbox_first_at_ = absl::InfiniteFuture();
  }
  BatchEnds batch_ends;
  for (auto& [generation, resp] : draining_) HandleResponse(generation, resp, &batch_ends);
  draining_.clear();
  {
    // Before the batch ends: a listener may destroy the client in one of them.
    util::MutexLock lock(&inbox_mu_);
    draining_first_at_ = absl::InfiniteFuture();
  }
  // Copies: a listener may remove its watch (or destroy its owner) in on_batch_end.
  for (auto& [id, end] : batch_ends) end();
}

void WatchHub::HandleResponse(uint64_t generation, const pb::WatchResponse& resp,
                              BatchEnds* batch_ends) {
  if (shutdown_ || !session_.IsCurrent(generation)) return;
  session_.Received(util::MonoNow());
  if (resp.created()) {
    HandleCreated(resp);
    return;
  }
  if (resp.watch_id() < 0) return;  // progress answer for the whole stream
  auto sit = by_server_id_.find(resp.watch_id());
  if (sit == by_server_id_.end()) return;  // cancelled meanwhile
  WatchId id = sit->second;
  Watch& w = watches_.at(id);
  if (resp.canceled()) {
    if (resp.compact_revision() > 0) {
      Break(id,
            absl::OutOfRangeError(absl::StrCat("revision compacted at ", resp.compact_revision())));
    } else {
      Break(id, absl::UnavailableError(
                    absl::StrCat("etcd cancelled the watch: ", resp.cancel_reason())));
    }
    return;
  }
  w.raft_term = std::max<uint64_t>(w.raft_term, resp.header().raft_term());
  if (resp.events_size() > 0) {
    stream_delivered_ = true;
    w.next_revision =
        std::max(w.next_revision, resp.events(resp.events_size() - 1).kv().mod_revision() + 1);
    if (w.listener.on_batch_end && std::none_of(batch_ends->begin(), batch_ends->end(),
                                                [id](const auto& e) { return e.first == id; })) {
      batch_ends->emplace_back(id, w.listener.on_batch_end);
    }
    if (w.listener.on_events) w.listener.on_events(resp);
  }
}

void WatchHub::CancelOnServer(int64_t server_id) {
  if (server_id < 0 || stream_ == nullptr) return;
  pb::WatchRequest req;
  req.mutable_cancel_request()->set_watch_id(server_id);
  stream_->Send(std::move(req));
}

void WatchHub::HandleCreated(const pb::WatchResponse& resp) {
  if (pending_creates_.empty()) return;
  const PendingCreate pending = pending_creates_.front();
  pending_creates_.pop_front();
  auto it = watches_.find(pending.id);
  if (it == watches_.end()) {
    // Removed while being created: cancel it on the server.
    if (!resp.canceled()) CancelOnServer(resp.watch_id());
    return;
  }
  const WatchId id = it->first;
  Watch& w = it->second;
  const pb::ResponseHeader& h = resp.header();
  uint64_t cluster = h.cluster_id();
  if (w.spec.expected_cluster_id == 0) w.spec.expected_cluster_id = cluster;
  if (cluster != 0 && cluster != w.spec.expected_cluster_id) {
    if (!resp.canceled()) CancelOnServer(resp.watch_id());
    Break(id,
          absl::FailedPreconditionError(absl::StrFormat("etcd cluster changed (id %x, expected %x)",
                                                        cluster, w.spec.expected_cluster_id)));
    return;
  }
  if (resp.canceled()) {
    if (resp.compact_revision() > 0) {
      Break(id,
            absl::OutOfRangeError(absl::StrCat("revision compacted at ", resp.compact_revision())));
      return;
    }
    const std::string& reason = resp.cancel_reason();
    if (client_->has_auth() && IsAuthRefusal(grpc::StatusCode::OK, reason)) {
      auth_refusals_.fetch_add(1);
      stream_auth_refused_ = true;
      if (!pending.fresh_token) {
        // The stream's token expired or the member forgot it (restart): a fresh token on a
        // new stream; this watch is re-created there from its next revision.
        if (!session_.fresh_token_requested()) {
          SPDLOG_LOGGER_INFO(logger_, "etcd refused the watch on {} ({}); new token, new stream",
                             w.spec.key, reason);
        }
        // (The session then does not blame the endpoint for the cancelled stream.)
        session_.RequestFreshToken();
        if (stream_ != nullptr) stream_->Cancel();  // the session reconnects, with backoff
        return;
      }
      // RBAC says no. Whoever adds this range again waits, with growing pauses.
      absl::Time now = util::MonoNow();
      std::erase_if(denied_until_, [now](const auto& e) { return e.second <= now; });
      if (denied_until_.empty()) deny_backoff_.Reset();
      denied_until_[RangeKey(w.spec)] = now + deny_backoff_.Next();
      Break(id, absl::PermissionDeniedError(
                    absl::StrCat("etcd refused the watch with a freshly fetched token: ", reason)));
      return;
    }
    Break(id, absl::PermissionDeniedError(absl::StrCat("etcd refused the watch: ", reason)));
    return;
  }
  // History going backwards under the same cluster id.
  std::string rewind;
  if (w.next_revision > 1 && h.revision() < w.next_revision - 1) {
    rewind = absl::StrCat("store revision ", h.revision(), " is below revision ",
                          w.next_revision - 1, " already seen");
  } else if (h.raft_term() != 0 && h.raft_term() < w.raft_term) {
    rewind =
        absl::StrCat("raft term ", h.raft_term(), " is below term ", w.raft_term, " already seen");
  }
  if (!rewind.empty()) {
    CancelOnServer(resp.watch_id());
    history_rewinds_.fetch_add(1);
    Break(id, absl::DataLossError(absl::StrCat("etcd history went back: ", rewind, " (member ",
                                               absl::Hex(h.member_id()), ")")));
    return;
  }
  stream_delivered_ = true;
  if (!denied_until_.empty()) denied_until_.erase(RangeKey(w.spec));
  w.raft_term = std::max<uint64_t>(w.raft_term, h.raft_term());
  w.server_id = resp.watch_id();
  by_server_id_[w.server_id] = id;
}

absl::Duration WatchHub::Lag() const {
  util::MutexLock lock(&inbox_mu_);
  const absl::Time oldest = std::min(inbox_first_at_, draining_first_at_);
  if (oldest == absl::InfiniteFuture()) return absl::ZeroDuration();
  return std::max(absl::ZeroDuration(), util::MonoNow() - oldest);
}

}  // namespace discovery::etcd
