// File: discovery/registrar.h
//
// The registrar a game server embeds: it puts the server's Instance at
// `<prefix><type>/<instanceId>` under a lease, keeps every lease of the process alive over ONE
// shared LeaseKeepAlive stream, re-registers by itself when a lease is lost, and revokes the
// lease on graceful shutdown.
//
//   auto registrar = discovery::Registrar::Create({.etcd = discovery::EtcdOptions::FromEnv()});
//   discovery::Instance me;
//   me.type = "world"; me.group = "kr-1"; me.hostname = "game-01"; me.ports["game"] = 8001;
//   absl::StatusOr<discovery::Registration> reg = (*registrar)->Register(me);
//   reg->SetStatus(discovery::InstanceStatus::kReady);
//   ...
//   reg->Close(absl::Seconds(5));   // shutting_down, 5 s drain, then LeaseRevoke
//
// Failure behaviour:
//  - etcd unreachable: the lease is kept alive as soon as any endpoint answers again;
//    `kLeaseAtRisk` fires after 2/3 of the TTL without an answer.
//  - lease lost (TTL passed during a partition, etcd restarted with wiped data, lease revoked
//    by an operator): re-granted and re-put with the same instanceId and latest state;
//    `kLeaseLost` then `kReRegistered` fire. Retries with backoff until it works or Close().
//
// Thread-safety: Registrar and Registration are thread-safe. Event callbacks run on the
// library's background thread and must not block.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "discovery/etcd.h"
#include "discovery/instance.h"

namespace discovery {

struct RegistrationOptions {
  absl::Duration ttl = absl::Seconds(10);  // lease TTL; whole seconds, at least 1 s
  absl::Duration keepalive_interval = absl::ZeroDuration();  // 0 = ttl / 3
  std::string prefix = "/services/";
};

enum class RegistrationEventType {
  kRegistered,      // first registration done
  kLeaseAtRisk,     // no keepalive answer for 2/3 of the TTL: stop taking new players?
  kLeaseRecovered,  // answers again after kLeaseAtRisk
  kLeaseLost,       // etcd says the lease is gone; re-registration starts
  kReRegistered,    // back in etcd with a new lease, same instanceId and state
  kError,           // a background write or re-registration failed (status says why)
};
std::string_view ToString(RegistrationEventType type);

struct RegistrationEvent {
  RegistrationEventType type{};
  std::string instance_id{};
  int64_t lease_id = 0;
  absl::Status status{};  // for kError
};

struct RegistrarOptions {
  // Where etcd is; ignored when `connection` is set.
  EtcdOptions etcd{};
  // Share streams with a Watcher of the same process.
  std::shared_ptr<Connection> connection{};
  // Called on the library thread for every registration of this registrar. Must not block.
  std::function<void(const RegistrationEvent&)> on_event{};
  // "discovery.registrar" logger; a default stderr logger when null.
  std::shared_ptr<spdlog::logger> logger{};
};

class Registrar;
struct RegistrationState;

// A live registration. Move-only; the destructor deregisters (Close with no drain).
class Registration {
 public:
  Registration(Registration&&) noexcept;
  Registration& operator=(Registration&&) noexcept;
  ~Registration();

  const std::string& instance_id() const;
  std::string key() const;
  int64_t lease_id() const;   // current lease (changes after re-registration)
  Instance instance() const;  // latest state as last written

  // Changes status (and customState when given) and writes it under the same lease.
  // Blocks up to the call timeout. kInvalidArgument for a transition that is not allowed;
  // kFailedPrecondition when closed; kUnavailable when etcd does not answer (the new state is
  // kept and written by the next successful write or re-registration).
  absl::Status SetStatus(InstanceStatus status,
                         std::optional<std::string> custom_state = std::nullopt);
  // Merges `meta` into Instance::meta (an empty value removes a key) and writes it.
  absl::Status UpdateMetadata(const std::map<std::string, std::string>& meta);
  // Replaces Instance::performance (must be a JSON object). Never blocks: writes are
  // coalesced to at most one per second per instance and done in the background.
  absl::Status UpdatePerformance(nlohmann::json performance);
  // Graceful stop: status shutting_down, wait `drain`, then LeaseRevoke (the key disappears
  // at once). Idempotent. Returns the revoke result; the registration is closed either way.
  absl::Status Close(absl::Duration drain = absl::ZeroDuration());
  bool closed() const;

 private:
  friend class Registrar;
  explicit Registration(std::shared_ptr<RegistrationState> state);
  std::shared_ptr<RegistrationState> state_;
};

class Registrar {
 public:
  // kInvalidArgument for bad etcd options. Does not contact etcd.
  static absl::StatusOr<std::unique_ptr<Registrar>> Create(RegistrarOptions options);
  // Closes every registration still open (no drain).
  ~Registrar();

  // LeaseGrant + Txn put guarded by create_revision == 0. Generates instance_id when empty;
  // sets startedAt/updatedAt. kInvalidArgument (bad instance or options), kAlreadyExists (the
  // id is registered already), kUnavailable (etcd does not answer), kUnauthenticated,
  // kPermissionDenied.
  absl::StatusOr<Registration> Register(Instance instance, RegistrationOptions options = {});

  // Register without blocking: LeaseGrant and the guarded Txn are pipelined on gRPC's callback
  // API. Same validation, errors, events and rollback (lease revoked when the Txn fails) as
  // Register. `done` runs exactly once and never inline in the caller: on the gRPC callback
  // thread that completed the registration (or, for an error found before any etcd call, on
  // the library's background thread). It must not block; a Registration dropped inside it
  // deregisters there (a blocking LeaseRevoke): move it out instead. ~Registrar waits for
  // registrations in flight.
  void RegisterAsync(Instance instance, RegistrationOptions options,
                     std::function<void(absl::StatusOr<Registration>)> done);

  // Registers every instance with up to 64 registrations in flight; blocks until all are done.
  // Results are in input order and independent: an invalid instance, an id repeated within
  // the batch (the first occurrence wins) or already in etcd fails only that element
  // (kInvalidArgument / kAlreadyExists). Once an element found etcd unavailable (after its
  // retries up to the call timeout), elements not started yet fail at once with kUnavailable
  // ("not attempted"): a batch against a dead etcd ends within about one call timeout.
  // Logs one INFO line per batch (per instance at debug).
  // Do not call from a library callback.
  std::vector<absl::StatusOr<Registration>> RegisterMany(std::vector<Instance> instances,
                                                         RegistrationOptions options = {});

  // Graceful shutdown of every open registration at once: all go to shutting_down, one
  // shared drain, then every lease is revoked.
  void ShutdownAll(absl::Duration drain = absl::ZeroDuration());

  size_t size() const;
  const std::shared_ptr<Connection>& connection() const;

  struct Impl;

 private:
  explicit Registrar(std::unique_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

// Waits for SIGINT/SIGTERM. Install() replaces the handlers of both signals (async-signal
// safe: the handler only sets a flag and writes to a pipe).
//
//   discovery::ShutdownSignal::Install();
//   while (!discovery::ShutdownSignal::Wait(absl::Milliseconds(100))) { GameTick(); }
//   registrar->ShutdownAll(absl::Seconds(5));
class ShutdownSignal {
 public:
  static absl::Status Install();
  // True once a signal arrived (waits up to `timeout` for it).
  static bool Wait(absl::Duration timeout);
  static bool Received();
  static int signal_number();  // 0 until one arrived
};

}  // namespace discovery
