// discoveryctl: the operator command line of discovery.
//
//   discoveryctl list [--type T] [--group G] [--status S]
//   discoveryctl get TYPE ID
//   discoveryctl watch [--type T] [--group G] [--initial]
//   discoveryctl register --type T --group G --host H --port NAME=PORT ... [--check-http URL]
//   discoveryctl deregister TYPE ID
//   discoveryctl set-status TYPE ID STATUS [--custom-state X]
//
// This file only declares the flags (CLI11) and dispatches to commands.cc. Exit codes: 0 ok,
// 1 usage or invalid argument, 2 not found, 3 store (etcd, Redis, gateway) unreachable or
// auth failed. The store is etcd (--endpoints), discoveryd (--gateway) or --store redis://....
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <iostream>
#include <optional>
#include <string>

#include "CLI/CLI.hpp"
#include "commands.h"
#include "common.h"
#include "grpc/support/log.h"

namespace {

using discoveryctl::GlobalOptions;

// The transport flags as given on the command line (empty optional: absent).
struct TransportFlags {
  std::optional<std::string> endpoints, gateway, store;
};

void AddGlobalFlags(CLI::App& app, GlobalOptions& g, TransportFlags& t) {
  // The three transports take their environment variables in ResolveTransport (the command
  // line wins over the environment; two of them on either is a usage error).
  app.add_option(
      "--endpoints", t.endpoints,
      "etcd endpoints, comma separated (env ETCD_ENDPOINTS, default " + g.endpoints + ")");
  app.add_option("--gateway", t.gateway,
                 "discoveryd URLs, comma separated: through the gateway instead of --endpoints "
                 "(env DISCOVERY_GATEWAY)");
  app.add_option("--api-token", g.api_token, "discoveryd API token (X-API-Token) for --gateway")
      ->envname("DISCOVERY_API_TOKEN");
  app.add_option("--store", t.store,
                 "store URL instead of --endpoints: redis://[user:pass@]host:port[/db] or "
                 "etcd://host:port (env DISCOVERY_STORE)");
  app.add_option("--prefix", g.prefix, "key prefix of the registry (must end with '/')")
      ->envname("DISCOVERY_PREFIX")
      ->capture_default_str();
  app.add_option("--user", g.user, "etcd user (auth)")->envname("ETCD_USER");
  app.add_option("--password", g.password, "etcd password")->envname("ETCD_PASSWORD");
  app.add_option("--cacert", g.ca_file, "CA bundle for https:// endpoints")->envname("ETCD_CACERT");
  app.add_option("--cert", g.cert_file, "client certificate (mTLS)")->envname("ETCD_CERT");
  app.add_option("--key", g.key_file, "client key (mTLS)")->envname("ETCD_KEY");
  app.add_option("-o,--output", g.output, "output format: table or json (default per command)")
      ->check(CLI::IsMember({"table", "json"}));
  app.add_option("--timeout", g.timeout_seconds, "seconds bounding every store call")
      ->capture_default_str();
}

}  // namespace

