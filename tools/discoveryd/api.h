// File: tools/discoveryd/api.h
//
// The REST half of discoveryd: `/sd/v1/instances` register / heartbeat / discover / get /
// patch / delete, implemented directly on the etcd client (no Registrar: the gateway keeps no
// per-instance state, so a heartbeat may reach any gateway of the fleet).
//
//   register  = LeaseGrant(ttl) + Txn{ create_revision(key) == 0 ? Put(key, value, lease) }
//   heartbeat = Range(key) -> its lease -> LeaseKeepAliveOnce (+ optional value update)
//   update    = Range(key) + Txn{ mod_revision(key) == seen ? Put(key, value, same lease) },
//               retried on a concurrent write
//   delete    = DeleteRange(key) + LeaseRevoke when no other key is attached to the lease
//   discover  = the gateway's Watcher snapshot (+ optional TCP health check)
//
// Every call blocks on etcd (up to the client's call timeout): run them off the io threads.
// Errors map to HTTP as: kInvalidArgument 400, kNotFound 404, kAlreadyExists / kAborted 409,
// kUnavailable / kDeadlineExceeded 503, others 500.
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
#include "http_server.h"

namespace discoveryd {

class InstanceApi {
 public:
  struct Options {
    std::string prefix = "/services/";
    int default_ttl_seconds = 10;
    int max_ttl_seconds = 300;
  };
  InstanceApi(std::shared_ptr<discovery::Connection> connection, discovery::Watcher* watcher,
              TcpHealthChecker* checker, Options options);

  HttpResponse Register(const HttpRequest& req);
  HttpResponse Heartbeat(const HttpRequest& req, const std::string& id);
  HttpResponse List(const HttpRequest& req);
  HttpResponse Get(const HttpRequest& req, const std::string& id);
  HttpResponse Patch(const HttpRequest& req, const std::string& id);
  HttpResponse Delete(const HttpRequest& req, const std::string& id);

 private:
  absl::StatusOr<std::string> KeyFor(const HttpRequest& req, const std::string& id) const;

  std::shared_ptr<discovery::Connection> connection_;
  discovery::Watcher* watcher_;
  // Discover answers by query, valid while the watcher's snapshot is the same object: a busy
  // gateway serialises each (snapshot, query) once instead of once per request.
  struct CachedList {
    discovery::SnapshotPtr snapshot;
    HttpResponse response;
  };
  std::mutex list_cache_mu_;
  std::map<std::string, CachedList> list_cache_;  // guarded by list_cache_mu_
  TcpHealthChecker* checker_;
  Options options_;
};

// The HTTP response for a failed status: {"error":{"code","message"}} with the mapped status.
HttpResponse StatusResponse(const absl::Status& status);
// `j` serialised (invalid UTF-8 replaced) with `status`.
HttpResponse JsonResponse(int status, const nlohmann::json& j);

}  // namespace discoveryd
