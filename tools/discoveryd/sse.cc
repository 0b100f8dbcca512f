#include "sse.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "discovery/instance.h"
#include "nlohmann/json.hpp"

namespace discoveryd {
namespace {

std::string Dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

std::string SseFrame(int64_t revision, absl::string_view event, absl::string_view data) {
  return absl::StrCat("id: ", revision, "\nevent: ", event, "\ndata: ", data, "\n\n");
}

EventHub::EventHub(discovery::Watcher* watcher, Options options)
    : watcher_(watcher), options_(options) {}

EventHub::~EventHub() { Stop(); }

void EventHub::Start() {
  subscription_ = watcher_->Subscribe(
      {}, [this](const discovery::ChangeEvent& ev) { OnChange(ev); }, false);
  // Events after the subscription are all delivered to OnChange; the snapshot read now is at
  // least as new as the subscription point.
  discovery::util::MutexLock lock(&mu_);
  floor_ = std::max(floor_, watcher_->snapshot()->revision());
  last_revision_ = std::max(last_revision_, floor_);
}

void EventHub::Stop() {
  subscription_.Reset();
  std::map<uint64_t, Client> clients;
  {
    discovery::util::MutexLock lock(&mu_);
    stopped_ = true;
    clients.swap(clients_);
  }
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

void EventHub::Attach(uint64_t id, std::shared_ptr<EventStream> stream, StreamFilter filter,
                      int64_t last_event_id) {
  if (stream == nullptr) return;
  discovery::util::MutexLock lock(&mu_);
  if (stopped_) {
    stream->Close();
    return;
  }
  Client client{stream, filter, 0};
  // Browsers' EventSource reconnects after `retry` ms when the stream drops.
  std::string burst = "retry: 2000\n\n";
  // Resume when the ring covers everything after last_event_id and we are not behind it.
  if (last_event_id >= 0 && last_event_id >= floor_ && last_event_id <= last_revision_) {
    int64_t upto = last_event_id;
    for (const Entry& e : ring_) {
      if (e.revision <= last_event_id || !Matches(filter, e)) continue;
      burst += e.frame;
      upto = std::max(upto, e.revision);
    }
    upto = std::max(upto, last_revision_);
    burst += SseFrame(upto, "synced", Dump({{"revision", upto}, {"resumed", true}}));
    // Later events of revision last_revision_ (one Txn or lease revoke touching several keys)
    // may still be on their way: only skip what the replay covered.
    client.skip_through = std::max(last_event_id, last_revision_ - 1);
  } else {
    discovery::SnapshotPtr snap = watcher_->snapshot();
    discovery::Filter f;
    f.type = filter.type;
    f.group = filter.group;
    std::vector<discovery::InstancePtr> all = snap->Select(f);
    for (const discovery::InstancePtr& in : all) {
      burst += SseFrame(
          snap->revision(), "init",
          Dump({{"revision", snap->revision()}, {"instance", discovery::InstanceToJson(*in)}}));
    }
    burst += SseFrame(
        snap->revision(), "synced",
        Dump({{"revision", snap->revision()}, {"instances", all.size()}, {"resumed", false}}));
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

void EventHub::OnChange(const discovery::ChangeEvent& ev) {
  if (ev.instance == nullptr) return;
  Entry e;
  e.revision = ev.revision;
  e.type = ev.instance->type;
  e.group = ev.instance->group;
  e.previous_group = ev.previous != nullptr ? ev.previous->group : ev.instance->group;
  bool removed = ev.type == discovery::ChangeType::kRemoved;
  e.frame = SseFrame(ev.revision, removed ? "remove" : "update",
                     Dump({{"type", discovery::ToString(ev.type)},
                           {"revision", ev.revision},
                           {"instance", discovery::InstanceToJson(*ev.instance)}}));
  discovery::util::MutexLock lock(&mu_);
  if (stopped_) return;
  std::vector<uint64_t> dead;
  for (auto& [id, c] : clients_) {
    if (ev.revision <= c.skip_through || !Matches(c.filter, e)) continue;
    if (!c.stream->Send(e.frame)) dead.push_back(id);
  }
  for (uint64_t id : dead) clients_.erase(id);
  last_revision_ = std::max(last_revision_, ev.revision);
  ring_.push_back(std::move(e));
  while (ring_.size() > options_.ring_capacity) {
    floor_ = std::max(floor_, ring_.front().revision);
    ring_.pop_front();
  }
}

}  // namespace discoveryd
