// File: tools/discoveryd/sse.h
//
// The fan-out behind `GET /sd/v1/subscribe`: one Watcher subscription over the whole prefix
// feeds every Server-Sent-Events client of this gateway.
//
// Wire format (every event carries `id: <etcd revision>`):
//   event: init     data {"revision":N,"instance":{...}}       one per current instance
//   event: synced   data {"revision":N,"instances":K,"resumed":false}  (after a resume:
//                   {"revision":N,"resumed":true})
//   event: update   data {"type":"added|updated|status_changed","revision":N,"instance":{...}}
//   event: remove   data {"type":"removed","revision":N,"instance":{last known state}}
//
// Resume: the hub keeps a bounded ring of the most recent events. A client reconnecting with
// `Last-Event-ID: L` gets every event with revision > L from the ring (then `synced` with
// "resumed":true) when the ring still covers L; otherwise it starts over with a fresh init.
// Revisions are etcd's, so an id from one gateway is valid at another.
//
// Consistency: a client's init is the watcher snapshot at revision R, taken under the hub's
// lock; events with revision <= R that arrive afterwards are already reflected and skipped.
//
// Thread-safety: thread-safe. The watcher callback only formats and queues (never blocks);
// slow clients are disconnected by the HTTP layer (bounded backlog).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/string_view.h"
#include "discovery/watcher.h"
#include "http_server.h"
#include "util/sync.h"

namespace discoveryd {

struct StreamFilter {
  std::string type{};   // empty = every type
  std::string group{};  // empty = every group
};

class EventHub {
 public:
  struct Options {
    size_t ring_capacity = 8192;  // events kept for Last-Event-ID resume
  };
  EventHub(discovery::Watcher* watcher, Options options);
  ~EventHub();

  // Subscribes to the watcher. Call once, before Attach.
  void Start();
  // Unsubscribes and closes every client stream.
  void Stop();

  // A fresh client id (to build the stream's on_close before Attach).
  uint64_t NextId();
  // Sends the client its init (or resume) and adds it to the fan-out. `last_event_id` < 0
  // means none was given.
  void Attach(uint64_t id, std::shared_ptr<EventStream> stream, StreamFilter filter,
              int64_t last_event_id);
  void Detach(uint64_t id);

  size_t subscribers() const;

 private:
  struct Entry {
    int64_t revision = 0;
    std::string type;
    std::string group;
    std::string previous_group;
    std::string frame;
  };
  struct Client {
    std::shared_ptr<EventStream> stream;
    StreamFilter filter;
    int64_t skip_through = 0;  // events with revision <= this are already reflected
  };

  void OnChange(const discovery::ChangeEvent& event);
  static bool Matches(const StreamFilter& f, const Entry& e);

  discovery::Watcher* watcher_;
  Options options_;
  discovery::Subscription subscription_;

  mutable discovery::util::Mutex mu_;
  std::deque<Entry> ring_ ABSL_GUARDED_BY(mu_);
  // Every event with revision > floor_ is in ring_.
  int64_t floor_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t last_revision_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<uint64_t, Client> clients_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
};

// "id: <rev>\nevent: <name>\ndata: <json>\n\n".
std::string SseFrame(int64_t revision, absl::string_view event, absl::string_view data);

}  // namespace discoveryd
