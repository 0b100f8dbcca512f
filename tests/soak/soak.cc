// discovery-soak: the processes of the soak run (tests/soak/run drives them; see README.md).
//
//   discovery-soak free-port
//       prints a TCP port on 127.0.0.1 that was free a moment ago.
//   discovery-soak registrar --endpoints E --count N [--ops-per-sec R] [--ttl S] [--seed X]
//       one Registrar holding N instances of type "soak" and churning them: status changes,
//       metadata and performance updates, graceful deregistration + a fresh registration.
//       SIGTERM/SIGINT: ShutdownAll. SIGKILL is the script's "crash".
//   discovery-soak watcher --endpoints E [--report-seconds 60] [--check-seconds 5]
//       one Watcher over the prefix. Every second a probe instance (its own Registrar on its
//       own Connection) changes its customState; the time from before that write to the
//       watcher's event is the watch lag. Every --check-seconds the cache is compared with
//       etcd at the same revision: snapshot at revision R vs a Range pinned to revision R
//       (same keys, same decoded values); any difference is a mismatch. Every
//       --report-seconds it prints one line:
//         report n=3 instances=4998 events=123456 invalid=0 resyncs=0 lag_ms_p50=0.8
//         lag_ms_p99=4.1 lag_ms_max=12.0 probes=60 lost_probes=0 rev_lag_max=3 checks=12
//         mismatches=0 total_checks=36 total_mismatches=0
//
// Only 127.0.0.1 endpoints are accepted: the soak never talks to anything else.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "discovery/etcd.h"
#include "discovery/instance.h"
#include "discovery/registrar.h"
#include "discovery/watcher.h"
#include "etcd/client.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

namespace {

namespace pb = ::etcdserverpb;
using discovery::Instance;
using discovery::InstanceStatus;

constexpr char kPrefix[] = "/services/";
constexpr char kType[] = "soak";

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    close(fd);
    return 1;
  }
  close(fd);
  std::cout << ntohs(addr.sin_port) << std::endl;
  return 0;
}

// Loopback only: the soak must not load anything but its own local etcd.
bool LoopbackOnly(const std::vector<std::string>& endpoints) {
  for (const std::string& e : endpoints) {
    if (!absl::StartsWith(e, "http://127.0.0.1:") && !absl::StartsWith(e, "127.0.0.1:")) {
      std::cerr << "discovery-soak: only http://127.0.0.1:PORT endpoints, got " << e << "\n";
      return false;
    }
  }
  return !endpoints.empty();
}

std::shared_ptr<spdlog::logger> Logger(const std::string& name) {
  auto logger =
      std::make_shared<spdlog::logger>(name, std::make_shared<spdlog::sinks::stderr_sink_mt>());
  logger->set_level(spdlog::level::warn);
  return logger;
}

Instance NewInstance(std::mt19937_64& rng) {
  Instance in;
  in.type = kType;
  in.group = absl::StrCat("g", rng() % 8);
  in.hostname = absl::StrCat("soak-", rng() % 100000);
  in.private_ip = absl::StrFormat("10.%d.%d.%d", rng() % 256, rng() % 256, rng() % 256);
  in.ports = {{"game", static_cast<int>(7000 + rng() % 1000)}, {"grpc", 50051}};
  in.version = "1.0.0";
  in.meta = {{"map", "forest"}};
  return in;
}

// ---- registrar role ----

