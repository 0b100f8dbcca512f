#include "commands.h"

#include <cstdlib>
#include <iostream>
#include <memory>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "discovery/registrar.h"
#include "discovery/watcher.h"
#include "health_check.h"
#include "output.h"
#include "spdlog/spdlog.h"
#include "store.h"
#include "util/clock.h"

namespace discoveryctl {
namespace {

constexpr absl::Duration kMaxCheckTimeout = absl::Seconds(2);

absl::StatusOr<std::shared_ptr<discovery::Connection>> Connect(
    const GlobalOptions& global, std::shared_ptr<spdlog::logger> logger) {
  return ConnectStore(global, std::move(logger));
}

// The status filter of list/watch; nullopt when `name` is empty.
absl::StatusOr<std::optional<discovery::InstanceStatus>> ParseStatusFilter(
    const std::string& name) {
  if (name.empty()) return std::optional<discovery::InstanceStatus>();
  absl::StatusOr<discovery::InstanceStatus> s = discovery::ParseInstanceStatus(name);
  if (!s.ok()) return s.status();
  return std::optional<discovery::InstanceStatus>(*s);
}

absl::Status ValidateFilterNames(const std::string& type, const std::string& group) {
  if (!type.empty()) {
    if (absl::Status s = discovery::ValidateName("type", type); !s.ok()) return s;
  }
  if (!group.empty()) {
    if (absl::Status s = discovery::ValidateName("group", group); !s.ok()) return s;
  }
  return absl::OkStatus();
}

// "NAME=VALUE" -> (NAME, VALUE); kInvalidArgument naming `flag` otherwise.
absl::StatusOr<std::pair<std::string, std::string>> SplitAssignment(const std::string& flag,
                                                                    const std::string& text) {
  size_t eq = text.find('=');
  if (eq == std::string::npos || eq == 0) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " \"", text, "\": expected NAME=VALUE"));
  }
  return std::make_pair(text.substr(0, eq), text.substr(eq + 1));
}

absl::StatusOr<discovery::Instance> BuildInstance(const RegisterOptions& o) {
  discovery::Instance in;
  in.instance_id = o.id;
  in.type = o.type;
  in.group = o.group;
  in.hostname = o.host;
  in.public_ip = o.public_ip;
  in.private_ip = o.private_ip;
  in.version = o.version;
  in.region = o.region;
  in.zone = o.zone;
  in.weight = o.weight;
  for (const std::string& p : o.ports) {
    auto kv = SplitAssignment("--port", p);
    if (!kv.ok()) return kv.status();
    int port = 0;
    if (!absl::SimpleAtoi(kv->second, &port)) {
      return absl::InvalidArgumentError(absl::StrCat("--port \"", p, "\": port is not a number"));
    }
    in.ports[kv->first] = port;
  }
  for (const std::string& m : o.meta) {
    auto kv = SplitAssignment("--meta", m);
    if (!kv.ok()) return kv.status();
    in.meta[kv->first] = kv->second;
  }
  if (o.host.empty()) return absl::InvalidArgumentError("--host: must not be empty");
  if (absl::Status s = discovery::ValidateInstance(in); !s.ok()) return s;
  return in;
}

// Keeps `registration` alive and mirrors `check` into its status until a signal arrives.
void RunChecks(discovery::Registration& registration, const HealthCheck& check,
               absl::Duration interval, spdlog::logger& log) {
  const absl::Duration timeout = std::min(interval, kMaxCheckTimeout);
  HealthTracker tracker;
  absl::Time next = discovery::util::MonoNow();
  while (!discovery::ShutdownSignal::Received()) {
    absl::Status result = check.Run(timeout);
    if (!result.ok()) {
      log.debug("check {} failed: {}", check.description(), std::string(result.message()));
    }
    if (std::optional<discovery::InstanceStatus> status = tracker.Record(result.ok())) {
      if (result.ok()) {
        log.info("check {} passed: status -> {}", check.description(),
                 discovery::ToString(*status));
      } else {
        log.warn("check {} failed {} times in a row ({}): status -> {}", check.description(),
                 HealthTracker::kFailuresToError, std::string(result.message()),
                 discovery::ToString(*status));
      }
      if (absl::Status s = registration.SetStatus(*status); !s.ok()) {
        log.warn("writing status {} failed (kept, retried with the next write): {}",
                 discovery::ToString(*status), std::string(s.message()));
      }
    }
    next += interval;
    absl::Time now = discovery::util::MonoNow();
    if (next < now) next = now;  // a slow check: do not try to catch up
    if (discovery::ShutdownSignal::Wait(next - now)) break;
  }
}

}  // namespace

