// File: tools/discoveryd/api.h
//
// The REST half of discoveryd: `/sd/v1/instances` register / heartbeat / discover / get /
// patch / delete, on discoveryd's StoreOps (store_ops.h: etcd or Redis) for leases and on the
// library's instance writer seam (src/instance_writer.h) for every read and write of an
// instance record (no Registrar:
// the gateway keeps no per-instance state, so a heartbeat may reach any gateway of the fleet).
//
//   register  = LeaseGrant(ttl, id chosen here) + PutIfUnchanged(key, value, lease, absent)
//               (Txn{ mod_revision(key) == 0 ? Put(key, value, lease) : Range(key) }). Idempotent:
//               a grant or Txn retried after its answer was lost finds its own lease/key (201); a
//               retried POST with the same instance (all fields but startedAt/updatedAt/leaseId)
//               finds the first attempt's registration, refreshes its lease and answers 200 with
//               its leaseId; other fields -> 409.
//   heartbeat = Read(key) -> its lease -> KeepAliveOnce (+ optional value update)
//   update    = Read(key) + PutIfUnchanged(key, value, same lease, seen mod revision),
//               retried on a concurrent write
//   delete    = writer Delete (guarded by lease(key) == named lease when one is named) +
//   LeaseRevoke
//               when no other key is attached to the lease. 200, then 404 when repeated; a
//               named lease (?leaseId= / If-Match) the key is not on -> 412.
//   discover  = the gateway's Watcher snapshot + TCP health check (without healthCheck:
//               DiscoverEndpoint, discover_http.h)
//
// The calls arrive validated by RequestRouter (router.h): this class only does what needs
// etcd or the watch cache. Every call but List blocks on etcd (up to the client's call
// timeout): run them off the io threads. Errors map to HTTP by StatusResponse
// (http_message.h).
//
// Thread-safety: thread-safe.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "discovery/etcd.h"
#include "discovery/watcher.h"
#include "health_check.h"
#include "http_message.h"
#include "id_index.h"
#include "router.h"

namespace discovery {
class InstanceWriter;
}

namespace discoveryd {

class StoreOps;

class InstanceApi {
 public:
  struct Options {
    std::string prefix = "/services/";
  };
  InstanceApi(std::shared_ptr<discovery::Connection> connection, StoreOps* ops,
              discovery::Watcher* watcher, TcpHealthChecker* checker, Options options);
  ~InstanceApi();

  HttpResponse Register(const RegisterCall& call);
  HttpResponse Heartbeat(const HeartbeatCall& call);
  // Reads the watcher's snapshot (and, with call.health_check, dials the instances). The
  // gateway answers discover without healthCheck from DiscoverEndpoint (discover_http.h).
  HttpResponse List(const ListCall& call);
  HttpResponse Get(const GetCall& call);
  HttpResponse Patch(const PatchCall& call);
  HttpResponse Delete(const DeleteCall& call);

 private:
  // The etcd key of `ref`. An empty type is looked up in the watch cache's ids (`ids_`):
  // NotFound when no cached instance has the id, InvalidArgument when several types do.
  absl::StatusOr<std::string> KeyFor(const InstanceRef& ref) const;

  std::shared_ptr<discovery::Connection> connection_;
  StoreOps* ops_;
  std::unique_ptr<discovery::InstanceWriter> writer_;  // the backend's
  discovery::Watcher* watcher_;
  TcpHealthChecker* checker_;
  Options options_;
  IdIndex ids_;                       // fed by `ids_feed_` (declared after: cancelled first)
  discovery::Subscription ids_feed_;  // the watcher's events -> ids_
};

}  // namespace discoveryd