int RunRegistrar(const std::vector<std::string>& endpoints, int count, double ops_per_sec, int ttl,
                 uint64_t seed) {
  if (!LoopbackOnly(endpoints)) return 1;
  if (auto s = discovery::ShutdownSignal::Install(); !s.ok()) return 1;
  discovery::EtcdOptions etcd;
  etcd.endpoints = endpoints;
  etcd.logger = Logger("discovery.etcd");
  std::atomic<uint64_t> errors{0}, lost{0};
  auto registrar = discovery::Registrar::Create(
      {.etcd = etcd,
       .on_event =
           [&](const discovery::RegistrationEvent& ev) {
             if (ev.type == discovery::RegistrationEventType::kError) errors.fetch_add(1);
             if (ev.type == discovery::RegistrationEventType::kLeaseLost) lost.fetch_add(1);
           },
       .logger = Logger("discovery.registrar")});
  if (!registrar.ok()) {
    std::cerr << registrar.status() << "\n";
    return 1;
  }
  std::mt19937_64 rng(seed != 0 ? seed : std::random_device{}());
  const discovery::RegistrationOptions ro{.ttl = absl::Seconds(ttl)};
  std::vector<discovery::Registration> regs;
  regs.reserve(static_cast<size_t>(count));
  auto register_one = [&]() -> bool {
    auto reg = (*registrar)->Register(NewInstance(rng), ro);
    if (!reg.ok()) {
      errors.fetch_add(1);
      return false;
    }
    (void)reg->SetStatus(InstanceStatus::kReady);
    regs.push_back(*std::move(reg));
    return true;
  };
  absl::Time start = absl::Now();
  while (static_cast<int>(regs.size()) < count && !discovery::ShutdownSignal::Received()) {
    if (!register_one()) discovery::ShutdownSignal::Wait(absl::Milliseconds(200));
  }
  std::cerr << "registrar " << getpid() << ": " << regs.size() << " registered in "
            << absl::FormatDuration(absl::Now() - start) << "\n";
  uint64_t ops = 0, status_changes = 0, deregs = 0;
  const absl::Duration period =
      ops_per_sec > 0 ? absl::Seconds(1.0 / ops_per_sec) : absl::InfiniteDuration();
  absl::Time next = absl::Now();
  absl::Time last_report = absl::Now();
  while (!discovery::ShutdownSignal::Received()) {
    next += period;
    absl::Time now = absl::Now();
    if (next > now && discovery::ShutdownSignal::Wait(next - now)) break;
    if (next < now - absl::Seconds(1)) next = now;  // fell behind: do not burst
    if (regs.empty()) {
      register_one();
      continue;
    }
    size_t i = rng() % regs.size();
    discovery::Registration& r = regs[i];
    int op = static_cast<int>(rng() % 100);
    ++ops;
    if (op < 40) {  // status change: ready <-> error, with a customState
      InstanceStatus to = r.instance().status == InstanceStatus::kReady ? InstanceStatus::kError
                                                                        : InstanceStatus::kReady;
      if (!r.SetStatus(to, absl::StrCat("op-", ops)).ok()) errors.fetch_add(1);
      ++status_changes;
    } else if (op < 70) {  // performance (coalesced, background)
      (void)r.UpdatePerformance(
          {{"load", static_cast<double>(rng() % 100) / 100.0}, {"players", rng() % 500}});
    } else if (op < 85) {  // metadata
      if (!r.UpdateMetadata({{"round", absl::StrCat(ops)}}).ok()) errors.fetch_add(1);
    } else {  // graceful deregistration, and a new instance in its place
      (void)r.Close();
      regs.erase(regs.begin() + static_cast<std::ptrdiff_t>(i));
      ++deregs;
      register_one();
    }
    if (absl::Now() - last_report >= absl::Seconds(60)) {
      last_report = absl::Now();
      std::cerr << "registrar " << getpid() << ": instances=" << regs.size() << " ops=" << ops
                << " status_changes=" << status_changes << " deregistrations=" << deregs
                << " errors=" << errors.load() << " lease_lost=" << lost.load() << "\n";
    }
  }
  (*registrar)->ShutdownAll();
  std::cerr << "registrar " << getpid() << ": shut down; ops=" << ops << " errors=" << errors.load()
            << "\n";
  return 0;
}

// ---- watcher role ----

