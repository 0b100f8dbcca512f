// Per-step cost of a registration against a real etcd, next to a raw gRPC client on the same
// channel (issue 14). Not a pass/fail test: it prints one JSON line per figure. Runs only with
// DISCOVERY_PERF=1 (skipped otherwise); DISCOVERY_PERF_N sets the number of registrations.
//
//   DISCOVERY_PERF=1 DISCOVERY_PERF_N=3000 build/tests/integration/registrar_perf_test
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "discovery/registrar.h"
#include "etcd/client.h"
#include "etcd/lease_keeper.h"
#include "etcd_harness.h"
#include "spdlog/sinks/null_sink.h"
#include "spdlog/spdlog.h"
#include "util/clock.h"

namespace discovery {
namespace {

using testing::EtcdCluster;
namespace pb = ::etcdserverpb;

int64_t NowNs() { return absl::ToUnixNanos(util::MonoNow()); }
double CpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
         (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}
// CPU seconds (user + system) of process `pid` so far.
double ProcCpuSeconds(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  std::getline(in, line);
  size_t paren = line.rfind(')');
  if (paren == std::string::npos) return 0;
  std::vector<std::string> f = absl::StrSplit(line.substr(paren + 2), ' ');
  if (f.size() < 13) return 0;
  return (std::stod(f[11]) + std::stod(f[12])) / sysconf(_SC_CLK_TCK);
}
// Context switches (voluntary + involuntary) of every thread of this process so far.
int64_t ContextSwitches() {
  int64_t n = 0;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream in(task.path() / "status");
    std::string line;
    while (std::getline(in, line)) {
      if (absl::StrContains(line, "ctxt_switches:")) {
        n += std::atoll(line.substr(line.find(':') + 1).c_str());
      }
    }
  }
  return n;
}
std::string LoadAvg() {
  std::ifstream in("/proc/loadavg");
  std::string s;
  std::getline(in, s);
  return s;
}

Instance Sample(int i) {
  Instance in;
  in.type = "world";
  in.group = "kr-1";
  in.hostname = absl::StrCat("game-", i);
  in.private_ip = "10.0.0.5";
  in.ports = {{"game", 8001}, {"grpc", 50051}};
  in.version = "1.4.2";
  return in;
}

pb::TxnRequest GuardedPut(const std::string& key, const std::string& value, int64_t lease) {
  pb::TxnRequest txn;
  auto* cmp = txn.add_compare();
  cmp->set_key(key);
  cmp->set_target(pb::Compare::CREATE);
  cmp->set_result(pb::Compare::EQUAL);
  cmp->set_create_revision(0);
  auto* put = txn.add_success()->mutable_request_put();
  put->set_key(key);
  put->set_value(value);
  put->set_lease(lease);
  txn.add_failure()->mutable_request_range()->set_key(key);
  return txn;
}

// Runs `fn(i)` for i in [0, n) on `k` threads.
void ParallelFor(int k, int n, const std::function<void(int)>& fn) {
  std::atomic<int> next{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < k; ++t) {
    ts.emplace_back([&] {
      for (int i; (i = next.fetch_add(1)) < n;) fn(i);
    });
  }
  for (auto& t : ts) t.join();
}

// DISCOVERY_PERF_ONLY=<figure>[,<figure>]: run only those figures.
bool Want(const char* figure) {
  const char* only = std::getenv("DISCOVERY_PERF_ONLY");
  if (only == nullptr) return true;
  for (absl::string_view f : absl::StrSplit(only, ',')) {
    if (f == figure) return true;
  }
  return false;
}

pid_t g_etcd_pid = -1;
double g_etcd_cpu0 = 0;
int64_t g_switches0 = 0;
void MarkEtcd() {
  g_etcd_cpu0 = ProcCpuSeconds(g_etcd_pid);
  g_switches0 = ContextSwitches();
}

void Print(const std::string& name, int n, int in_flight, double secs, double cpu,
           const std::string& extra = "") {
  const double etcd_cpu = ProcCpuSeconds(g_etcd_pid) - g_etcd_cpu0;
  const double switches = static_cast<double>(ContextSwitches() - g_switches0) / n;
  std::printf(
      "{\"figure\":\"%s\",\"n\":%d,\"in_flight\":%d,\"per_s\":%.0f,\"cpu_us_per_op\":%.1f,"
      "\"etcd_cpu_us_per_op\":%.1f,\"ctx_switches_per_op\":%.1f%s,\"loadavg\":\"%s\"}\n",
      name.c_str(), n, in_flight, n / secs, cpu * 1e6 / n, etcd_cpu * 1e6 / n, switches,
      extra.c_str(), LoadAvg().c_str());
  std::fflush(stdout);
}

class RegistrarPerfTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* on = std::getenv("DISCOVERY_PERF");
    if (on == nullptr || std::string(on) != "1") GTEST_SKIP() << "set DISCOVERY_PERF=1";
    if (const char* n = std::getenv("DISCOVERY_PERF_N")) n_ = std::atoi(n);
    auto c = EtcdCluster::Start({.members = 1});
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = *std::move(c);
    g_etcd_pid = cluster_->Pid(0);
    EtcdOptions o;
    o.endpoints = cluster_->ClientEndpoints();
    auto conn = Connection::Create(o);
    ASSERT_TRUE(conn.ok());
    conn_ = *conn;
  }

  // Raw async: LeaseGrant then the guarded Txn chained in the gRPC callbacks, `k` in flight,
  // on the library's own channel (no library logic).
  void RawAsync(int k) {
    if (!Want("raw_async")) return;
    auto stubs = conn_->client()->CurrentStubs(nullptr);
    std::string value = EncodeInstance(Sample(0));
    std::mutex mu;
    std::condition_variable cv;
    int done = 0, started = 0, errors = 0;
    std::function<void()> start_one;
    struct Op {
      grpc::ClientContext c1, c2;
      pb::LeaseGrantRequest g;
      pb::LeaseGrantResponse gr;
      pb::TxnRequest t;
      pb::TxnResponse tr;
    };
    const std::string prefix = absl::StrCat("/perf/raw", k, "-", ++run_, "/");
    std::vector<int64_t> granted(n_, 0);
    start_one = [&] {
      int i;
      {
        std::lock_guard l(mu);
        if (started >= n_) return;
        i = started++;
      }
      auto op = std::make_shared<Op>();
      op->g.set_ttl(10);
      op->c1.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      stubs->lease->async()->LeaseGrant(&op->c1, &op->g, &op->gr, [&, op, i](grpc::Status s) {
        // Starts the next one first: once `done` reaches n the caller's stack is gone.
        auto finish = [&](bool ok) {
          start_one();
          std::lock_guard l(mu);
          ++done;
          errors += !ok;
          cv.notify_all();
        };
        if (!s.ok()) return finish(false);
        granted[i] = op->gr.id();
        op->t = GuardedPut(absl::StrCat(prefix, i), value, op->gr.id());
        op->c2.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
        stubs->kv->async()->Txn(&op->c2, &op->t, &op->tr, [op, finish](grpc::Status s2) {
          finish(s2.ok() && op->tr.succeeded());
        });
      });
    };
    MarkEtcd();
    const double c0 = CpuSeconds();
    const int64_t t0 = NowNs();
    for (int j = 0; j < k; ++j) start_one();
    std::unique_lock l(mu);
    cv.wait(l, [&] { return done == n_; });
    l.unlock();
    Print("raw_async", n_, k, (NowNs() - t0) / 1e9, CpuSeconds() - c0,
          absl::StrCat(",\"errors\":", errors));
    Revoke(granted);
  }

  // Revokes `leases` (untimed): expiring leases of one figure must not load etcd during the next.
  void Revoke(const std::vector<int64_t>& leases) {
    ParallelFor(16, static_cast<int>(leases.size()), [&](int i) {
      if (leases[i] == 0) return;
      pb::LeaseRevokeRequest r;
      r.set_id(leases[i]);
      (void)conn_->client()->LeaseRevoke(r);
    });
  }

  // Library Register, `k` threads.
  void LibraryRegister(int k) {
    if (!Want("library_register")) return;
    auto null_logger =
        std::make_shared<spdlog::logger>("null", std::make_shared<spdlog::sinks::null_sink_mt>());
    auto r = Registrar::Create(
        {.connection = conn_, .on_event = [](const RegistrationEvent&) {}, .logger = null_logger});
    ASSERT_TRUE(r.ok());
    std::vector<std::optional<Registration>> regs(n_);
    std::atomic<int> errors{0};
    const std::string prefix = absl::StrCat("/perf/lib", k, "-", ++run_, "/");
    MarkEtcd();
    const double c0 = CpuSeconds();
    const int64_t t0 = NowNs();
    ParallelFor(k, n_, [&](int i) {
      auto reg = (*r)->Register(Sample(i), {.prefix = prefix});
      if (!reg.ok()) {
        errors.fetch_add(1);
        return;
      }
      regs[i].emplace(*std::move(reg));
    });
    Print("library_register", n_, k, (NowNs() - t0) / 1e9, CpuSeconds() - c0,
          absl::StrCat(",\"errors\":", errors.load()));
    (*r)->ShutdownAll();
  }

  // Library RegisterAsync with `k` in flight (a new one started from each completion).
  void LibraryRegisterAsync(int k) {
    if (!Want("library_register_async")) return;
    auto null_logger =
        std::make_shared<spdlog::logger>("null", std::make_shared<spdlog::sinks::null_sink_mt>());
    auto r = Registrar::Create(
        {.connection = conn_, .on_event = [](const RegistrationEvent&) {}, .logger = null_logger});
    ASSERT_TRUE(r.ok());
    Registrar* registrar = r->get();
    std::mutex mu;
    std::condition_variable cv;
    std::vector<Registration> regs;
    int started = 0, done = 0, errors = 0;
    const std::string prefix = absl::StrCat("/perf/async", k, "-", ++run_, "/");
    std::function<void()> start_one = [&] {
      int i;
      {
        std::lock_guard l(mu);
        if (started >= n_) return;
        i = started++;
      }
      registrar->RegisterAsync(Sample(i), {.prefix = prefix},
                               [&](absl::StatusOr<Registration> reg) {
                                 start_one();
                                 std::lock_guard l(mu);
                                 if (reg.ok()) {
                                   regs.push_back(*std::move(reg));
                                 } else {
                                   ++errors;
                                 }
                                 ++done;
                                 cv.notify_all();
                               });
    };
    MarkEtcd();
    const double c0 = CpuSeconds();
    const int64_t t0 = NowNs();
    for (int j = 0; j < k; ++j) start_one();
    {
      std::unique_lock l(mu);
      cv.wait(l, [&] { return done == n_; });
    }
    Print("library_register_async", n_, k, (NowNs() - t0) / 1e9, CpuSeconds() - c0,
          absl::StrCat(",\"errors\":", errors));
    (*r)->ShutdownAll();
  }

  // Library RegisterMany (64 in flight).
  void LibraryRegisterMany() {
    if (!Want("library_register_many")) return;
    auto null_logger =
        std::make_shared<spdlog::logger>("null", std::make_shared<spdlog::sinks::null_sink_mt>());
    auto r = Registrar::Create(
        {.connection = conn_, .on_event = [](const RegistrationEvent&) {}, .logger = null_logger});
    ASSERT_TRUE(r.ok());
    std::vector<Instance> batch;
    for (int i = 0; i < n_; ++i) batch.push_back(Sample(i));
    const std::string prefix = absl::StrCat("/perf/many-", ++run_, "/");
    MarkEtcd();
    const double c0 = CpuSeconds();
    const int64_t t0 = NowNs();
    auto results = (*r)->RegisterMany(std::move(batch), {.prefix = prefix});
    int errors = 0;
    for (auto& x : results) errors += !x.ok();
    Print("library_register_many", n_, 64, (NowNs() - t0) / 1e9, CpuSeconds() - c0,
          absl::StrCat(",\"errors\":", errors));
    (*r)->ShutdownAll();
  }

  // The steps of Register one by one, `k` threads; prints the mean wall time of each step.
  void Steps(int k) {
    if (!Want("steps")) return;
    etcd::Client& client = *conn_->client();
    auto logger =
        std::make_shared<spdlog::logger>("null", std::make_shared<spdlog::sinks::null_sink_mt>());
    const char* names[] = {"validate", "grant", "encode", "txn", "track", "emit", "log"};
    std::atomic<int64_t> sum[7] = {};
    std::vector<int64_t> leases(n_);
    const std::string prefix = absl::StrCat("/perf/steps", k, "-", ++run_, "/");
    MarkEtcd();
    const double c0 = CpuSeconds();
    const int64_t t0 = NowNs();
    ParallelFor(k, n_, [&](int i) {
      int64_t t[8];
      t[0] = NowNs();
      Instance in = Sample(i);
      in.instance_id = NewUlid();
      (void)ValidateInstance(in);
      t[1] = NowNs();
      auto g = client.GrantOwnLease(10);
      t[2] = NowNs();
      if (!g.ok()) return;
      in.lease_id = g->id();
      in.updated_at = absl::Now();
      std::string value = EncodeInstance(in);
      t[3] = NowNs();
      auto txn = client.Txn(GuardedPut(absl::StrCat(prefix, in.instance_id), value, g->id()));
      t[4] = NowNs();
      client.keeper().Add(g->id(), absl::Seconds(10), absl::Seconds(3), [](auto&) {});
      t[5] = NowNs();
      client.background().Post([] {});
      t[6] = NowNs();
      SPDLOG_LOGGER_INFO(logger, "registered {} with lease {:x} (ttl {})", value.size(), g->id(),
                         absl::FormatDuration(absl::Seconds(10)));
      t[7] = NowNs();
      leases[i] = g->id();
      for (int s = 0; s < 7; ++s) sum[s].fetch_add(t[s + 1] - t[s]);
    });
    const double secs = (NowNs() - t0) / 1e9;
    std::string extra;
    for (int s = 0; s < 7; ++s) {
      extra += absl::StrFormat(",\"%s_us\":%.1f", names[s], sum[s].load() / 1e3 / n_);
    }
    Print("steps", n_, k, secs, CpuSeconds() - c0, extra);
    for (int64_t l : leases) client.keeper().Remove(l);
    Revoke(leases);
  }

  int n_ = 2000;
  int run_ = 0;
  std::unique_ptr<EtcdCluster> cluster_;
  std::shared_ptr<Connection> conn_;
};

TEST_F(RegistrarPerfTest, OneInFlight) {
  for (int round = 0; round < 2; ++round) {  // A B A B
    RawAsync(1);
    LibraryRegister(1);
    LibraryRegisterAsync(1);
    Steps(1);
  }
}

TEST_F(RegistrarPerfTest, SixteenInFlight) {
  for (int round = 0; round < 2; ++round) {
    RawAsync(16);
    LibraryRegister(16);
    LibraryRegisterAsync(16);
    Steps(16);
  }
}

TEST_F(RegistrarPerfTest, SixtyFourInFlight) {
  for (int round = 0; round < 2; ++round) {
    RawAsync(64);
    LibraryRegisterMany();
  }
}

}  // namespace
}  // namespace discovery
