// Example game server: registers itself, goes initializing -> ready, publishes performance
// figures once a second, and on SIGINT/SIGTERM drains and deregisters.
//
//   ETCD_ENDPOINTS=http://127.0.0.1:2379 ./example_game_server --type world --group kr-1 --port
//   game=7001
//
// Prints the instance id as the first line of stdout (tests read it).
#include <cstdlib>
#include <iostream>
#include <random>

#include "CLI/CLI.hpp"
#include "discovery/registrar.h"

int main(int argc, char** argv) {
  CLI::App app{"discovery example game server"};
  std::string type = "world", group = "kr-1", id, host = "127.0.0.1", version = "1.0.0";
  std::vector<std::string> ports_flag = {"game=7001"};
  int ttl = 10, count = 1;
  double drain = 0, perf_interval = 1;
  app.add_option("--type", type, "instance type");
  app.add_option("--group", group, "instance group");
  app.add_option("--id", id, "instance id (default: a new ULID)");
  app.add_option("--host", host, "hostname / private ip");
  app.add_option("--version", version, "server version");
  app.add_option("--port", ports_flag, "NAME=PORT (repeatable)");
  app.add_option("--ttl", ttl, "lease TTL in seconds");
  app.add_option("--count", count, "register this many instances (ids <id>-<n> when --id is set)");
  app.add_option("--drain", drain, "seconds in shutting_down before the lease is revoked");
  app.add_option("--perf-interval", perf_interval,
                 "seconds between performance updates of every instance (0 = never)");
  std::string gateway = std::getenv("DISCOVERY_GATEWAY") ? std::getenv("DISCOVERY_GATEWAY") : "";
  std::string store = std::getenv("DISCOVERY_STORE") ? std::getenv("DISCOVERY_STORE") : "";
  app.add_option("--gateway", gateway,
                 "register through discoveryd: comma separated URLs (env DISCOVERY_GATEWAY)");
  app.add_option("--store", store,
                 "redis://host:port[/db] or etcd://host:port (env DISCOVERY_STORE; default: etcd "
                 "from ETCD_ENDPOINTS)");
  CLI11_PARSE(app, argc, argv);

  if (auto s = discovery::ShutdownSignal::Install(); !s.ok()) {
    std::cerr << s << "\n";
    return 1;
  }
  // The same code for every transport: only the connection differs.
  auto conn = discovery::ConnectTo(gateway, store);
  if (!conn.ok()) {
    std::cerr << conn.status() << "\n";
    return 1;
  }
  auto registrar = discovery::Registrar::Create({
      .connection = *conn,
      .on_event =
          [](const discovery::RegistrationEvent& ev) {
            std::cerr << "event " << discovery::ToString(ev.type) << " " << ev.instance_id
                      << (ev.status.ok() ? "" : " " + ev.status.ToString()) << "\n";
          },
  });
  if (!registrar.ok()) {
    std::cerr << registrar.status() << "\n";
    return 1;
  }
  discovery::Instance me;
  me.type = type;
  me.group = group;
  me.hostname = host;
  me.private_ip = host;
  me.version = version;
  for (const std::string& p : ports_flag) {
    auto eq = p.find('=');
    if (eq == std::string::npos) {
      std::cerr << "--port wants NAME=PORT, got " << p << "\n";
      return 1;
    }
    me.ports[p.substr(0, eq)] = std::atoi(p.c_str() + eq + 1);
  }
  std::vector<discovery::Registration> regs;
  for (int i = 0; i < count; ++i) {
    discovery::Instance in = me;
    if (!id.empty()) in.instance_id = count == 1 ? id : id + "-" + std::to_string(i);
    auto reg = (*registrar)->Register(in, {.ttl = absl::Seconds(ttl)});
    if (!reg.ok()) {
      std::cerr << "register: " << reg.status() << "\n";
      return 2;
    }
    std::cout << reg->instance_id() << std::endl;
    regs.push_back(*std::move(reg));
  }
  // Loading maps, warming caches... then ready.
  for (auto& r : regs) {
    if (auto s = r.SetStatus(discovery::InstanceStatus::kReady); !s.ok()) {
      std::cerr << "set ready: " << s << "\n";
    }
  }
  std::mt19937 rng(std::random_device{}());
  const absl::Duration tick =
      perf_interval > 0 ? absl::Seconds(perf_interval) : absl::InfiniteDuration();
  while (!discovery::ShutdownSignal::Wait(tick)) {
    for (auto& r : regs) {
      (void)r.UpdatePerformance(
          {{"tps", 1000 + rng() % 400}, {"load", (rng() % 100) / 100.0}, {"players", rng() % 500}});
    }
  }
  std::cerr << "signal " << discovery::ShutdownSignal::signal_number() << ": draining\n";
  (*registrar)->ShutdownAll(absl::Milliseconds(static_cast<int64_t>(drain * 1000)));
  return 0;
}
