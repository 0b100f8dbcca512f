#include "sse.h"

#include <spdlog/spdlog.h>

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "discovery/etcd.h"
#include "discovery/instance.h"
#include "etcd/client.h"
#include "nlohmann/json.hpp"
#include "util/logging.h"

namespace discoveryd {
namespace {

// Browsers' EventSource reconnects after `retry` ms when the stream drops.
constexpr char kRetry[] = "retry: 2000\n\n";

std::string Dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// How often the hub looks whether the watcher's first sync is done.
constexpr absl::Duration kSyncPoll = absl::Milliseconds(20);

}  // namespace

std::string SseFrame(absl::string_view id, absl::string_view event, absl::string_view data) {
  if (id.empty()) return absl::StrCat("event: ", event, "\ndata: ", data, "\n\n");
  return absl::StrCat("id: ", id, "\nevent: ", event, "\ndata: ", data, "\n\n");
}

EventHub::EventHub(discovery::Watcher* watcher, Options options)
    : watcher_(watcher),
      options_(std::move(options)),
      logger_(discovery::util::ComponentLogger(options_.logger, "discoveryd")),
      weak_alive_(alive_) {}

EventHub::~EventHub() { Stop(); }

void EventHub::Post(std::function<void()> task, absl::Duration delay) {
  auto run = [weak = weak_alive_, task = std::move(task)] {
    if (auto alive = weak.lock()) task();
  };
  discovery::util::EventLoop& loop = watcher_->connection()->client()->loop();
  if (delay <= absl::ZeroDuration()) {
    loop.Post(std::move(run));  // FIFO: after the task running now (e.g. a dispatch batch)
  } else {
    loop.PostAfter(delay, std::move(run));
  }
}

void EventHub::Start() {
  EpochKeeper::Options ko;
  ko.key = EpochKey(options_.prefix);
  ko.logger = options_.logger;
  keeper_ = std::make_unique<EpochKeeper>(watcher_->connection()->client(), ko,
                                          [this](const std::string& epoch, EpochKeeper::Why why) {
                                            Post([this, epoch, why] { OnEpoch(epoch, why); });
                                          });
  reset_subscription_ = watcher_->OnHistoryReset([this](const discovery::SnapshotPtr& snap) {
    discovery::util::MutexLock lock(&mu_);
    if (stopped_) return;
    history_ = snap->history();
    BeginReset("the watcher replaced its history");
  });
  subscription_ = watcher_->Subscribe(
      {}, [this](const discovery::ChangeEvent& ev) { OnChange(ev); }, false);
  keeper_->Start();
  Post([this] { CheckSynced(); });
}

void EventHub::CheckSynced() {
  if (!watcher_->synced()) {
    Post([this] { CheckSynced(); }, kSyncPoll);
    return;
  }
  // On the loop, between tasks: the first sync (snapshot and its dispatch) is complete.
  discovery::util::MutexLock lock(&mu_);
  if (stopped_ || synced_) return;
  synced_ = true;
  history_ = watcher_->snapshot()->history();
  SPDLOG_LOGGER_INFO(logger_, "watch cache synced at revision {}; SSE epoch {}",
                     watcher_->snapshot()->revision(), epoch_.empty() ? "pending" : epoch_);
  if (ready()) {
    ReleaseHeld();
  } else if (epoch_.empty()) {
    keeper_->Urgent();  // clients wait for an epoch now: a provisional one if etcd fails
  }
}

void EventHub::Stop() {
  std::map<uint64_t, Client> clients;
  {
    discovery::util::MutexLock lock(&mu_);
    if (stopped_) return;
    stopped_ = true;
    clients.swap(clients_);
  }
  subscription_.Reset();
  reset_subscription_.Reset();
  if (keeper_ != nullptr) keeper_->Stop();
  alive_.reset();
  // Tasks already posted find the hub gone; one running now finishes first.
  watcher_->connection()->client()->loop().RunSync([] {});
  for (auto& [id, c] : clients) c.stream->Close();
}

uint64_t EventHub::NextId() {
  discovery::util::MutexLock lock(&mu_);
  return next_id_++;
}

bool EventHub::Matches(const StreamFilter& f, const Entry& e) {
  if (!f.type.empty() && f.type != e.type) return false;
  if (!f.group.empty() && f.group != e.group && f.group != e.previous_group) return false;
  return true;
}

std::string EventHub::EventId(int64_t revision) const {
  return absl::StrCat(epoch_, ".", revision);
}

std::string EventHub::InitBurst(const StreamFilter& filter,
                                const discovery::SnapshotPtr& snap) const {
  discovery::Filter f;
  f.type = filter.type;
  f.group = filter.group;
  std::vector<discovery::InstancePtr> all = snap->Select(f);
  std::string burst;
  for (const discovery::InstancePtr& in : all) {
    // No id: a client that drops in the middle must not resume from a partial init.
    burst += SseFrame(
        "", "init",
        Dump({{"revision", snap->revision()}, {"instance", discovery::InstanceToJson(*in)}}));
  }
  burst += SseFrame(
      EventId(snap->revision()), "synced",
      Dump({{"revision", snap->revision()}, {"instances", all.size()}, {"resumed", false}}));
  return burst;
}

void EventHub::Attach(uint64_t id, std::shared_ptr<EventStream> stream, StreamFilter filter,
                      const std::string& last_epoch, int64_t last_revision) {
  if (stream == nullptr) return;
  discovery::util::MutexLock lock(&mu_);
  if (stopped_) {
    stream->Close();
    return;
  }
  Client client{stream, filter, 0, false, false, false};
  std::string burst = kRetry;
  discovery::SnapshotPtr snap = watcher_->snapshot();
  if (synced_ && snap->history() != history_) {
    history_ = snap->history();  // the reset listener has not run yet
    BeginReset("the snapshot's history changed");
  }
  if (!ready()) {
    // Held: its init goes out when the cache is synced and the epoch settled, in ONE first
    // Send with the retry line (a separate small Send first would make a large init a later
    // message, cut by the backlog bound when the small one is still queued).
    client.held = true;
    client.fresh = true;
    clients_[id] = std::move(client);
    return;
  } else if (last_revision >= 0 && last_epoch == epoch_ && last_revision >= floor_ &&
             last_revision <= last_revision_) {
    // Resume: the ring holds every complete revision after last_revision.
    std::vector<const Entry*> replay;
    for (const Entry& e : ring_) {
      if (e.revision > last_revision && Matches(filter, e)) replay.push_back(&e);
    }
    for (size_t i = 0; i < replay.size(); ++i) {
      const Entry& e = *replay[i];
      bool last_of_revision = i + 1 == replay.size() || replay[i + 1]->revision != e.revision;
      burst += SseFrame(last_of_revision ? EventId(e.revision) : "", e.event, e.data);
    }
    burst += SseFrame(EventId(last_revision_), "synced",
                      Dump({{"revision", last_revision_}, {"resumed", true}}));
    // The open revision (if any) is sent to every client when it closes.
    client.skip_through = last_revision_;
  } else {
    burst += InitBurst(filter, snap);
    client.skip_through = snap->revision();
  }
  if (!stream->Send(std::move(burst))) return;
  clients_[id] = std::move(client);
}

void EventHub::Detach(uint64_t id) {
  discovery::util::MutexLock lock(&mu_);
  clients_.erase(id);
}

size_t EventHub::subscribers() const {
  discovery::util::MutexLock lock(&mu_);
  return clients_.size();
}

EventHub::Stats EventHub::stats() const {
  Stats s;
  {
    discovery::util::MutexLock lock(&mu_);
    s.epoch = epoch_;
    s.ready = ready();
    for (const auto& [id, c] : clients_) s.held += c.held;
    s.history_resets = history_resets_;
    s.epoch_changes = epoch_changes_;
  }
  if (keeper_ != nullptr) s.keeper = keeper_->stats();
  return s;
}

void EventHub::BeginReset(const char* why) {
  ++history_resets_;
  if (ready()) CloseRevision();  // the old history's last revision is complete: send it
  open_.clear();
  ring_.clear();
  for (auto& [id, c] : clients_) {
    if (!c.held) c.owes_reset = true;
    c.held = true;
  }
  SPDLOG_LOGGER_WARN(logger_, "{}: SSE clients held until the epoch replacing {} is settled", why,
                     epoch_.empty() ? "(none)" : epoch_);
  resetting_ = true;
  keeper_->HistoryReset(epoch_);
}

void EventHub::OnEpoch(const std::string& epoch, EpochKeeper::Why why) {
  discovery::util::MutexLock lock(&mu_);
  if (stopped_) return;
  if (why == EpochKeeper::Why::kReset) resetting_ = false;
  if (epoch == epoch_ && why != EpochKeeper::Why::kReset) return;
  const bool changed = !epoch_.empty() && epoch != epoch_;
  SPDLOG_LOGGER_INFO(logger_, "SSE epoch {}{}", epoch,
                     changed ? absl::StrCat(" (was ", epoch_, ")") : std::string());
  epoch_ = epoch;
  if (!ready()) return;  // held clients get the new epoch when the hub is ready
  bool any = false;
  for (auto& [id, c] : clients_) {
    if (!c.held) {
      // Another replica replaced the epoch (or the agreed one replaced our provisional one):
      // ids of the old one mean nothing any more.
      c.owes_reset = true;
      c.held = true;
    }
    any = any || c.owes_reset;
  }
  if (any) ++epoch_changes_;
  ReleaseHeld();
}

void EventHub::ReleaseHeld() {
  discovery::SnapshotPtr snap = watcher_->snapshot();
  // Every client is held here: the state starts over from this snapshot.
  open_.clear();
  ring_.clear();
  floor_ = snap->revision();
  last_revision_ = snap->revision();
  history_ = snap->history();
  const std::string reset =
      SseFrame("", "reset", Dump({{"epoch", epoch_}, {"revision", snap->revision()}}));
  std::vector<uint64_t> dead;
  std::map<std::pair<std::string, std::string>, std::string> inits;  // by (type, group) filter
  for (auto& [id, c] : clients_) {
    if (!c.held) continue;
    std::string burst = c.fresh ? std::string(kRetry) : std::string();
    if (c.owes_reset) burst += reset;
    auto [it, fresh] = inits.try_emplace({c.filter.type, c.filter.group});
    if (fresh) it->second = InitBurst(c.filter, snap);
    burst += it->second;
    c.held = false;
    c.owes_reset = false;
    c.fresh = false;
    c.skip_through = snap->revision();
    if (!c.stream->Send(std::move(burst))) dead.push_back(id);
  }
  for (uint64_t id : dead) clients_.erase(id);
}

void EventHub::CloseRevision() {
  if (open_.empty()) return;
  const int64_t rev = open_.back().revision;
  const std::string id = EventId(rev);
  std::vector<uint64_t> dead;
  for (auto& [cid, c] : clients_) {
    if (c.held || rev <= c.skip_through) continue;
    size_t last = open_.size();
    for (size_t i = 0; i < open_.size(); ++i) {
      if (Matches(c.filter, open_[i])) last = i;
    }
    if (last == open_.size()) continue;
    std::string frames;
    for (size_t i = 0; i <= last; ++i) {
      if (!Matches(c.filter, open_[i])) continue;
      frames += SseFrame(i == last ? absl::string_view(id) : absl::string_view(), open_[i].event,
                         open_[i].data);
    }
    if (!c.stream->Send(std::move(frames))) dead.push_back(cid);
  }
  for (uint64_t cid : dead) clients_.erase(cid);
  last_revision_ = std::max(last_revision_, rev);
  for (Entry& e : open_) ring_.push_back(std::move(e));
  open_.clear();
  while (ring_.size() > options_.ring_capacity) {
    floor_ = std::max(floor_, ring_.front().revision);
    ring_.pop_front();
  }
}

void EventHub::OnChange(const discovery::ChangeEvent& ev) {
  if (ev.instance == nullptr) return;
  {
    // Not ready (e.g. the first sync's adds): skip formatting what nobody will get.
    discovery::util::MutexLock lock(&mu_);
    if (stopped_ || !ready()) return;
  }
  Entry e;
  e.revision = ev.revision;
  e.type = ev.instance->type;
  e.group = ev.instance->group;
  e.previous_group = ev.previous != nullptr ? ev.previous->group : ev.instance->group;
  bool removed = ev.type == discovery::ChangeType::kRemoved;
  e.event = removed ? "remove" : "update";
  e.data = Dump({{"type", discovery::ToString(ev.type)},
                 {"revision", ev.revision},
                 {"instance", discovery::InstanceToJson(*ev.instance)}});
  discovery::util::MutexLock lock(&mu_);
  // Not ready: nobody is live, and the state starts over from a snapshot when it is.
  if (stopped_ || !ready()) return;
  discovery::SnapshotPtr snap = watcher_->snapshot();
  const int64_t newest = open_.empty() ? last_revision_ : open_.back().revision;
  if (snap->history() != history_ || ev.revision < newest) {
    // The watcher replaced its history without telling us first (or revisions went back).
    history_ = snap->history();
    BeginReset(ev.revision < newest ? "etcd revision went back" : "the watcher's history changed");
    return;
  }
  if (!open_.empty() && open_.back().revision != ev.revision) CloseRevision();
  open_.push_back(std::move(e));
  if (!flush_posted_) {
    flush_posted_ = true;
    // Runs right after the dispatch batch that carries this event: the revision is complete.
    Post([this] {
      discovery::util::MutexLock lock(&mu_);
      flush_posted_ = false;
      if (!stopped_ && ready()) CloseRevision();
    });
  }
}

}  // namespace discoveryd