int main(int argc, char** argv) {
  // gRPC's own log lines (e.g. "E1125 ... ssl_transport_security ..." on a TLS handshake
  // failure) would break the one-stderr-line promise; the error reaches the user through the
  // failed call. DISCOVERY_LOG_LEVEL=debug keeps them for troubleshooting.
  if (const char* level = std::getenv("DISCOVERY_LOG_LEVEL");
      level == nullptr || std::string(level) != "debug") {
    gpr_set_log_function([](gpr_log_func_args*) {});
  }
  GlobalOptions global;
  discoveryctl::ListOptions list;
  discoveryctl::GetOptions get;
  discoveryctl::WatchOptions watch;
  discoveryctl::RegisterOptions reg;
  discoveryctl::DeregisterOptions dereg;
  discoveryctl::SetStatusOptions set_status;
  std::string custom_state;
  std::function<int()> run;

  CLI::App app{
      "discoveryctl: inspect and change the discovery registry (etcd, Redis or via discoveryd)"};
  app.fallthrough();  // global flags are accepted after the command too
  app.require_subcommand(1);
  TransportFlags transport;
  AddGlobalFlags(app, global, transport);

  CLI::App* list_cmd = app.add_subcommand("list", "list instances as a table (or -o json)");
  list_cmd->add_option("--type", list.type, "only this type");
  list_cmd->add_option("--group", list.group, "only this group");
  list_cmd->add_option("--status", list.status,
                       "only this status (initializing, ready, shutting_down, error)");
  list_cmd->callback([&] { run = [&] { return discoveryctl::RunList(global, list); }; });

  CLI::App* get_cmd = app.add_subcommand("get", "one instance as JSON, with its lease TTL");
  get_cmd->add_option("type", get.type, "instance type")->required();
  get_cmd->add_option("id", get.id, "instance id")->required();
  get_cmd->callback([&] { run = [&] { return discoveryctl::RunGet(global, get); }; });

  CLI::App* watch_cmd =
      app.add_subcommand("watch", "print one JSON line per change until SIGINT/SIGTERM");
  watch_cmd->add_option("--type", watch.type, "only this type");
  watch_cmd->add_option("--group", watch.group, "only this group");
  watch_cmd->add_option("--status", watch.status, "only instances in (or leaving) this status");
  watch_cmd->add_flag("--initial", watch.initial, "print the current instances first as added");
  watch_cmd->callback([&] { run = [&] { return discoveryctl::RunWatch(global, watch); }; });

  CLI::App* reg_cmd =
      app.add_subcommand("register", "register an instance and keep it alive until SIGINT/SIGTERM");
  reg_cmd->add_option("--type", reg.type, "instance type")->required();
  reg_cmd->add_option("--group", reg.group, "instance group")->required();
  reg_cmd->add_option("--host", reg.host, "hostname")->required();
  reg_cmd->add_option("--public-ip", reg.public_ip, "public IP");
  reg_cmd->add_option("--private-ip", reg.private_ip, "private IP");
  reg_cmd->add_option("--port", reg.ports, "NAME=PORT (repeatable)")->required();
  reg_cmd->add_option("--id", reg.id, "instance id (default: a new ULID)");
  reg_cmd->add_option("--ttl", reg.ttl_seconds, "lease TTL in seconds")->capture_default_str();
  CLI::Option* status_opt =
      reg_cmd->add_option("--status", reg.status, "status set after registering (no check)")
          ->capture_default_str();
  reg_cmd->add_option("--meta", reg.meta, "K=V metadata (repeatable)");
  reg_cmd->add_option("--server-version", reg.version, "version of the registered server");
  reg_cmd->add_option("--region", reg.region, "region");
  reg_cmd->add_option("--zone", reg.zone, "zone");
  reg_cmd->add_option("--weight", reg.weight, "weight 0..10000")->capture_default_str();
  CLI::Option* http_opt = reg_cmd->add_option(
      "--check-http", reg.check_http, "health check: GET this http:// URL (2xx/3xx = pass)");
  CLI::Option* tcp_opt =
      reg_cmd->add_option("--check-tcp", reg.check_tcp, "health check: connect to HOST:PORT");
  reg_cmd->add_option("--check-interval", reg.check_interval_seconds, "seconds between checks")
      ->capture_default_str();
  reg_cmd
      ->add_option("--drain", reg.drain_seconds,
                   "seconds in shutting_down before the lease is revoked on exit")
      ->capture_default_str();
  http_opt->excludes(tcp_opt);
  status_opt->excludes(http_opt)->excludes(tcp_opt);
  reg_cmd->callback([&] { run = [&] { return discoveryctl::RunRegister(global, reg); }; });

  CLI::App* dereg_cmd =
      app.add_subcommand("deregister", "delete an instance's key and revoke its lease");
  dereg_cmd->add_option("type", dereg.type, "instance type")->required();
  dereg_cmd->add_option("id", dereg.id, "instance id")->required();
  dereg_cmd->callback([&] { run = [&] { return discoveryctl::RunDeregister(global, dereg); }; });

  CLI::App* set_cmd = app.add_subcommand(
      "set-status", "rewrite an instance's status (and customState), keeping its lease");
  set_cmd->add_option("type", set_status.type, "instance type")->required();
  set_cmd->add_option("id", set_status.id, "instance id")->required();
  set_cmd->add_option("status", set_status.status, "initializing, ready, shutting_down or error")
      ->required();
  CLI::Option* custom_opt = set_cmd->add_option("--custom-state", custom_state, "customState");
  set_cmd->callback([&] {
    if (custom_opt->count() > 0) set_status.custom_state = custom_state;
    run = [&] { return discoveryctl::RunSetStatus(global, set_status); };
  });

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::cerr << "discoveryctl: " << e.what() << " (see --help)" << std::endl;
    return discoveryctl::kExitUsage;
  }
  if (absl::Status s = discoveryctl::ResolveTransport(transport.endpoints, transport.gateway,
                                                      transport.store, &global);
      !s.ok()) {
    return discoveryctl::Fail(s);
  }
  int rc = discoveryctl::kExitUsage;
  try {
    rc = run ? run() : discoveryctl::kExitUsage;
  } catch (const std::exception& e) {
    // Nothing below is expected to throw; never let an exception escape main.
    std::cerr << "discoveryctl: internal error: " << e.what() << std::endl;
  }
  // Leave without exit()'s atexit handlers: a TLS channel that failed (no client certificate,
  // unknown CA) may still be retrying its handshake on one of gRPC's threads, and OpenSSL's
  // atexit cleanup then frees what that handshake uses (a SIGSEGV instead of exit 3, about 1 run
  // in 60 in tests/deploy). Everything this tool prints is flushed first.
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  std::_Exit(rc);
}