int RunList(const GlobalOptions& global, const ListOptions& options) {
  if (absl::Status s = ValidateFilterNames(options.type, options.group); !s.ok()) return Fail(s);
  auto status_filter = ParseStatusFilter(options.status);
  if (!status_filter.ok()) return Fail(status_filter.status());
  auto conn = Connect(global, ToolLogger("error"));
  if (!conn.ok()) return FailEtcd(global, conn.status());
  std::unique_ptr<Store> opened = OpenStore(*conn, global.prefix, global.timeout());
  Store& store = *opened;
  absl::StatusOr<ListResult> list = store.List(options.type);
  if (!list.ok()) return FailEtcd(global, list.status());

  std::vector<StoredInstance> selected;
  for (StoredInstance& in : list->instances) {
    if (!options.group.empty() && in.instance.group != options.group) continue;
    if (status_filter->has_value() && in.instance.status != **status_filter) continue;
    selected.push_back(std::move(in));
  }
  const bool json = global.output == "json";
  if (!json) {
    if (absl::Status s = store.FillLeaseTtls(&selected); !s.ok()) return FailEtcd(global, s);
  }
  if (!list->invalid.empty()) {
    Warn(absl::StrCat("skipped ", list->invalid.size(), " invalid value(s): ",
                      absl::StrJoin(list->invalid, "; ", [](std::string* out, const auto& bad) {
                        absl::StrAppend(out, bad.key, ": ", bad.reason);
                      })));
  }
  if (json) {
    nlohmann::json array = nlohmann::json::array();
    for (const StoredInstance& in : selected) array.push_back(in.raw);
    std::cout << array.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
  } else {
    std::cout << FormatTable(selected, absl::Now()) << std::flush;
  }
  return kExitOk;
}

int RunGet(const GlobalOptions& global, const GetOptions& options) {
  if (absl::Status s = ValidateTypeAndId(options.type, options.id); !s.ok()) return Fail(s);
  auto conn = Connect(global, ToolLogger("error"));
  if (!conn.ok()) return FailEtcd(global, conn.status());
  std::unique_ptr<Store> opened = OpenStore(*conn, global.prefix, global.timeout());
  Store& store = *opened;
  absl::StatusOr<StoredInstance> in = store.Get(options.type, options.id);
  if (!in.ok()) return FailEtcd(global, in.status());
  std::vector<StoredInstance> one;
  one.push_back(*std::move(in));
  if (absl::Status s = store.FillLeaseTtls(&one); !s.ok()) return FailEtcd(global, s);
  if (global.output == "table") {
    std::cout << FormatTable(one, absl::Now()) << std::flush;
  } else {
    std::cout << InstanceWithLease(one[0]).dump(2, ' ', false,
                                                nlohmann::json::error_handler_t::replace)
              << std::endl;
  }
  return kExitOk;
}

int RunWatch(const GlobalOptions& global, const WatchOptions& options) {
  if (absl::Status s = ValidateFilterNames(options.type, options.group); !s.ok()) return Fail(s);
  auto status_filter = ParseStatusFilter(options.status);
  if (!status_filter.ok()) return Fail(status_filter.status());
  if (absl::Status s = discovery::ShutdownSignal::Install(); !s.ok()) return Fail(s);
  auto logger = ToolLogger("error");
  auto conn = Connect(global, logger);
  if (!conn.ok()) return FailEtcd(global, conn.status());
  auto watcher = discovery::Watcher::Create({
      .connection = *conn,
      .prefix = global.prefix,
      .type = options.type,
      .delivery = discovery::Delivery::kPoll,
      .logger = logger,
  });
  if (!watcher.ok()) return FailEtcd(global, watcher.status());
  if (absl::Status s = (*watcher)->WaitForSync(global.timeout()); !s.ok()) {
    // Not synced within the timeout: the store did not answer (or refused our credentials).
    if (absl::IsPermissionDenied(s) || absl::IsUnauthenticated(s) || absl::IsInvalidArgument(s)) {
      return FailEtcd(global, s);
    }
    return FailEtcd(global, absl::UnavailableError(s.message()));
  }
  // Quiet until synced (the one error line above says it all); afterwards store trouble and
  // skipped values are worth a warning while the watch goes on.
  if (std::getenv("DISCOVERY_LOG_LEVEL") == nullptr) logger->set_level(spdlog::level::warn);
  discovery::Subscription sub = (*watcher)->Subscribe(
      {.type = options.type, .group = options.group, .status = *status_filter},
      [](const discovery::ChangeEvent& ev) { std::cout << WatchLine(ev) << std::endl; },
      options.initial);
  while (!discovery::ShutdownSignal::Wait(absl::Milliseconds(50))) (*watcher)->Poll();
  (*watcher)->Poll();
  return kExitOk;
}

