#include "etcd/lease_keeper.h"

#include <algorithm>

#include "etcd/client.h"
#include "spdlog/spdlog.h"
#include "util/clock.h"

namespace discovery::etcd {

namespace {
// Keepalives are sent at most this much early or late: leases due within it share a burst.
constexpr absl::Duration kMinInterval = absl::Milliseconds(100);
// How soon a burst deferred behind an unwritten one is tried again.
constexpr absl::Duration kBacklogRetry = absl::Milliseconds(100);
// How long answers are collected before the loop handles them.
constexpr absl::Duration kAnswerBatching = absl::Milliseconds(20);
}  // namespace

LeaseKeeper::LeaseKeeper(Client* client)
    : client_(client),
      logger_(client->logger()),
      loop_(client->loop()),
      session_(client, client->loop(),
               {.name = "LeaseKeepAlive",
                .backoff_initial = absl::Milliseconds(100),
                .backoff_max = absl::Seconds(2),
                .immediate_first_retry = true,
                .stall_timeout = absl::Seconds(3)},
               {.wanted = [this] { return !shutdown_ && !leases_.empty(); },
                .open = [this](const StreamSession::OpenContext& oc) { return OpenStream(oc); },
                .cancel =
                    [this] {
                      if (stream_ != nullptr) stream_->Cancel();
                    },
                .closed = [this](const StreamSession::Ended&) { stream_.reset(); }}) {}

LeaseKeeper::~LeaseKeeper() = default;

void LeaseKeeper::Add(int64_t lease_id, absl::Duration ttl, absl::Duration interval,
                      Listener listener) {
  // Not run synchronously: the caller (Register) need not wait for the loop, nor wake it when
  // the loop wakes in time anyway (every wake-up of the loop takes CPU from etcd on a small
  // host). Merged before any later Remove/lease_count, which merge first.
  const absl::Time now = util::MonoNow();
  interval = std::max(interval, kMinInterval);
  {
    util::MutexLock lock(&pending_mu_);
    if (closed_) return;
    pending_.push_back(Pending{lease_id, ttl, interval, now, std::move(listener)});
    if (merge_posted_) return;  // a merge is on its way
    // The loop's armed wake-up merges the lease in time for its first keepalive (its group's
    // next burst, at most one interval away) and for a kAtRisk (2/3 ttl away).
    if (keeping_ && armed_at_ <= now + std::min(interval, ttl * 2 / 3)) {
      deferred_adds_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    merge_posted_ = true;
  }
  add_posts_.fetch_add(1, std::memory_order_relaxed);
  loop_.Post([this] {
    {
      util::MutexLock lock(&pending_mu_);
      merge_posted_ = false;
    }
    if (shutdown_) return;
    Reschedule();  // merges
  });
}

void LeaseKeeper::MergePending() {
  for (;;) {
    std::vector<Pending> batch;
    {
      util::MutexLock lock(&pending_mu_);
      if (pending_.empty()) return;
      batch.swap(pending_);
    }
    if (shutdown_) return;
    for (Pending& p : batch) Insert(std::move(p));
    session_.Start();
  }
}

void LeaseKeeper::Insert(Pending p) {
  if (auto old = leases_.find(p.id); old != leases_.end()) Erase(old);
  const GroupKey key{absl::ToInt64Microseconds(p.ttl), absl::ToInt64Microseconds(p.interval)};
  std::unique_ptr<Group>& g = groups_[key];
  if (g == nullptr) {
    g = std::make_unique<Group>();
    g->ttl = p.ttl;
    g->interval = p.interval;
    g->next_burst = p.added + p.interval;
    g->acked_floor = p.added;
    // The stream gives up on a burst nobody answers after one interval (1 s .. 3 s).
    stall_ = std::min(stall_, std::clamp(p.interval, absl::Seconds(1), absl::Seconds(3)));
    session_.set_stall_timeout(stall_);
  }
  // The lease's first keepalive goes with its group's next burst, at most one interval after
  // Add; it is at risk 2/3 ttl after Add without an answer.
  g->acked_floor = std::min(g->acked_floor, p.added);
  Entry& e = leases_[p.id];
  e.group = g.get();
  e.index = g->ids.size();
  e.last_ack = p.added;
  e.last_ttl = absl::ToInt64Seconds(p.ttl);
  e.listener = std::move(p.listener);
  g->ids.push_back(p.id);
}

void LeaseKeeper::Remove(int64_t lease_id) {
  loop_.RunSync([&] {
    MergePending();  // a lease still pending is removed before it is ever sent
    if (auto it = leases_.find(lease_id); it != leases_.end()) Erase(it);
    Reschedule();
  });
}

void LeaseKeeper::Erase(std::unordered_map<int64_t, Entry>::iterator it) {
  Group* g = it->second.group;
  const size_t i = it->second.index;
  // Swap-remove from the group's list.
  if (i + 1 != g->ids.size()) {
    g->ids[i] = g->ids.back();
    leases_.at(g->ids[i]).index = i;
  }
  g->ids.pop_back();
  leases_.erase(it);
  if (g->ids.empty()) {
    groups_.erase(
        GroupKey{absl::ToInt64Microseconds(g->ttl), absl::ToInt64Microseconds(g->interval)});
  }
}

size_t LeaseKeeper::lease_count() {
  size_t n = 0;
  loop_.RunSync([&] {
    Reschedule();  // merges
    n = leases_.size();
  });
  return n;
}

void LeaseKeeper::Shutdown() {
  {
    util::MutexLock lock(&pending_mu_);
    closed_ = true;
    pending_.clear();
  }
  loop_.RunSync([&] {
    shutdown_ = true;
    session_.Shutdown();
    leases_.clear();
    groups_.clear();
    if (timer_ != 0) loop_.Cancel(timer_);
    timer_ = 0;
    if (stream_ != nullptr) stream_->Cancel();
    stream_.reset();
  });
  session_.tracker()->AwaitNone();
}

std::shared_ptr<void> LeaseKeeper::OpenStream(const StreamSession::OpenContext& oc) {
  const uint64_t generation = oc.generation;
  const int index = oc.endpoint_index;
  std::shared_ptr<Stubs> stubs = oc.stubs;
  stream_ = KeepAliveStream::Start(
      session_.tracker(), "discovery-lease",
      [&](grpc::ClientContext* ctx) { client_->PrepareContext(ctx, absl::InfiniteFuture()); },
      [stubs](grpc::ClientContext* ctx) { return stubs->lease->LeaseKeepAlive(ctx); },
      {.on_response =
           [this, generation](pb::LeaseKeepAliveResponse& r) {
             OnResponse(generation, r.id(), r.ttl());
           },
       .on_done =
           [this, generation, index](bool had_response, const grpc::Status& status) {
             session_.Done(generation, index, had_response, status);
           }},
      WriteMode::kWriterThread);
  OnStreamOpened();
  return stream_;
}

void LeaseKeeper::OnStreamOpened() {
  // Every lease at once on a new stream (it may have been down for a while), then each group
  // on its own interval from now.
  MergePending();
  const absl::Time now = util::MonoNow();
  for (auto& [key, g] : groups_) Burst(*g, now);
  Reschedule();
}

void LeaseKeeper::Burst(Group& g, absl::Time now) {
  g.next_burst = now + g.interval;
  if (stream_ != nullptr && stream_->queued() > 0) {
    // The last burst is still being written (an overloaded host): the same leases queued again
    // would only grow the backlog. Those still queued go out with it; the group goes again as
    // soon as the stream has written it.
    g.next_burst = now + kBacklogRetry;
    deferred_bursts_.fetch_add(1, std::memory_order_relaxed);
    Walk(g, now, nullptr);
    return;
  }
  std::vector<pb::LeaseKeepAliveRequest> batch;
  Walk(g, now, stream_ != nullptr ? &batch : nullptr);
  if (stream_ == nullptr || batch.empty()) return;
  const int64_t n = static_cast<int64_t>(batch.size());
  if (stream_->SendBatch(batch)) {
    bursts_.fetch_add(1, std::memory_order_relaxed);
    sent_.fetch_add(n, std::memory_order_relaxed);
    session_.Sent(now);
  }
}

void LeaseKeeper::Walk(Group& g, absl::Time now, std::vector<pb::LeaseKeepAliveRequest>* batch) {
  const absl::Duration risk = g.ttl * 2 / 3;
  // The burst's requests, the group's exact floor, and the leases that just became at risk.
  if (batch != nullptr) batch->resize(g.ids.size());
  absl::Time floor = now;
  std::vector<int64_t> risky;
  for (size_t i = 0; i < g.ids.size(); ++i) {
    const int64_t id = g.ids[i];
    if (batch != nullptr) (*batch)[i].set_id(id);
    Entry& e = leases_.at(id);
    if (e.at_risk) continue;
    if (now - e.last_ack > risk) {
      risky.push_back(id);
    } else {
      floor = std::min(floor, e.last_ack);
    }
  }
  g.acked_floor = floor;
  for (int64_t id : risky) {
    auto it = leases_.find(id);  // a listener may have ended others meanwhile
    if (it == leases_.end()) continue;
    Entry& e = it->second;
    e.at_risk = true;
    SPDLOG_LOGGER_WARN(logger_, "lease {:x} at risk: no keepalive answer for {}", id,
                       absl::FormatDuration(now - e.last_ack));
    Dispatch(e.listener, Event{EventType::kAtRisk, id, e.last_ttl});
  }
}

void LeaseKeeper::Tick() {
  timer_ = 0;
  timer_at_ = absl::InfiniteFuture();
  if (shutdown_) return;
  wakeups_.fetch_add(1, std::memory_order_relaxed);
  MergePending();
  const absl::Time now = util::MonoNow();
  // A stream whose keepalives go unanswered is stuck (frozen member, partition): switch.
  session_.CheckStall(now);
  // Bursts and at-risk checks of the groups that are due (a listener may end a group: collect
  // the keys first).
  std::vector<GroupKey> due;
  for (auto& [key, g] : groups_) {
    if (g->next_burst <= now || now - g->acked_floor > g->ttl * 2 / 3) due.push_back(key);
  }
  for (const GroupKey& key : due) {
    auto it = groups_.find(key);
    if (it == groups_.end()) continue;
    Group& g = *it->second;
    if (g.next_burst <= now) {
      Burst(g, now);
    } else {
      Walk(g, now, nullptr);  // some lease may be at risk (answers are missing)
    }
  }
  Reschedule();
}

void LeaseKeeper::Reschedule() {
  for (;;) {
    if (shutdown_) return;
    MergePending();
    absl::Time next = absl::InfiniteFuture();
    for (auto& [key, g] : groups_) {
      next = std::min(next, g->next_burst);
      // A lease answered last at acked_floor is at risk 2/3 ttl later (+1 ms: strictly after).
      next = std::min(next, g->acked_floor + g->ttl * 2 / 3 + absl::Milliseconds(1));
    }
    // (Before the stall deadline: +1 ms so that the check sees it passed.)
    absl::Time stall = session_.stall_deadline();
    if (stall != absl::InfiniteFuture()) next = std::min(next, stall + absl::Milliseconds(1));
    if (next != timer_at_) {
      if (timer_ != 0) loop_.Cancel(timer_);
      timer_ = 0;
      timer_at_ = next;
      if (next != absl::InfiniteFuture()) timer_ = loop_.PostAt(next, [this] { Tick(); });
    }
    // What Add decides on, published only when nothing is pending: an Add made meanwhile is
    // merged by the next round of this loop.
    util::MutexLock lock(&pending_mu_);
    if (!pending_.empty()) continue;
    keeping_ = !leases_.empty();
    armed_at_ = timer_ != 0 ? timer_at_ : absl::InfiniteFuture();
    return;
  }
}

void LeaseKeeper::OnResponse(uint64_t generation, int64_t id, int64_t ttl) {
  {
    util::MutexLock lock(&answers_mu_);
    answers_.push_back(Answer{generation, id, ttl});
    if (drain_posted_) return;
    drain_posted_ = true;
  }
  // A burst's answers arrive over a few milliseconds in many reads: collecting them for a
  // moment makes one loop wake-up per burst instead of one per read (an answer's only use is
  // the lease's last_ack, milliseconds do not matter).
  loop_.PostAfter(kAnswerBatching, [this] { DrainAnswers(); });
}

void LeaseKeeper::DrainAnswers() {
  std::vector<Answer> batch;
  {
    util::MutexLock lock(&answers_mu_);
    batch.swap(answers_);
    drain_posted_ = false;
  }
  if (shutdown_) return;
  answer_batches_.fetch_add(1, std::memory_order_relaxed);
  const absl::Time now = util::MonoNow();
  bool current = false;
  for (const Answer& a : batch) {
    if (!session_.IsCurrent(a.generation)) continue;
    current = true;
    HandleAnswer(a);
  }
  if (!current) return;
  session_.ResetBackoff();
  session_.Received(now);
  Reschedule();  // the stall deadline moved
}

void LeaseKeeper::HandleAnswer(const Answer& answer) {
  const int64_t id = answer.id;
  const int64_t ttl = answer.ttl;
  auto it = leases_.find(id);
  if (it == leases_.end()) return;
  Entry& e = it->second;
  if (ttl <= 0) {
    Listener listener = std::move(e.listener);
    Erase(it);
    SPDLOG_LOGGER_WARN(logger_, "lease {:x} lost (etcd answered TTL {})", id, ttl);
    Dispatch(listener, Event{EventType::kLost, id, 0});
    return;
  }
  e.last_ack = util::MonoNow();
  e.last_ttl = ttl;
  if (e.at_risk) {
    e.at_risk = false;
    // Back among the leases the group's floor covers.
    e.group->acked_floor = std::min(e.group->acked_floor, e.last_ack);
    SPDLOG_LOGGER_INFO(logger_, "lease {:x} answered again (TTL {}s)", id, ttl);
    Dispatch(e.listener, Event{EventType::kAlive, id, ttl});
  }
}

void LeaseKeeper::Dispatch(const Listener& listener, const Event& event) {
  if (listener) listener(event);
}

}  // namespace discovery::etcd
