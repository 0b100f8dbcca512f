#include "etcd/lease_keeper.h"

#include "absl/strings/match.h"
#include "etcd/client.h"
#include "spdlog/spdlog.h"
#include "util/clock.h"

namespace discovery::etcd {

LeaseKeeper::LeaseKeeper(Client* client)
    : client_(client), logger_(client->logger()), loop_(client->loop()) {}

LeaseKeeper::~LeaseKeeper() = default;

void LeaseKeeper::Add(int64_t lease_id, absl::Duration ttl, absl::Duration interval,
                      Listener listener) {
  // Posted, not run synchronously: the caller (Register) need not wait for the loop. Tasks
  // run in order, so a later Remove/lease_count sees this entry.
  loop_.Post([this, lease_id, ttl, interval, listener = std::move(listener)]() mutable {
    if (shutdown_) return;
    absl::Time now = util::MonoNow();
    Entry e;
    e.ttl = ttl;
    e.interval = std::max(interval, absl::Milliseconds(100));
    e.next_send = now + e.interval;
    e.last_ack = now;
    e.last_ttl = absl::ToInt64Seconds(ttl);
    e.listener = std::move(listener);
    leases_[lease_id] = std::move(e);
    if (stream_ == nullptr && !connecting_) Connect();
    EnsureTicking();
  });
}

void LeaseKeeper::Remove(int64_t lease_id) {
  loop_.RunSync([&] { leases_.erase(lease_id); });
}

size_t LeaseKeeper::lease_count() {
  size_t n = 0;
  loop_.RunSync([&] { n = leases_.size(); });
  return n;
}

void LeaseKeeper::Shutdown() {
  loop_.RunSync([&] {
    shutdown_ = true;
    leases_.clear();
    if (tick_timer_ != 0) loop_.Cancel(tick_timer_);
    tick_timer_ = 0;
    if (stream_ != nullptr) stream_->Cancel();
    stream_.reset();
  });
  streams_.AwaitNone();
}

void LeaseKeeper::EnsureTicking() {
  if (tick_timer_ != 0 || shutdown_) return;
  tick_timer_ = loop_.PostAfter(tick_, [this] {
    tick_timer_ = 0;
    Tick();
  });
}

void LeaseKeeper::Connect() {
  if (shutdown_ || leases_.empty()) return;
  if (!TokenReadyOrFetch(client_, loop_, &connecting_, refresh_token_, [this](bool fetched) {
        if (!fetched) {
          ScheduleReconnect();  // refresh_token_ stays: the next attempt fetches again
          return;
        }
        refresh_token_ = false;
        if (stream_ == nullptr) Connect();
      })) {
    return;
  }
  int index = 0;
  std::shared_ptr<Stubs> stubs = client_->CurrentStubs(&index);
  const uint64_t generation = ++generation_;
  open_streams_.store(1);
  if (generation > 1) reconnects_.fetch_add(1);
  oldest_unanswered_ = absl::InfiniteFuture();
  SPDLOG_LOGGER_DEBUG(logger_, "opening LeaseKeepAlive stream to {}",
                      client_->endpoints()[index].url);
  stream_ = KeepAliveStream::Start(
      &streams_,
      [&](grpc::ClientContext* ctx,
          grpc::ClientBidiReactor<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>* r) {
        client_->PrepareContext(ctx, absl::InfiniteFuture());
        stubs->lease->async()->LeaseKeepAlive(ctx, r);
      },
      {.on_response =
           [this, generation](pb::LeaseKeepAliveResponse& r) {
             OnResponse(generation, r.id(), r.ttl());
           },
       .on_done =
           [this, generation, index](bool had_response, const grpc::Status& status) {
             OnStreamDone(generation, index, had_response, status);
           }},
      stubs);
  // Send every lease at once on a new stream: the stream may have been down for a while.
  absl::Time now = util::MonoNow();
  for (auto& [id, e] : leases_) e.next_send = now;
  Tick();
}

void LeaseKeeper::ScheduleReconnect() {
  if (connecting_ || shutdown_) return;
  connecting_ = true;
  absl::Duration delay = backoff_.attempt() == 0 ? absl::ZeroDuration() : backoff_.Next();
  if (backoff_.attempt() == 0) backoff_.Next();
  loop_.PostAfter(delay, [this] {
    connecting_ = false;
    if (stream_ == nullptr) Connect();
  });
}

void LeaseKeeper::Tick() {
  if (shutdown_) return;
  absl::Time now = util::MonoNow();
  absl::Duration min_interval = absl::InfiniteDuration();
  for (auto& [id, e] : leases_) {
    min_interval = std::min(min_interval, e.interval);
    if (stream_ != nullptr && e.next_send <= now) {
      pb::LeaseKeepAliveRequest req;
      req.set_id(id);
      if (stream_->Send(std::move(req))) {
        if (oldest_unanswered_ == absl::InfiniteFuture()) oldest_unanswered_ = now;
        e.next_send = now + e.interval;
      }
    }
    if (!e.at_risk && now - e.last_ack > e.ttl * 2 / 3) {
      e.at_risk = true;
      SPDLOG_LOGGER_WARN(logger_, "lease {:x} at risk: no keepalive answer for {}", id,
                         absl::FormatDuration(now - e.last_ack));
      Dispatch(e.listener, Event{EventType::kAtRisk, id, e.last_ttl});
    }
  }
  // A stream whose keepalives go unanswered is stuck (frozen member, partition): switch.
  absl::Duration stall = std::clamp(min_interval, absl::Seconds(1), absl::Seconds(3));
  if (stream_ != nullptr && oldest_unanswered_ != absl::InfiniteFuture() &&
      now - oldest_unanswered_ > stall) {
    SPDLOG_LOGGER_WARN(logger_, "LeaseKeepAlive stream stalled for {}; reconnecting",
                       absl::FormatDuration(now - oldest_unanswered_));
    stream_->Cancel();  // OnDone -> OnStreamDone -> reconnect on the next endpoint
  }
  if (stream_ == nullptr && !leases_.empty()) ScheduleReconnect();
  if (min_interval != absl::InfiniteDuration()) {
    tick_ = std::clamp(min_interval / 4, absl::Milliseconds(50), absl::Milliseconds(500));
  }
  if (!leases_.empty()) EnsureTicking();
}

void LeaseKeeper::OnResponse(uint64_t generation, int64_t id, int64_t ttl) {
  {
    util::MutexLock lock(&answers_mu_);
    answers_.push_back(Answer{generation, id, ttl});
    if (drain_posted_) return;
    drain_posted_ = true;
  }
  loop_.Post([this] { DrainAnswers(); });
}

void LeaseKeeper::DrainAnswers() {
  std::vector<Answer> batch;
  {
    util::MutexLock lock(&answers_mu_);
    batch.swap(answers_);
    drain_posted_ = false;
  }
  for (const Answer& a : batch) HandleAnswer(a);
}

void LeaseKeeper::HandleAnswer(const Answer& answer) {
  const int64_t id = answer.id;
  const int64_t ttl = answer.ttl;
  if (answer.generation != generation_ || shutdown_) return;
  backoff_.Reset();
  oldest_unanswered_ = absl::InfiniteFuture();
  auto it = leases_.find(id);
  if (it == leases_.end()) return;
  Entry& e = it->second;
  if (ttl <= 0) {
    Listener listener = std::move(e.listener);
    leases_.erase(it);
    SPDLOG_LOGGER_WARN(logger_, "lease {:x} lost (etcd answered TTL {})", id, ttl);
    Dispatch(listener, Event{EventType::kLost, id, 0});
    return;
  }
  e.last_ack = util::MonoNow();
  e.last_ttl = ttl;
  if (e.at_risk) {
    e.at_risk = false;
    SPDLOG_LOGGER_INFO(logger_, "lease {:x} answered again (TTL {}s)", id, ttl);
    Dispatch(e.listener, Event{EventType::kAlive, id, ttl});
  }
}

void LeaseKeeper::OnStreamDone(uint64_t generation, int endpoint_index, bool had_response,
                               grpc::Status status) {
  loop_.Post([this, generation, endpoint_index, had_response, status = std::move(status)] {
    if (generation != generation_ || shutdown_) return;
    stream_.reset();
    open_streams_.store(0);
    const std::string error = status.ok() ? std::string() : status.error_message();
    SPDLOG_LOGGER_INFO(logger_, "LeaseKeepAlive stream to {} ended ({}); reconnecting",
                       client_->endpoints()[endpoint_index].url, error.empty() ? "closed" : error);
    if (client_->has_auth() && !status.ok() &&
        IsAuthRefusal(status.error_code(), status.error_message())) {
      refresh_token_ = true;  // refused for its token: the member is fine
    } else if (!had_response || !status.ok()) {
      client_->MarkFailed(endpoint_index);
    }
    ScheduleReconnect();
  });
}

void LeaseKeeper::Dispatch(const Listener& listener, const Event& event) {
  if (listener) listener(event);
}

}  // namespace discovery::etcd
