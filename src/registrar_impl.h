// Internal state of the Registrar shared by its files: registrar.cc (the Registration and
// Registrar API), registrar_register.cc (Register, RegisterAsync, RegisterMany) and
// registrar_background.cc (keepalive events, re-registration, guarded writes, close).
// Leases go through the LeaseHolder seam (lease_holder.h), writes through InstanceWriter
// (instance_writer.h).
#pragma once

#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "discovery/registrar.h"
#include "instance_writer.h"
#include "lease_holder.h"
#include "spdlog/spdlog.h"
#include "store_backend.h"
#include "util/clock.h"
#include "util/event_loop.h"
#include "util/logging.h"
#include "util/sync.h"

namespace discovery {

struct RegistrationState {
  std::weak_ptr<Registrar::Impl> registrar;
  std::shared_ptr<StoreBackend> backend;
  std::string key;
  std::string instance_id;
  absl::Duration ttl;
  absl::Duration interval;

  // Serialises writes to etcd for this registration (held during the etcd call).
  util::Mutex write_mu;
  // Guards the fields below (never held during an etcd call).
  mutable util::Mutex mu;
  Instance instance ABSL_GUARDED_BY(mu);
  int64_t lease_id ABSL_GUARDED_BY(mu) = 0;
  bool closed ABSL_GUARDED_BY(mu) = false;
  bool reregistering ABSL_GUARDED_BY(mu) = false;
  // Performance coalescing.
  absl::Time last_perf_write ABSL_GUARDED_BY(mu) = absl::InfinitePast();
  bool perf_flush_scheduled ABSL_GUARDED_BY(mu) = false;
  bool perf_dirty ABSL_GUARDED_BY(mu) = false;
  // mod_revision of the key as we last wrote it; a write finding another one means someone
  // else (an operator's `discoveryctl set-status`, the gateway) changed the value meanwhile.
  int64_t mod_revision ABSL_GUARDED_BY(mu) = 0;
};

struct Registrar::Impl : std::enable_shared_from_this<Registrar::Impl> {
  std::shared_ptr<Connection> connection;
  std::shared_ptr<StoreBackend> backend;
  // The seams: leases (grant / keep alive / revoke) and instance writes.
  std::unique_ptr<LeaseHolder> leases;
  std::unique_ptr<InstanceWriter> writer;
  std::function<void(const RegistrationEvent&)> on_event;
  std::shared_ptr<spdlog::logger> logger;

  util::Mutex mu;
  std::map<std::string, std::weak_ptr<RegistrationState>> registrations ABSL_GUARDED_BY(mu);

  // Events for on_event, delivered on the background thread in order. Nothing is posted when
  // nobody listens; events emitted together share one task. kRegistered (the caller has its
  // result already) waits up to kEventBatching for others: registrations completing one after
  // another cost one background wake-up per batch, not one each. Any other event is posted at
  // once (and takes the queued ones with it).
  static constexpr absl::Duration kEventBatching = absl::Milliseconds(5);
  struct EventQueue {
    util::Mutex mu;
    std::vector<RegistrationEvent> events ABSL_GUARDED_BY(mu);
    bool posted_now ABSL_GUARDED_BY(mu) = false;    // a task runs as soon as it can
    bool posted_later ABSL_GUARDED_BY(mu) = false;  // a task runs within kEventBatching
  };
  std::shared_ptr<EventQueue> events = std::make_shared<EventQueue>();
  void Emit(RegistrationEventType type, const RegistrationState& st, int64_t lease,
            absl::Status status = absl::OkStatus()) {
    if (!on_event) return;
    const bool now = type != RegistrationEventType::kRegistered;
    {
      util::MutexLock lock(&events->mu);
      events->events.push_back(RegistrationEvent{type, st.instance_id, lease, std::move(status)});
      if (events->posted_now || (!now && events->posted_later)) return;  // a task takes it
      (now ? events->posted_now : events->posted_later) = true;
    }
    auto deliver = [cb = on_event, q = events, now] {
      std::vector<RegistrationEvent> batch;
      {
        util::MutexLock lock(&q->mu);
        batch.swap(q->events);
        (now ? q->posted_now : q->posted_later) = false;
      }
      for (const RegistrationEvent& ev : batch) cb(ev);
    };
    if (now) {
      backend->background().Post(std::move(deliver));
    } else {
      backend->background().PostAfter(kEventBatching, std::move(deliver));
    }
  }

  // Async registrations in flight (RegisterAsync, RegisterMany); ~Registrar waits for none.
  std::mutex async_mu;
  std::condition_variable async_cv;
  int async_ops = 0;  // guarded by async_mu
  void AsyncBegin() {
    std::lock_guard lock(async_mu);
    ++async_ops;
  }
  void AsyncEnd() {
    std::lock_guard lock(async_mu);
    if (--async_ops == 0) async_cv.notify_all();
  }

  // Register's checks before any etcd call: options, instance id (generated when empty),
  // validation, startedAt, duplicate id in this registrar. The state of the registration-to-be.
  absl::StatusOr<std::shared_ptr<RegistrationState>> Prepare(Instance& instance,
                                                             const RegistrationOptions& options);
  // After the guarded Txn put the key: records the registration, keeps its lease alive,
  // logs and emits kRegistered.
  Registration Commit(const std::shared_ptr<RegistrationState>& st, Instance instance,
                      int64_t lease, int64_t revision, bool log_info);
  // LeaseGrant -> guarded Txn -> Commit (or LeaseRevoke on failure), pipelined on gRPC's
  // callback API; `done` runs on the gRPC thread of the last call.
  void StartRegister(std::shared_ptr<RegistrationState> st, Instance instance, bool log_info,
                     std::function<void(absl::StatusOr<Registration>)> done);

  void Track(const std::shared_ptr<RegistrationState>& st, int64_t lease);
  void OnLeaseLost(const std::shared_ptr<RegistrationState>& st, int64_t lease);
  void ReRegister(std::weak_ptr<RegistrationState> weak, util::Backoff backoff);
  // Writes the current state under the current lease. `owns_status`: the caller is changing
  // status/customState itself; otherwise an operator's newer status/customState is kept.
  absl::Status WriteValue(RegistrationState& st, bool owns_status);
  void FlushPerformance(const std::shared_ptr<RegistrationState>& st);
  absl::Status CloseOne(RegistrationState& st, absl::Duration drain, bool set_status);
};

// Sets the lease and updatedAt of `in` and encodes it.
inline std::string Encode(Instance& in, int64_t lease) {
  in.lease_id = lease;
  in.updated_at = absl::Now();
  return EncodeInstance(in);
}

}  // namespace discovery