struct LagStats {
  std::vector<double> ms;
  uint64_t probes = 0;
  uint64_t lost = 0;
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

// Snapshot at revision R vs Range pinned at R. Returns the number of differing keys, or -1
// when the comparison could not be made (etcd call failed; counted separately).
int64_t Compare(discovery::etcd::Client& client, const discovery::SnapshotPtr& snap,
                std::string* detail) {
  const int64_t rev = snap->revision();
  std::map<std::string, std::string> etcd_side;  // key -> encoded instance
  std::string key = kPrefix;
  std::string end = kPrefix;
  end.back() = static_cast<char>(end.back() + 1);
  for (;;) {
    pb::RangeRequest req;
    req.set_key(key);
    req.set_range_end(end);
    req.set_limit(2000);
    req.set_revision(rev);
    auto resp = client.Range(req, absl::Seconds(10));
    if (!resp.ok()) {
      *detail = std::string(resp.status().message());
      return -1;
    }
    for (const auto& kv : resp->kvs()) {
      auto in = discovery::DecodeInstance(kv.value());
      // Same validity rule as the watcher: valid JSON instance whose type/id match the key.
      if (in.ok() && kv.key() == absl::StrCat(kPrefix, in->type, "/", in->instance_id)) {
        etcd_side[kv.key()] = discovery::EncodeInstance(*in);
      }
    }
    if (!resp->more() || resp->kvs_size() == 0) break;
    key = resp->kvs(resp->kvs_size() - 1).key();
    key.push_back('\0');
  }
  int64_t mismatches = 0;
  std::map<std::string, std::string> cache_side;
  for (const auto& in : snap->All()) {
    cache_side[absl::StrCat(kPrefix, in->type, "/", in->instance_id)] =
        discovery::EncodeInstance(*in);
  }
  for (const auto& [k, v] : cache_side) {
    auto it = etcd_side.find(k);
    if (it == etcd_side.end() || it->second != v) {
      ++mismatches;
      if (detail->empty())
        *detail = absl::StrCat(k, it == etcd_side.end() ? " only in cache" : " differs");
    }
  }
  for (const auto& [k, v] : etcd_side) {
    if (cache_side.count(k) == 0) {
      ++mismatches;
      if (detail->empty()) *detail = absl::StrCat(k, " missing from cache");
    }
  }
  return mismatches;
}

int RunWatcher(const std::vector<std::string>& endpoints, int report_seconds, int check_seconds) {
  if (!LoopbackOnly(endpoints)) return 1;
  if (auto s = discovery::ShutdownSignal::Install(); !s.ok()) return 1;
  discovery::EtcdOptions etcd;
  etcd.endpoints = endpoints;
  etcd.logger = Logger("discovery.etcd");
  auto watcher = discovery::Watcher::Create({.etcd = etcd, .logger = Logger("discovery.watcher")});
  if (!watcher.ok()) {
    std::cerr << watcher.status() << "\n";
    return 1;
  }
  if (auto s = (*watcher)->WaitForSync(absl::Seconds(30)); !s.ok()) {
    std::cerr << s << "\n";
    return 1;
  }
  // The probe: its own connection, so its writes do not share the watcher's channel.
  auto probe_registrar =
      discovery::Registrar::Create({.etcd = etcd, .logger = Logger("discovery.registrar")});
  if (!probe_registrar.ok()) return 1;
  Instance probe_in;
  probe_in.type = "soak-probe";
  probe_in.group = "probe";
  probe_in.hostname = "probe";
  probe_in.status = InstanceStatus::kReady;
  auto probe = (*probe_registrar)->Register(probe_in);
  if (!probe.ok()) {
    std::cerr << "probe: " << probe.status() << "\n";
    return 1;
  }
  const std::string probe_id = probe->instance_id();

  std::mutex mu;
  std::condition_variable cv;
  std::string seen_state;  // guarded by mu
  auto sub = (*watcher)->Subscribe({.type = "soak-probe"}, [&](const discovery::ChangeEvent& ev) {
    if (ev.instance->instance_id != probe_id) return;
    std::lock_guard<std::mutex> lock(mu);
    seen_state = ev.instance->custom_state;
    cv.notify_all();
  });

  auto client = (*watcher)->connection()->client();
  LagStats lag;
  uint64_t checks = 0, mismatches = 0, total_checks = 0, total_mismatches = 0, failed_checks = 0;
  int64_t rev_lag_max = 0;
  uint64_t seq = 0;
  int report_no = 0;
  absl::Time next_report = absl::Now() + absl::Seconds(report_seconds);
  absl::Time next_check = absl::Now() + absl::Seconds(check_seconds);
  while (!discovery::ShutdownSignal::Wait(absl::Seconds(1))) {
    // Probe: write, wait for the watcher's event.
    std::string state = absl::StrCat("p", ++seq);
    absl::Time t0 = absl::Now();
    if (probe->SetStatus(InstanceStatus::kReady, state).ok()) {
      std::unique_lock<std::mutex> lock(mu);
      bool got = cv.wait_for(lock, std::chrono::seconds(10), [&] { return seen_state == state; });
      ++lag.probes;
      if (got) {
        lag.ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
      } else {
        ++lag.lost;
      }
    }
    if (absl::Now() >= next_check) {
      next_check += absl::Seconds(check_seconds);
      pb::RangeRequest head;
      head.set_key(kPrefix);
      head.set_count_only(true);
      discovery::SnapshotPtr snap = (*watcher)->snapshot();
      auto cur = client->Range(head);
      if (cur.ok())
        rev_lag_max = std::max(rev_lag_max, cur->header().revision() - snap->revision());
      std::string detail;
      int64_t m = Compare(*client, snap, &detail);
      if (m < 0) {
        ++failed_checks;
        std::cerr << "check at revision " << snap->revision() << " failed: " << detail << "\n";
      } else {
        ++checks;
        mismatches += static_cast<uint64_t>(m);
        if (m > 0) {
          std::cerr << "MISMATCH at revision " << snap->revision() << ": " << m << " (" << detail
                    << ")\n";
        }
      }
    }
    if (absl::Now() >= next_report) {
      next_report += absl::Seconds(report_seconds);
      total_checks += checks;
      total_mismatches += mismatches;
      discovery::WatcherStats st = (*watcher)->stats();
      std::cout << absl::StrFormat(
                       "report n=%d instances=%d events=%d invalid=%d resyncs=%d "
                       "lag_ms_p50=%.1f lag_ms_p99=%.1f lag_ms_max=%.1f probes=%d lost_probes=%d "
                       "rev_lag_max=%d checks=%d mismatches=%d failed_checks=%d "
                       "total_checks=%d total_mismatches=%d",
                       ++report_no, st.instances, st.events, st.invalid_values, st.resyncs,
                       Percentile(lag.ms, 0.5), Percentile(lag.ms, 0.99), Percentile(lag.ms, 1.0),
                       lag.probes, lag.lost, rev_lag_max, checks, mismatches, failed_checks,
                       total_checks, total_mismatches)
                << std::endl;
      lag = LagStats();
      checks = mismatches = 0;
      rev_lag_max = 0;
    }
  }
  sub.Reset();
  (void)probe->Close();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"discovery soak driver (tests/soak/run)"};
  app.require_subcommand(1);
  std::string endpoints_csv;
  int count = 1000, ttl = 10, report_seconds = 60, check_seconds = 5;
  double ops_per_sec = 10;
  uint64_t seed = 0;
  CLI::App* free_port = app.add_subcommand("free-port", "print a free loopback port");
  CLI::App* reg = app.add_subcommand("registrar", "hold and churn --count instances");
  reg->add_option("--endpoints", endpoints_csv)->required();
  reg->add_option("--count", count);
  reg->add_option("--ops-per-sec", ops_per_sec);
  reg->add_option("--ttl", ttl);
  reg->add_option("--seed", seed);
  CLI::App* wat = app.add_subcommand("watcher", "watch, probe lag, compare with etcd");
  wat->add_option("--endpoints", endpoints_csv)->required();
  wat->add_option("--report-seconds", report_seconds);
  wat->add_option("--check-seconds", check_seconds);
  CLI11_PARSE(app, argc, argv);
  if (free_port->parsed()) return FreePort();
  std::vector<std::string> endpoints = discovery::SplitEndpoints(endpoints_csv);
  if (reg->parsed()) return RunRegistrar(endpoints, count, ops_per_sec, ttl, seed);
  return RunWatcher(endpoints, std::max(1, report_seconds), std::max(1, check_seconds));
}
