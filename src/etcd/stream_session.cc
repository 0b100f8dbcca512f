#include "etcd/stream_session.h"

#include "etcd/client.h"
#include "spdlog/spdlog.h"
#include "util/clock.h"

namespace discovery::etcd {

StreamSession::StreamSession(Client* client, util::EventLoop& loop, Options options, Hooks hooks)
    : client_(client),
      logger_(client->logger()),
      loop_(loop),
      options_(std::move(options)),
      hooks_(std::move(hooks)),
      backoff_(options_.backoff_initial, options_.backoff_max),
      stall_timeout_(options_.stall_timeout) {}

void StreamSession::Start() {
  if (!open_ && !connecting_) Connect();
}

void StreamSession::Connect() {
  if (shutdown_ || open_ || !hooks_.wanted()) return;
  if (!TokenReadyOrFetch(client_, loop_, &connecting_, refresh_token_, [this](bool fetched) {
        if (!fetched) {
          ScheduleReconnect();  // refresh_token_ stays: the next attempt fetches again
          return;
        }
        refresh_token_ = false;
        token_fetched_ = true;
        Connect();
      })) {
    return;
  }
  OpenContext oc;
  oc.fresh_token = token_fetched_ && client_->has_auth();
  token_fetched_ = false;
  oc.stubs = client_->CurrentStubs(&oc.endpoint_index);
  oc.generation = ++generation_;
  open_ = true;
  open_streams_.store(1);
  if (oc.generation > 1) reconnects_.fetch_add(1);
  oldest_unanswered_ = absl::InfiniteFuture();
  last_message_ = util::MonoNow();
  SPDLOG_LOGGER_DEBUG(logger_, "opening {} stream to {}", options_.name,
                      client_->endpoints()[oc.endpoint_index].url);
  hooks_.open(oc);
}

void StreamSession::ScheduleReconnect() {
  // Not wanted any more (no leases / watches, paused): the owner's next Start() connects.
  if (connecting_ || shutdown_ || !hooks_.wanted()) return;
  connecting_ = true;
  absl::Duration delay = absl::ZeroDuration();
  if (options_.immediate_first_retry && backoff_.attempt() == 0) {
    backoff_.Next();  // the retry after this one waits
  } else {
    delay = backoff_.Next();
  }
  loop_.PostAfter(delay, [this] {
    connecting_ = false;
    Connect();
  });
}

void StreamSession::Sent(absl::Time now) {
  if (oldest_unanswered_ == absl::InfiniteFuture()) oldest_unanswered_ = now;
}

void StreamSession::Received(absl::Time now) {
  oldest_unanswered_ = absl::InfiniteFuture();
  last_message_ = now;
}

absl::Time StreamSession::stall_deadline() const {
  if (!open_ || stall_timeout_ <= absl::ZeroDuration() ||
      oldest_unanswered_ == absl::InfiniteFuture()) {
    return absl::InfiniteFuture();
  }
  return oldest_unanswered_ + stall_timeout_;
}

bool StreamSession::CheckStall(absl::Time now) {
  if (now < stall_deadline()) return false;
  stalls_.fetch_add(1);
  SPDLOG_LOGGER_WARN(logger_, "{} stream stalled (unanswered for {}); reconnecting", options_.name,
                     absl::FormatDuration(now - oldest_unanswered_));
  // With auth on, a token issued before etcd was wiped or restored makes etcd hold every
  // request of the stream (it waits for its raft log to reach the index in the token, which
  // may be never): the next stream carries a fresh token. One Authenticate per stall.
  if (options_.fresh_token_after_stall && client_->has_auth()) refresh_token_ = true;
  oldest_unanswered_ = absl::InfiniteFuture();  // once per stream
  hooks_.cancel();                              // Done -> reconnect on the next endpoint
  return true;
}

void StreamSession::Done(uint64_t generation, int endpoint_index, bool had_response,
                         grpc::Status status) {
  loop_.Post([this, generation, endpoint_index, had_response, status = std::move(status)] {
    HandleDone(generation, endpoint_index, had_response, status);
  });
}

void StreamSession::HandleDone(uint64_t generation, int endpoint_index, bool had_response,
                               const grpc::Status& status) {
  if (!IsCurrent(generation)) return;
  open_ = false;
  open_streams_.store(0);
  oldest_unanswered_ = absl::InfiniteFuture();
  const std::string error = status.ok() ? std::string() : status.error_message();
  SPDLOG_LOGGER_INFO(logger_, "{} stream to {} ended ({}); reconnecting", options_.name,
                     client_->endpoints()[endpoint_index].url, error.empty() ? "closed" : error);
  Ended ended{had_response, status, false};
  if (client_->has_auth() && !status.ok() &&
      IsAuthRefusal(status.error_code(), status.error_message())) {
    ended.auth_refused = true;
    refresh_token_ = true;  // the stream itself was refused: the member is fine
  } else if (!refresh_token_ && (!had_response || !status.ok())) {
    // (Not when the owner cancelled it for a refused token: the member is fine.)
    client_->MarkFailed(endpoint_index);
    // The member went away: if it comes back wiped or restored, a token from before makes it
    // hold our requests until the stall detection gives up; one Authenticate avoids that.
    if (options_.fresh_token_after_error && client_->has_auth() && !status.ok()) {
      refresh_token_ = true;
    }
  }
  hooks_.closed(ended);
  ScheduleReconnect();
}

}  // namespace discovery::etcd