int RunRegister(const GlobalOptions& global, const RegisterOptions& options) {
  absl::StatusOr<discovery::Instance> instance = BuildInstance(options);
  if (!instance.ok()) return Fail(instance.status());
  if (options.ttl_seconds < 1) return Fail(absl::InvalidArgumentError("--ttl: at least 1 second"));
  std::unique_ptr<HealthCheck> check;
  if (!options.check_http.empty() || !options.check_tcp.empty()) {
    auto c = options.check_http.empty() ? HealthCheck::Tcp(options.check_tcp)
                                        : HealthCheck::Http(options.check_http);
    if (!c.ok()) return Fail(c.status());
    check = *std::move(c);
  }
  const absl::Duration interval =
      absl::Milliseconds(static_cast<int64_t>(options.check_interval_seconds * 1000));
  if (check != nullptr && interval < absl::Milliseconds(10)) {
    return Fail(absl::InvalidArgumentError("--check-interval: at least 0.01 seconds"));
  }
  discovery::InstanceStatus initial_status = discovery::InstanceStatus::kInitializing;
  if (check == nullptr) {
    auto s = discovery::ParseInstanceStatus(options.status);
    if (!s.ok()) return Fail(s.status());
    initial_status = *s;
  }
  if (options.drain_seconds < 0) return Fail(absl::InvalidArgumentError("--drain: negative"));
  if (absl::Status s = discovery::ShutdownSignal::Install(); !s.ok()) return Fail(s);

  auto logger = ToolLogger("info");
  auto conn = Connect(global, logger);
  if (!conn.ok()) return FailEtcd(global, conn.status());
  auto registrar = discovery::Registrar::Create({
      .connection = *conn,
      .on_event =
          [logger](const discovery::RegistrationEvent& ev) {
            if (ev.type == discovery::RegistrationEventType::kRegistered) return;
            logger->info("{} {} lease {:x}{}", discovery::ToString(ev.type), ev.instance_id,
                         ev.lease_id,
                         ev.status.ok() ? std::string() : ": " + std::string(ev.status.message()));
          },
      .logger = logger,
  });
  if (!registrar.ok()) return FailEtcd(global, registrar.status());
  absl::StatusOr<discovery::Registration> reg =
      (*registrar)
          ->Register(*instance,
                     {.ttl = absl::Seconds(options.ttl_seconds), .prefix = global.prefix});
  if (!reg.ok()) return FailEtcd(global, reg.status());
  if (initial_status != discovery::InstanceStatus::kInitializing) {
    if (absl::Status s = reg->SetStatus(initial_status); !s.ok()) {
      (void)reg->Close();
      return FailEtcd(global, s);
    }
  }
  std::cout << reg->instance_id() << std::endl;

  if (check != nullptr) {
    RunChecks(*reg, *check, interval, *logger);
  } else {
    while (!discovery::ShutdownSignal::Wait(absl::Seconds(1))) {
    }
  }
  logger->info("signal {}: deregistering {}", discovery::ShutdownSignal::signal_number(),
               reg->key());
  absl::Status closed =
      reg->Close(absl::Milliseconds(static_cast<int64_t>(options.drain_seconds * 1000)));
  if (!closed.ok()) return FailEtcd(global, closed);
  return kExitOk;
}

int RunDeregister(const GlobalOptions& global, const DeregisterOptions& options) {
  if (absl::Status s = ValidateTypeAndId(options.type, options.id); !s.ok()) return Fail(s);
  auto conn = Connect(global, ToolLogger("error"));
  if (!conn.ok()) return FailEtcd(global, conn.status());
  std::unique_ptr<Store> opened = OpenStore(*conn, global.prefix, global.timeout());
  Store& store = *opened;
  absl::StatusOr<DeleteResult> deleted = store.Delete(options.type, options.id);
  if (!deleted.ok()) return FailEtcd(global, deleted.status());
  std::string key = InstanceKey(global.prefix, options.type, options.id);
  if (deleted->lease_id == 0) {
    std::cout << "deleted " << key << " (no lease)" << std::endl;
  } else if (deleted->other_keys_on_lease > 0) {
    std::cout << absl::StrFormat("deleted %s; lease %x kept: %d other key(s) still use it\n", key,
                                 deleted->lease_id, deleted->other_keys_on_lease)
              << std::flush;
  } else {
    std::cout << absl::StrFormat("deleted %s; lease %x %s\n", key, deleted->lease_id,
                                 deleted->lease_revoked ? "revoked" : "had already expired")
              << std::flush;
  }
  return kExitOk;
}

int RunSetStatus(const GlobalOptions& global, const SetStatusOptions& options) {
  if (absl::Status s = ValidateTypeAndId(options.type, options.id); !s.ok()) return Fail(s);
  absl::StatusOr<discovery::InstanceStatus> status = discovery::ParseInstanceStatus(options.status);
  if (!status.ok()) return Fail(status.status());
  auto conn = Connect(global, ToolLogger("error"));
  if (!conn.ok()) return FailEtcd(global, conn.status());
  std::unique_ptr<Store> opened = OpenStore(*conn, global.prefix, global.timeout());
  Store& store = *opened;
  absl::StatusOr<SetStatusResult> result =
      store.SetStatus(options.type, options.id, *status, options.custom_state);
  if (!result.ok()) return FailEtcd(global, result.status());
  std::cout << absl::StrFormat("%s: %s -> %s, customState \"%s\", lease %x\n", result->key,
                               AV(discovery::ToString(result->previous)),
                               AV(discovery::ToString(result->written.status)),
                               result->written.custom_state, result->written.lease_id)
            << std::flush;
  return kExitOk;
}

}  // namespace discoveryctl
