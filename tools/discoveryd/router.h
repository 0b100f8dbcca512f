// File: tools/discoveryd/router.h
//
// The pure half of discoveryd's request handling: routing, authentication and the
// validation of every endpoint's input (JSON bodies, ids, query parameters, Last-Event-ID).
// RequestRouter::Route() touches neither etcd nor the watcher nor a socket: it turns an
// HttpRequest into an Action, which is either the response to send at once (404, 405, 401,
// 403, every 400, the dashboard) or a validated call for the part that needs etcd or the
// watch cache (InstanceApi, EventHub, metrics, /healthz). The gateway executes the calls; the
// libFuzzer target (tests/fuzz/http_fuzz.cc) checks every Action it gets. Both go through
// this one code path.
//
//   RequestRouter router({.tokens = std::move(tokens)});
//   Action a = router.Route(request);
//   if (auto* r = std::get_if<HttpResponse>(&a.call)) Reply(*r);
//   else if (auto* c = std::get_if<RegisterCall>(&a.call)) Reply(api.Register(*c));
//   ...
//
// Thread-safety: RequestRouter is immutable after construction; Route() may run on any
// thread.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "auth.h"
#include "discovery/instance.h"
#include "discovery/watcher.h"
#include "http_message.h"
#include "nlohmann/json.hpp"

namespace discoveryd {

// Bodies nested deeper than this are refused: the readers of the registry (DecodeInstance)
// refuse values nested deeper, and nothing should recurse on client input that deep.
inline constexpr int kMaxBodyNesting = discovery::kMaxInstanceNesting;

// The mutable part of a PATCH or heartbeat body.
struct Changes {
  std::optional<discovery::InstanceStatus> status;
  std::optional<std::string> custom_state;
  std::optional<nlohmann::json> performance;
  std::optional<std::map<std::string, std::string>> meta;  // "" = remove the key
  bool empty() const { return !status && !custom_state && !performance && !meta; }
};

// Applies `changes` to `instance` (kInvalidArgument for a status transition that is not
// allowed; `instance` is then unchanged).
absl::Status ApplyChanges(const Changes& changes, discovery::Instance* instance);

// `instance` as stored in etcd; kInvalidArgument when it is larger than what the registry's
// readers accept (discovery::kMaxInstanceBytes).
absl::StatusOr<std::string> EncodeStorable(const discovery::Instance& instance);

// An instance addressed by the path's id and the optional ?type=.
struct InstanceRef {
  std::string id;    // a valid name
  std::string type;  // a valid name, or empty: look the id up in the watch cache
};

// ---- validated calls ----
struct MetricsCall {};
struct HealthzCall {};
// GET /sd/v1/instances. Filter names are valid.
struct ListCall {
  discovery::Filter filter;
  bool health_check = false;
  std::string port_name;  // ?port=: the port the health check dials (empty = the first)
  // Blocking query (discover_http.h): ?waitIndex=REV answers once the matching set changed
  // after REV, or after ?wait= (a Go-style duration "30s", "1m30s", or plain seconds; default
  // and maximum 5 min). -1: an ordinary discover.
  int64_t wait_index = -1;
  absl::Duration wait = absl::Minutes(5);
};
// POST /sd/v1/instances: `instance` is valid (ValidateInstance), has an instanceId and
// timestamps, and stays within kMaxInstanceBytes once it has its lease.
struct RegisterCall {
  discovery::Instance instance;
  int ttl_seconds = 10;
};
struct GetCall {
  InstanceRef ref;
};
struct PatchCall {
  InstanceRef ref;
  Changes changes;
};
// DELETE /sd/v1/instances/{id}. `lease_id` (from ?leaseId=<hex> or If-Match: "<hex>") names
// the registration the caller means: the key is deleted only while it is attached to that
// lease (a retried DELETE never removes a newer registration of the same id). 0: any.
struct DeleteCall {
  InstanceRef ref;
  int64_t lease_id = 0;
};
struct HeartbeatCall {
  InstanceRef ref;
  Changes changes;  // no meta
};
// GET /sd/v1/subscribe. type and group are empty or valid names.
struct SubscribeCall {
  std::string type;
  std::string group;
  // Last-Event-ID (header, or ?lastEventId=) split as `<epoch>.<revision>` (sse.h). Anything
  // else (absent, a plain number from before epochs, garbage): epoch empty and -1, which
  // gets a fresh init.
  std::string last_event_epoch{};
  int64_t last_event_id = -1;  // the revision part; < 0: none (or not one of ours)
};
// Splits an SSE event id "<epoch>.<revision>" (epoch: 1..32 of [0-9A-Za-z], revision: a
// non-negative integer). False for anything else.
bool ParseEventId(std::string_view id, std::string* epoch, int64_t* revision);

using Call = std::variant<HttpResponse, MetricsCall, HealthzCall, ListCall, RegisterCall, GetCall,
                          PatchCall, DeleteCall, HeartbeatCall, SubscribeCall>;

struct Action {
  std::string route = "other";  // the route template ("/sd/v1/instances/{id}"), the metrics label
  Call call;
};

class RequestRouter {
 public:
  struct Options {
    TokenStore tokens{};             // empty: no authentication
    bool protect_dashboard = false;  // tokens also guard / and /metrics
    int default_ttl_seconds = 10;
    int max_ttl_seconds = 300;
  };
  explicit RequestRouter(Options options) : options_(std::move(options)) {}

  // Routes, authenticates and validates `request`. Never blocks, never does I/O.
  Action Route(const HttpRequest& request) const;

  const Options& options() const { return options_; }

 private:
  Options options_;
};

// A lease id as the API prints it: 1..16 hex digits, not 0. False for anything else.
bool ParseLeaseHex(absl::string_view text, int64_t* lease);

}  // namespace discoveryd
