#include "common.h"

#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "bare.h"
#include "sample_instance.h"
#include "util/clock.h"

namespace discovery_bench {

const std::vector<std::string> kAllScenarios = {"keepalive", "register",         "watch-latency",
                                                "fanout",    "watch-throughput", "resync",
                                                "pick",      "gateway",          "watcher-scale"};

const std::vector<std::string> kBackendScenarios = {"register", "keepalive", "watch-latency"};

const std::vector<std::string> kRedisScenarios = {"register", "keepalive", "watch-latency",
                                                  "watch-throughput", "resync"};

ThreadCounts CountThreads() {
  ThreadCounts c;
  const std::string self = absl::StrCat(getpid());
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/task", ec)) {
    ++c.total;
    if (e.path().filename() == self) continue;
    std::ifstream in(e.path() / "comm");
    std::string comm;
    std::getline(in, comm);
    if (absl::StartsWith(comm, "discovery-")) ++c.library;
  }
  return c;
}

bool WaitFor(const std::function<bool()>& pred, absl::Duration timeout, absl::Duration poll) {
  const absl::Time deadline =
      discovery::util::MonoNow() + timeout;  // a wall-clock step must not cut it
  while (!pred()) {
    if (discovery::util::MonoNow() > deadline) return pred();
    absl::SleepFor(poll);
  }
  return true;
}

Json Target(const std::string& what, bool met) {
  Json t;
  t["target"] = what;
  t["met"] = met;
  return t;
}

// ---------------------------------------------------------------------------------------------
// Test data

Instance MakeInstance(int i, const std::string& type) {
  Instance in = discovery_bench::SampleInstance(i, type);
  in.updated_at = absl::Now();
  return in;
}

std::string KeyOf(const std::string& prefix, const Instance& in) {
  return absl::StrCat(prefix, in.type, "/", in.instance_id);
}

std::string PrefixEnd(std::string prefix) {
  prefix.back() = static_cast<char>(prefix.back() + 1);  // prefixes end with '/'
  return prefix;
}

// A unique key prefix per scenario run (also unique on a shared --endpoints cluster).
std::string UniquePrefix(const std::string& scenario, const std::string& who) {
  static std::atomic<int> counter{0};
  return absl::StrFormat("/bench/%s-%d-%d-%d/%s/", scenario, getpid(),
                         absl::ToUnixSeconds(absl::Now()), counter.fetch_add(1), who);
}

std::string Context::Backend() const {
  if (!flags->gateway.empty()) return "gateway";
  if (absl::StartsWith(flags->store, "redis://")) return "redis";
  return "etcd";
}

std::string Context::Prefix(const std::string& scenario, const std::string& who) const {
  // A gateway-mode client may use discoveryd's prefix only (kInvalidArgument otherwise).
  if (Backend() == "gateway") return flags->gateway_prefix;
  return UniquePrefix(scenario, who);
}

discovery::EtcdOptions Context::EtcdOpts() const {
  discovery::EtcdOptions o;
  o.endpoints = endpoints;
  o.logger = logger;
  o.call_timeout = absl::Seconds(10);
  return o;
}

std::shared_ptr<discovery::Connection> Context::Connect() const {
  // The same switch as examples/game_server (ConnectTo; the token from DISCOVERY_API_TOKEN).
  auto conn = flags->gateway.empty() && flags->store.empty()
                  ? discovery::Connection::Create(EtcdOpts())
                  : discovery::ConnectTo(flags->gateway, flags->store);
  if (!conn.ok()) {
    std::cerr << "Connection::Create: " << conn.status() << "\n";
    std::exit(2);
  }
  return *conn;
}

Context::MeasuredSync Context::SyncWatcher(const std::string& prefix) const {
  MeasuredSync m;
  m.conn = Connect();
  malloc_trim(0);
  m.rss_before_kib = ProcStatus("VmRSS");
  const int64_t s0 = NowNs();
  m.watcher = NewWatcher(m.conn, prefix);
  m.sync_s = Seconds(NowNs() - s0);
  m.rss_delta_kib = ProcStatus("VmRSS") - m.rss_before_kib;
  return m;
}

std::unique_ptr<discovery::Watcher> Context::NewWatcher(std::shared_ptr<discovery::Connection> conn,
                                                        const std::string& prefix) const {
  discovery::WatcherOptions o;
  o.connection = std::move(conn);
  o.prefix = prefix;
  o.logger = logger;
  o.protect_threshold = 0;  // benchmarks delete on purpose
  auto w = discovery::Watcher::Create(std::move(o));
  if (!w.ok()) {
    std::cerr << "Watcher::Create: " << w.status() << "\n";
    std::exit(2);
  }
  if (auto s = (*w)->WaitForSync(absl::Seconds(120)); !s.ok()) {
    std::cerr << "WaitForSync: " << s << "\n";
    std::exit(2);
  }
  return *std::move(w);
}

// Writes n instances MakeInstance(0..n) under prefix with `threads` bare writers.
int BulkPut(Bare& bare, const std::string& prefix, int n, int threads) {
  std::atomic<int> errors{0};
  ParallelFor(threads, n, [&](int i) {
    Instance in = MakeInstance(i);
    if (!bare.Put(KeyOf(prefix, in), discovery::EncodeInstance(in)).ok()) errors.fetch_add(1);
  });
  return errors.load();
}

}  // namespace discovery_bench
