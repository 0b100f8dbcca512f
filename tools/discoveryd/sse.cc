#include "sse.h"

#include <spdlog/spdlog.h>

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <algorithm>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "discovery/etcd.h"
#include "discovery/instance.h"
#include "nlohmann/json.hpp"
#include "store_backend.h"
#include "util/clock.h"
#include "util/event_loop.h"
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

EventHub::EventHub(discovery::Watcher* watcher, std::unique_ptr<EpochStore> epoch_store,
                   Options options)
    : watcher_(watcher),
      options_(std::move(options)),
      logger_(discovery::util::ComponentLogger(options_.logger, "discoveryd")),
      epoch_store_(std::move(epoch_store)),
      weak_alive_(alive_) {}

EventHub::~EventHub() { Stop(); }

void EventHub::Post(std::function<void()> task, absl::Duration delay) {
  auto run = [weak = weak_alive_, task = std::move(task)] {
    if (auto alive = weak.lock()) task();
  };
  discovery::util::EventLoop& loop = watcher_->connection()->backend()->loop();
  if (delay <= absl::ZeroDuration()) {
    loop.Post(std::move(run));  // FIFO: after the task running now (e.g. a dispatch batch)
  } else {
    loop.PostAfter(delay, std::move(run));
  }
}

void EventHub::Start() {
  EpochKeeper::Options ko;
  ko.logger = options_.logger;
  keeper_ = std::make_unique<EpochKeeper>(std::move(epoch_store_), ko,
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
    index_ = SubscriberIndex();
  }
  subscription_.Reset();
  reset_subscription_.Reset();
  if (keeper_ != nullptr) keeper_->Stop();
  alive_.reset();
  // Tasks already posted find the hub gone; one running now finishes first.
  watcher_->connection()->backend()->loop().RunSync([] {});
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

EventHub::InitFrames EventHub::InitFor(const StreamFilter& filter,
                                       const discovery::SnapshotPtr& snap) {
  std::shared_ptr<InitSlot> slot;
  bool post_trim = false;
  {
    discovery::util::MutexLock lock(&init_mu_);
    init_last_use_ = discovery::util::MonoNow();
    post_trim = !init_trim_posted_;
    init_trim_posted_ = true;
    if (snap->history() != init_history_ || snap->revision() > init_revision_) {
      // A newer snapshot: the inits of the older one are not handed out any more (clients
      // still writing them hold their own references).
      inits_.clear();
      init_history_ = snap->history();
      init_revision_ = snap->revision();
    }
    if (snap->revision() == init_revision_) {
      std::shared_ptr<InitSlot>& s = inits_[{filter.type, filter.group}];
      if (s == nullptr) s = std::make_shared<InitSlot>();
      slot = s;
    }
  }
  if (post_trim) Post([this] { TrimInits(); }, kInitKeep);
  if (slot == nullptr) slot = std::make_shared<InitSlot>();  // an older snapshot: not cached
  // Clients attaching to the same snapshot at once wait for ONE encoding.
  std::call_once(slot->once, [&] {
    discovery::Filter f;
    f.type = filter.type;
    f.group = filter.group;
    std::vector<discovery::InstancePtr> all = snap->Select(f);
    std::string frames;
    for (const discovery::InstancePtr& in : all) {
      // No id: a client that drops in the middle must not resume from a partial init.
      frames += SseFrame(
          "", "init",
          Dump({{"revision", snap->revision()}, {"instance", discovery::InstanceToJson(*in)}}));
    }
    slot->value.frames = MakeShared(std::move(frames));
    slot->value.count = all.size();
    slot->done.store(true);
    inits_encoded_.fetch_add(1);
  });
  return slot->value;
}

void EventHub::TrimInits() {
  absl::Duration again;
  size_t dropped = 0;
  {
    discovery::util::MutexLock lock(&init_mu_);
    const absl::Duration idle = discovery::util::MonoNow() - init_last_use_;
    if (idle < kInitKeep) {
      again = kInitKeep - idle;
    } else {
      dropped = CachedInitBytesLocked();
      inits_.clear();  // clients still writing an init hold their own reference
      init_trim_posted_ = false;
    }
  }
  if (again > absl::ZeroDuration()) {
    Post([this] { TrimInits(); }, again);
    return;
  }
#ifdef __GLIBC__
  // An attach storm leaves tens of MB of freed init frames in the middle of the heap, which
  // glibc keeps mapped; hand those pages back (a heap walk: milliseconds, once per storm).
  if (dropped >= (size_t{1} << 20)) malloc_trim(0);
#endif
}

size_t EventHub::CachedInitBytesLocked() const {
  size_t bytes = 0;
  for (const auto& [filter, slot] : inits_) {
    // Only finished encodings (call_once done): the frames are set once, then read-only.
    if (slot->done.load()) bytes += slot->value.frames->size();
  }
  return bytes;
}

std::string EventHub::SyncedFrame(int64_t revision, size_t count) const {
  return SseFrame(EventId(revision), "synced",
                  Dump({{"revision", revision}, {"instances", count}, {"resumed", false}}));
}

std::string EventHub::Replay(const StreamFilter& filter, int64_t after) const {
  std::string out;
  std::vector<const Entry*> replay;
  // The ring is sorted by revision: start at the first one after `after`.
  auto it = std::upper_bound(ring_.begin(), ring_.end(), after,
                             [](int64_t rev, const Entry& e) { return rev < e.revision; });
  for (; it != ring_.end(); ++it) {
    if (Matches(filter, *it)) replay.push_back(&*it);
  }
  for (size_t i = 0; i < replay.size(); ++i) {
    const Entry& e = *replay[i];
    bool last_of_revision = i + 1 == replay.size() || replay[i + 1]->revision != e.revision;
    if (last_of_revision) absl::StrAppend(&out, "id: ", EventId(e.revision), "\n");
    out += *e.frame;
  }
  return out;
}

void EventHub::Attach(uint64_t id, std::shared_ptr<EventStream> stream, StreamFilter filter,
                      const std::string& last_epoch, int64_t last_revision) {
  if (stream == nullptr) return;
  // A fresh init is encoded OUTSIDE the hub lock, from an immutable snapshot, once per
  // (snapshot, filter) for every client attaching to it (InitFor); under the lock the client
  // is only registered and handed over: ring events after the snapshot's revision are
  // replayed, later ones reach it live (skip_through). A snapshot the ring does not reach
  // back to (or of another history) is retaken; the last try encodes under the lock.
  constexpr int kTries = 3;
  for (int attempt = 1; attempt <= kTries; ++attempt) {
    const bool last_try = attempt == kTries;
    bool need_init = false;
    {
      discovery::util::MutexLock lock(&mu_);
      need_init = !stopped_ && ready() && !CanResume(last_epoch, last_revision);
    }
    discovery::SnapshotPtr snap;
    std::optional<InitFrames> init;
    if (need_init && !last_try) {
      snap = watcher_->snapshot();
      init = InitFor(filter, snap);
    }
    discovery::util::MutexLock lock(&mu_);
    if (AttachLocked(id, stream, filter, last_epoch, last_revision, snap, init ? &*init : nullptr,
                     last_try)) {
      return;
    }
    ++attach_retries_;
  }
}

bool EventHub::CanResume(const std::string& last_epoch, int64_t last_revision) const {
  return last_revision >= 0 && last_epoch == epoch_ && last_revision >= floor_ &&
         last_revision <= last_revision_;
}

bool EventHub::AttachLocked(uint64_t id, const std::shared_ptr<EventStream>& stream,
                            const StreamFilter& filter, const std::string& last_epoch,
                            int64_t last_revision, discovery::SnapshotPtr snap,
                            const InitFrames* init, bool last_try) {
  if (stopped_) {
    stream->Close();
    return true;
  }
  Client client{stream, filter, 0, false, false, false};
  discovery::SnapshotPtr now = watcher_->snapshot();
  if (synced_ && now->history() != history_) {
    history_ = now->history();  // the reset listener has not run yet
    BeginReset("the snapshot's history changed");
  }
  std::vector<SharedBytes> burst;
  burst.push_back(MakeShared(kRetry));
  if (!ready()) {
    // Held: its init goes out when the cache is synced and the epoch settled, in ONE first
    // Send with the retry line (a separate small Send first would make a large init a later
    // message, cut by the backlog bound when the small one is still queued).
    client.held = true;
    client.fresh = true;
    index_.Add(id, client.filter);
    clients_[id] = std::move(client);
    return true;
  } else if (CanResume(last_epoch, last_revision)) {
    // Resume: the ring holds every complete revision after last_revision.
    burst.push_back(MakeShared(
        absl::StrCat(Replay(filter, last_revision),
                     SseFrame(EventId(last_revision_), "synced",
                              Dump({{"revision", last_revision_}, {"resumed", true}})))));
    // The open revision (if any) is sent to every client when it closes.
    client.skip_through = last_revision_;
  } else {
    InitFrames local;
    if (init == nullptr || snap == nullptr) {
      if (!last_try) return false;  // the hub became ready meanwhile: encode outside the lock
      snap = now;
      local = InitFor(filter, snap);
      init = &local;
    }
    const int64_t at = snap->revision();
    // The handover: ring events after `at` are replayed; the ring must reach back to it.
    if (snap->history() != history_ || at < floor_) {
      if (!last_try) return false;
      snap = now;
      local = InitFor(filter, snap);
      init = &local;
    }
    burst.push_back(init->frames);
    burst.push_back(MakeShared(absl::StrCat(SyncedFrame(snap->revision(), init->count),
                                            Replay(filter, snap->revision()))));
    // Events of the open revision (and later) reach it live, unless the snapshot has them.
    client.skip_through = std::max(snap->revision(), last_revision_);
  }
  if (!stream->SendFrames(std::move(burst))) return true;
  index_.Add(id, client.filter);
  clients_[id] = std::move(client);
  return true;
}

void EventHub::Detach(uint64_t id) {
  discovery::util::MutexLock lock(&mu_);
  Forget(id);
}

void EventHub::Forget(uint64_t id) {
  auto it = clients_.find(id);
  if (it == clients_.end()) return;
  index_.Remove(id, it->second.filter);
  clients_.erase(it);
}

size_t EventHub::subscribers() const {
  discovery::util::MutexLock lock(&mu_);
  return clients_.size();
}

std::string EventHub::epoch() const {
  discovery::util::MutexLock lock(&mu_);
  return epoch_;
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
    s.match_checks = index_.match_checks();
    s.frames_encoded = frames_encoded_;
    s.frames_sent = frames_sent_;
    s.attach_retries = attach_retries_;
    s.ring_events = ring_.size();
  }
  s.inits_encoded = inits_encoded_.load();
  {
    discovery::util::MutexLock lock(&init_mu_);
    s.inits_cached_bytes = CachedInitBytesLocked();
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
  const SharedBytes retry = MakeShared(kRetry);
  const SharedBytes reset_frame = MakeShared(reset);
  std::vector<uint64_t> dead;
  for (auto& [id, c] : clients_) {
    if (!c.held) continue;
    std::vector<SharedBytes> burst;
    if (c.fresh) burst.push_back(retry);
    if (c.owes_reset) burst.push_back(reset_frame);
    // Encoded once per filter for this snapshot (InitFor), shared by every held client.
    InitFrames init = InitFor(c.filter, snap);
    burst.push_back(init.frames);
    burst.push_back(MakeShared(SyncedFrame(snap->revision(), init.count)));
    c.held = false;
    c.owes_reset = false;
    c.fresh = false;
    c.skip_through = snap->revision();
    if (!c.stream->SendFrames(std::move(burst))) dead.push_back(id);
  }
  for (uint64_t id : dead) Forget(id);
}

void EventHub::CloseRevision() {
  if (open_.empty()) return;
  const int64_t rev = open_.back().revision;
  // Each frame was serialised once (OnChange); the id line once per revision. Only the
  // subscribers whose filter matches are visited (SubscriberIndex), each gets the shared
  // buffers, and its last frame of the revision carries the id.
  const SharedBytes id_line = MakeShared(absl::StrCat("id: ", EventId(rev), "\n"));
  std::vector<uint64_t> dead;
  RouteRevision(index_, open_, id_line, [&](uint64_t cid, std::vector<SharedBytes> frames) {
    auto it = clients_.find(cid);
    if (it == clients_.end()) return;
    Client& c = it->second;
    if (c.held || rev <= c.skip_through) return;
    frames_sent_ += frames.size() - 1;
    if (!c.stream->SendFrames(std::move(frames))) dead.push_back(cid);
  });
  for (uint64_t cid : dead) Forget(cid);
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
  e.frame = MakeShared(SseFrame("", removed ? "remove" : "update",
                                Dump({{"type", discovery::ToString(ev.type)},
                                      {"revision", ev.revision},
                                      {"instance", discovery::InstanceToJson(*ev.instance)}})));
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
  ++frames_encoded_;
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
