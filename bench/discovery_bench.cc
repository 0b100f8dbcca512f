// discovery-bench: end-to-end load tool for the discovery library against a real etcd.
//
// It starts a throw-away single-member etcd on 127.0.0.1 (data dir under /dev/shm, through
// the test harness) for every scenario, or uses `--endpoints` of an existing cluster. Each
// scenario prints ONE JSON line on stdout with the library's figures, a raw baseline measured
// in the same run (a bare gRPC client on the generated etcd stubs doing the same etcd calls
// without library logic), the ratio and the target. Logs go to stderr.
//
//   discovery-bench                         # every scenario at full size
//   discovery-bench --scenario register --register-n 2000
//   discovery-bench --smoke                 # every scenario, tiny sizes, < 60 s (CI)
//
// See bench/README.md for what each scenario measures and the latest results.
#include <arpa/inet.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "discovery/etcd.h"
#include "discovery/instance.h"
#include "discovery/picker.h"
#include "discovery/registrar.h"
#include "discovery/watcher.h"
#include "etcd/client.h"
#include "etcd/etcdserverpb/rpc.grpc.pb.h"
#include "etcd/watch_hub.h"
#include "etcd_harness.h"
#include "nlohmann/json.hpp"
#include "sample_instance.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

namespace {

namespace pb = ::etcdserverpb;
using discovery::Instance;
using discovery::InstancePtr;
using Json = nlohmann::ordered_json;

// ---------------------------------------------------------------------------------------------
// Flags

struct Flags {
  std::vector<std::string> scenarios;
  bool smoke = false;
  std::string endpoints;
  std::string log_level = "warn";

  int register_n = 10000;
  int register_threads = 16;

  int keepalive_n = 10000;
  double keepalive_seconds = 60;
  int keepalive_ttl = 10;
  int keepalive_threads = 16;

  int latency_rate = 1000;
  double latency_seconds = 10;

  int fanout_subscribers = 100;
  int fanout_rate = 100;
  double fanout_seconds = 10;

  int throughput_n = 50000;
  int throughput_writers = 16;

  int resync_n = 50000;

  int pick_n = 1000;
  int pick_rate = 100;
  double pick_seconds = 10;

  std::string discoveryd;
  std::string discoveryd_args = "--listen=127.0.0.1:{port} --endpoints={endpoints}";
  std::string discoveryd_token = "bench-token";
  double gateway_seconds = 5;
  int gateway_connections = 4;
  int sse_subscribers = 1000;

  void ApplySmoke() {
    register_n = 200;
    register_threads = 8;
    keepalive_n = 200;
    keepalive_seconds = 3;
    keepalive_ttl = 2;
    latency_rate = 200;
    latency_seconds = 1;
    fanout_rate = 50;
    fanout_seconds = 1;
    throughput_n = 2000;
    resync_n = 2000;
    pick_n = 200;
    pick_seconds = 1;
    gateway_seconds = 1;
    sse_subscribers = 50;
  }
};

const std::vector<std::string> kAllScenarios = {"keepalive", "register",         "watch-latency",
                                                "fanout",    "watch-throughput", "resync",
                                                "pick",      "gateway"};

// ---------------------------------------------------------------------------------------------
// Measurement helpers

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

double Seconds(int64_t ns) { return static_cast<double>(ns) / 1e9; }

double CpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  auto tv = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  return tv(ru.ru_utime) + tv(ru.ru_stime);
}

// A numeric field of /proc/self/status ("Threads", "VmRSS" in kB); -1 if absent.
int64_t ProcStatus(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, field + ":")) {
      std::string rest = line.substr(field.size() + 1);
      std::vector<std::string> parts = absl::StrSplit(rest, ' ', absl::SkipWhitespace());
      int64_t v = -1;
      if (!parts.empty() && absl::SimpleAtoi(parts[0], &v)) return v;
    }
  }
  return -1;
}

// Percentile (0..100) of unsorted samples; sorts them.
template <typename T>
double Percentile(std::vector<T>& v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t idx = static_cast<size_t>(p / 100.0 * static_cast<double>(v.size() - 1) + 0.5);
  return static_cast<double>(v[std::min(idx, v.size() - 1)]);
}

double Round(double v, int digits = 3) {
  double f = std::pow(10.0, digits);
  return std::round(v * f) / f;
}

// Runs fn(i) for i in [0, n) on `threads` threads (work stealing by an atomic index).
void ParallelFor(int threads, int n, const std::function<void(int)>& fn) {
  std::atomic<int> next{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < std::max(1, threads); ++t) {
    pool.emplace_back([&] {
      for (int i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i);
    });
  }
  for (auto& th : pool) th.join();
}

bool WaitFor(const std::function<bool()>& pred, absl::Duration timeout,
             absl::Duration poll = absl::Milliseconds(1)) {
  absl::Time deadline = absl::Now() + timeout;
  while (!pred()) {
    if (absl::Now() > deadline) return pred();
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

Instance MakeInstance(int i, const std::string& type = "world") {
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

// ---------------------------------------------------------------------------------------------
// The raw baseline: bare generated stubs on their own channel, no library code.

struct Bare {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb::KV::Stub> kv;
  std::unique_ptr<pb::Lease::Stub> lease;
  std::unique_ptr<pb::Watch::Stub> watch;

  explicit Bare(const std::string& endpoint) {
    std::string target = endpoint;
    if (absl::StartsWith(target, "http://")) target = target.substr(7);
    grpc::ChannelArguments args;
    // Own TCP connection: do not share a subchannel with the library's channel.
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetMaxReceiveMessageSize(64 * 1024 * 1024);
    channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
    kv = pb::KV::NewStub(channel);
    lease = pb::Lease::NewStub(channel);
    watch = pb::Watch::NewStub(channel);
  }

  static void Deadline(grpc::ClientContext* ctx, int seconds = 10) {
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
  }

  grpc::Status Put(const std::string& key, const std::string& value, int64_t lease_id = 0,
                   int64_t* revision = nullptr) {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    pb::PutRequest req;
    req.set_key(key);
    req.set_value(value);
    req.set_lease(lease_id);
    pb::PutResponse resp;
    grpc::Status s = kv->Put(&ctx, req, &resp);
    if (revision != nullptr) *revision = resp.header().revision();
    return s;
  }

  grpc::Status Delete(const std::string& key) {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    pb::DeleteRangeRequest req;
    req.set_key(key);
    pb::DeleteRangeResponse resp;
    return kv->DeleteRange(&ctx, req, &resp);
  }

  absl::StatusOr<int64_t> Grant(int64_t ttl) {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    pb::LeaseGrantRequest req;
    req.set_ttl(ttl);
    pb::LeaseGrantResponse resp;
    grpc::Status s = lease->LeaseGrant(&ctx, req, &resp);
    if (!s.ok()) return absl::UnavailableError(s.error_message());
    return resp.id();
  }

  void Revoke(int64_t id) {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    pb::LeaseRevokeRequest req;
    req.set_id(id);
    pb::LeaseRevokeResponse resp;
    (void)lease->LeaseRevoke(&ctx, req, &resp);
  }

  // Current store revision.
  absl::StatusOr<int64_t> Revision() {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    pb::RangeRequest req;
    req.set_key("/");
    req.set_count_only(true);
    pb::RangeResponse resp;
    grpc::Status s = kv->Range(&ctx, req, &resp);
    if (!s.ok()) return absl::UnavailableError(s.error_message());
    return resp.header().revision();
  }

  absl::Status Compact(int64_t revision) {
    grpc::ClientContext ctx;
    Deadline(&ctx, 60);
    pb::CompactionRequest req;
    req.set_revision(revision);
    req.set_physical(true);
    pb::CompactionResponse resp;
    grpc::Status s = kv->Compact(&ctx, req, &resp);
    if (!s.ok()) return absl::UnavailableError(s.error_message());
    return absl::OkStatus();
  }

  // Paged Range of [key, end) as the watcher's sync does it; returns the number of keys.
  absl::StatusOr<int64_t> RangeAll(const std::string& prefix, int64_t page) {
    std::string key = prefix;
    std::string end = PrefixEnd(prefix);
    int64_t revision = 0;
    int64_t count = 0;
    for (;;) {
      grpc::ClientContext ctx;
      Deadline(&ctx, 30);
      pb::RangeRequest req;
      req.set_key(key);
      req.set_range_end(end);
      req.set_limit(page);
      req.set_revision(revision);
      pb::RangeResponse resp;
      grpc::Status s = kv->Range(&ctx, req, &resp);
      if (!s.ok()) return absl::UnavailableError(s.error_message());
      if (revision == 0) revision = resp.header().revision();
      count += resp.kvs_size();
      if (!resp.more() || resp.kvs_size() == 0) break;
      key = resp.kvs(resp.kvs_size() - 1).key();
      key.push_back('\0');
    }
    return count;
  }
};

// A bare Watch stream (generated sync stub, reader thread) on a prefix.
class RawWatch {
 public:
  using OnEvent = std::function<void(const mvccpb::Event& ev, int64_t recv_ns)>;

  RawWatch(Bare* bare, std::string prefix, int64_t start_revision, OnEvent on_event)
      : bare_(bare),
        prefix_(std::move(prefix)),
        start_revision_(start_revision),
        on_event_(std::move(on_event)) {}
  ~RawWatch() { Stop(); }

  absl::Status Start(absl::Duration timeout = absl::Seconds(10)) {
    stream_ = bare_->watch->Watch(&ctx_);
    pb::WatchRequest req;
    auto* create = req.mutable_create_request();
    create->set_key(prefix_);
    create->set_range_end(PrefixEnd(prefix_));
    create->set_start_revision(start_revision_);
    if (!stream_->Write(req)) return absl::UnavailableError("raw watch: write failed");
    thread_ = std::thread([this] {
      pb::WatchResponse resp;
      while (stream_->Read(&resp)) {
        const int64_t now = NowNs();
        if (resp.created()) created_.store(true);
        for (const auto& ev : resp.events()) on_event_(ev, now);
        events_.fetch_add(static_cast<uint64_t>(resp.events_size()));
      }
    });
    if (!WaitFor([this] { return created_.load(); }, timeout)) {
      return absl::DeadlineExceededError("raw watch: not created");
    }
    return absl::OkStatus();
  }

  void Stop() {
    if (stopped_) return;
    stopped_ = true;
    ctx_.TryCancel();
    if (thread_.joinable()) thread_.join();
    if (stream_ != nullptr) (void)stream_->Finish();
  }

  uint64_t events() const { return events_.load(); }

 private:
  Bare* bare_;
  std::string prefix_;
  int64_t start_revision_;
  OnEvent on_event_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<pb::WatchRequest, pb::WatchResponse>> stream_;
  std::thread thread_;
  std::atomic<bool> created_{false};
  std::atomic<uint64_t> events_{0};
  bool stopped_ = false;
};

// ---------------------------------------------------------------------------------------------
// Scenario context

struct Context {
  const Flags* flags = nullptr;
  std::vector<std::string> endpoints;
  std::shared_ptr<spdlog::logger> logger;

  discovery::EtcdOptions EtcdOpts() const {
    discovery::EtcdOptions o;
    o.endpoints = endpoints;
    o.logger = logger;
    o.call_timeout = absl::Seconds(10);
    return o;
  }
  std::shared_ptr<discovery::Connection> Connect() const {
    auto conn = discovery::Connection::Create(EtcdOpts());
    if (!conn.ok()) {
      std::cerr << "Connection::Create: " << conn.status() << "\n";
      std::exit(2);
    }
    return *conn;
  }
  std::unique_ptr<discovery::Watcher> NewWatcher(std::shared_ptr<discovery::Connection> conn,
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
};

// Writes n instances MakeInstance(0..n) under prefix with `threads` bare writers.
int BulkPut(Bare& bare, const std::string& prefix, int n, int threads) {
  std::atomic<int> errors{0};
  ParallelFor(threads, n, [&](int i) {
    Instance in = MakeInstance(i);
    if (!bare.Put(KeyOf(prefix, in), discovery::EncodeInstance(in)).ok()) errors.fetch_add(1);
  });
  return errors.load();
}

// ---------------------------------------------------------------------------------------------
// register

Json RunRegister(const Context& cx) {
  const Flags& f = *cx.flags;
  const int n = f.register_n;
  const int k = f.register_threads;
  Json out;
  out["scenario"] = "register";
  out["n"] = n;
  out["threads"] = k;

  // Baseline first (LeaseGrant + Put with bare stubs), then its leases revoked, so the library
  // run does not find fewer keys/leases in etcd than the baseline did.
  Bare bare(cx.endpoints[0]);
  {
    const std::string prefix = UniquePrefix("register", "raw");
    std::vector<std::string> values(n);
    std::vector<std::string> keys(n);
    for (int i = 0; i < n; ++i) {
      Instance in = MakeInstance(i);
      keys[i] = KeyOf(prefix, in);
      values[i] = discovery::EncodeInstance(in);
    }
    std::vector<int64_t> leases(n, 0);
    std::vector<int64_t> lat(n, 0);
    std::atomic<int> errors{0};
    const int64_t t0 = NowNs();
    ParallelFor(k, n, [&](int i) {
      const int64_t s = NowNs();
      auto lease = bare.Grant(10);
      if (!lease.ok() || !bare.Put(keys[i], values[i], *lease).ok()) {
        errors.fetch_add(1);
      } else {
        leases[i] = *lease;
      }
      lat[i] = NowNs() - s;
    });
    const double secs = Seconds(NowNs() - t0);
    out["baseline_per_s"] = Round((n - errors.load()) / secs, 1);
    out["baseline_p50_ms"] = Round(Percentile(lat, 50) / 1e6);
    out["baseline_p99_ms"] = Round(Percentile(lat, 99) / 1e6);
    out["baseline_errors"] = errors.load();
    ParallelFor(k, n, [&](int i) {
      if (leases[i] != 0) bare.Revoke(leases[i]);
    });

    // Second baseline: exactly the library's etcd calls (LeaseGrant + the Txn put guarded by
    // create_revision == 0, with a Range on failure), still without library logic.
    const std::string txn_prefix = UniquePrefix("register", "rawtxn");
    std::fill(leases.begin(), leases.end(), 0);
    std::atomic<int> txn_errors{0};
    const int64_t t1 = NowNs();
    ParallelFor(k, n, [&](int i) {
      const std::string key = txn_prefix + keys[i].substr(prefix.size());
      auto lease = bare.Grant(10);
      if (!lease.ok()) {
        txn_errors.fetch_add(1);
        return;
      }
      pb::TxnRequest txn;
      auto* cmp = txn.add_compare();
      cmp->set_key(key);
      cmp->set_target(pb::Compare::CREATE);
      cmp->set_result(pb::Compare::EQUAL);
      cmp->set_create_revision(0);
      auto* put = txn.add_success()->mutable_request_put();
      put->set_key(key);
      put->set_value(values[i]);
      put->set_lease(*lease);
      txn.add_failure()->mutable_request_range()->set_key(key);
      grpc::ClientContext ctx;
      Bare::Deadline(&ctx);
      pb::TxnResponse resp;
      if (!bare.kv->Txn(&ctx, txn, &resp).ok() || !resp.succeeded()) txn_errors.fetch_add(1);
      leases[i] = *lease;
    });
    out["baseline_txn_per_s"] = Round((n - txn_errors.load()) / Seconds(NowNs() - t1), 1);
    ParallelFor(k, n, [&](int i) {
      if (leases[i] != 0) bare.Revoke(leases[i]);
    });
  }

  {
    auto conn = cx.Connect();
    auto registrar =
        discovery::Registrar::Create({.connection = conn, .on_event = {}, .logger = cx.logger});
    if (!registrar.ok()) {
      out["error"] = registrar.status().ToString();
      return out;
    }
    const std::string prefix = UniquePrefix("register", "lib");
    std::vector<Instance> instances;
    instances.reserve(n);
    for (int i = 0; i < n; ++i) {
      instances.push_back(MakeInstance(i));
      instances.back().instance_id.clear();  // the registrar generates a ULID
    }
    std::mutex mu;
    std::vector<discovery::Registration> regs;
    regs.reserve(n);
    std::vector<int64_t> lat(n, 0);
    std::atomic<int> errors{0};
    const int64_t t0 = NowNs();
    ParallelFor(k, n, [&](int i) {
      const int64_t s = NowNs();
      auto reg = (*registrar)->Register(std::move(instances[i]), {.prefix = prefix});
      lat[i] = NowNs() - s;
      if (!reg.ok()) {
        errors.fetch_add(1);
        return;
      }
      std::lock_guard lock(mu);
      regs.push_back(*std::move(reg));
    });
    const double secs = Seconds(NowNs() - t0);
    const double rate = (n - errors.load()) / secs;
    out["per_s"] = Round(rate, 1);
    out["p50_ms"] = Round(Percentile(lat, 50) / 1e6);
    out["p99_ms"] = Round(Percentile(lat, 99) / 1e6);
    out["errors"] = errors.load();
    const double ratio = rate / out["baseline_per_s"].get<double>();
    out["ratio"] = Round(ratio);
    out["ratio_vs_txn_baseline"] = Round(rate / out["baseline_txn_per_s"].get<double>());
    out["target"] = Target(">= 0.8x baseline", ratio >= 0.8 && errors.load() == 0);
    ParallelFor(k, static_cast<int>(regs.size()), [&](int i) { (void)regs[i].Close(); });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// keepalive

Json RunKeepalive(const Context& cx) {
  const Flags& f = *cx.flags;
  const int n = f.keepalive_n;
  const double d = f.keepalive_seconds;
  const int ttl = f.keepalive_ttl;
  Json out;
  out["scenario"] = "keepalive";
  out["n"] = n;
  out["seconds"] = d;
  out["ttl_s"] = ttl;

  // Library: one Registrar holding n leases.
  {
    const int64_t threads_before = ProcStatus("Threads");
    auto conn = cx.Connect();
    std::atomic<int> lost{0}, at_risk{0};
    auto registrar = discovery::Registrar::Create(
        {.connection = conn,
         .on_event =
             [&](const discovery::RegistrationEvent& ev) {
               if (ev.type == discovery::RegistrationEventType::kLeaseLost) lost.fetch_add(1);
               if (ev.type == discovery::RegistrationEventType::kLeaseAtRisk) at_risk.fetch_add(1);
             },
         .logger = cx.logger});
    if (!registrar.ok()) {
      out["error"] = registrar.status().ToString();
      return out;
    }
    const std::string prefix = UniquePrefix("keepalive", "lib");
    std::mutex mu;
    std::vector<discovery::Registration> regs;
    std::atomic<int> errors{0};
    ParallelFor(f.keepalive_threads, n, [&](int i) {
      auto reg =
          (*registrar)->Register(MakeInstance(i), {.ttl = absl::Seconds(ttl), .prefix = prefix});
      if (!reg.ok()) {
        errors.fetch_add(1);
        return;
      }
      std::lock_guard lock(mu);
      regs.push_back(*std::move(reg));
    });
    absl::SleepFor(absl::Seconds(1));  // let registration-time work settle
    const int64_t threads = ProcStatus("Threads");
    const double cpu0 = CpuSeconds();
    const int64_t w0 = NowNs();
    int64_t max_threads = threads;
    int min_streams = conn->keepalive_streams(), max_streams = min_streams;
    const int64_t end = w0 + static_cast<int64_t>(d * 1e9);
    while (NowNs() < end) {
      absl::SleepFor(absl::Milliseconds(std::min<int64_t>(500, (end - NowNs()) / 1000000 + 1)));
      max_threads = std::max(max_threads, ProcStatus("Threads"));
      min_streams = std::min(min_streams, conn->keepalive_streams());
      max_streams = std::max(max_streams, conn->keepalive_streams());
    }
    const double cpu = CpuSeconds() - cpu0;
    const double wall = Seconds(NowNs() - w0);
    out["registered"] = static_cast<int>(regs.size());
    out["register_errors"] = errors.load();
    out["cpu_s"] = Round(cpu);
    out["cpu_pct_of_core"] = Round(100.0 * cpu / wall, 2);
    out["threads_total"] = max_threads;
    out["threads_before_connection"] = threads_before;
    out["threads_added"] = max_threads - threads_before;
    out["keepalive_streams"] = max_streams;
    out["keepalive_streams_min"] = min_streams;
    out["leases_lost"] = lost.load();
    out["lease_at_risk"] = at_risk.load();
    out["keepalives_per_s"] = Round(n / (ttl / 3.0), 1);
    ParallelFor(f.keepalive_threads, static_cast<int>(regs.size()),
                [&](int i) { (void)regs[i].Close(); });
  }

  // Baseline: the same leases granted with bare stubs and kept alive on one bare
  // LeaseKeepAlive stream by a 100 ms timer (the library's tick), each lease every ttl/3.
  {
    Bare bare(cx.endpoints[0]);
    std::vector<int64_t> leases(n, 0);
    ParallelFor(f.keepalive_threads, n, [&](int i) {
      auto lease = bare.Grant(ttl);
      if (lease.ok()) leases[i] = *lease;
    });
    std::erase(leases, 0);
    absl::SleepFor(absl::Seconds(1));
    grpc::ClientContext ctx;
    auto stream = bare.lease->LeaseKeepAlive(&ctx);
    std::atomic<int> lost{0};
    std::atomic<int64_t> answers{0};
    std::thread reader([&] {
      pb::LeaseKeepAliveResponse resp;
      while (stream->Read(&resp)) {
        answers.fetch_add(1, std::memory_order_relaxed);
        if (resp.ttl() <= 0) lost.fetch_add(1);
      }
    });
    const int64_t interval = static_cast<int64_t>(ttl * 1e9 / 3);
    const double cpu0 = CpuSeconds();
    const int64_t w0 = NowNs();
    std::vector<int64_t> next(leases.size());
    for (size_t i = 0; i < leases.size(); ++i) {
      next[i] = w0 + interval * static_cast<int64_t>(i) / static_cast<int64_t>(leases.size());
    }
    const int64_t end = w0 + static_cast<int64_t>(d * 1e9);
    pb::LeaseKeepAliveRequest req;
    while (NowNs() < end) {
      const int64_t now = NowNs();
      for (size_t i = 0; i < leases.size(); ++i) {
        if (next[i] <= now) {
          req.set_id(leases[i]);
          stream->Write(req);
          next[i] = now + interval;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    const double cpu = CpuSeconds() - cpu0;
    const double wall = Seconds(NowNs() - w0);
    stream->WritesDone();
    ctx.TryCancel();
    reader.join();
    (void)stream->Finish();
    out["baseline_cpu_s"] = Round(cpu);
    out["baseline_cpu_pct_of_core"] = Round(100.0 * cpu / wall, 2);
    out["baseline_leases_lost"] = lost.load();
    out["baseline_answers"] = answers.load();
    ParallelFor(f.keepalive_threads, static_cast<int>(leases.size()),
                [&](int i) { bare.Revoke(leases[i]); });
  }
  const double cpu = out["cpu_s"].get<double>();
  const double base = out["baseline_cpu_s"].get<double>();
  out["ratio"] = base > 0 ? Round(cpu / base, 2) : 0.0;
  const bool met = out["cpu_pct_of_core"].get<double>() <= 2.0 &&
                   out["threads_added"].get<int64_t>() <= 4 && out["leases_lost"].get<int>() == 0 &&
                   out["keepalive_streams"].get<int>() == 1;
  out["target"] = Target("<= 2% of one core, <= 4 threads, 0 lost, 1 stream", met);
  return out;
}

// ---------------------------------------------------------------------------------------------
// watch-latency and fanout: a paced writer; put-acknowledged -> callback latency, through the
// Watcher (to every subscriber) and through a bare Watch stream (to as many plain callbacks).

Json RunLatency(const Context& cx, const std::string& name, int rate, double seconds,
                int subscribers) {
  const int total = std::max(1, static_cast<int>(rate * seconds));
  Json out;
  out["scenario"] = name;
  out["rate_per_s"] = rate;
  out["seconds"] = seconds;
  out["subscribers"] = subscribers;

  const std::string prefix = UniquePrefix(name, "lat");
  Bare writer(cx.endpoints[0]);
  Bare raw_bare(cx.endpoints[0]);
  auto conn = cx.Connect();
  auto watcher = cx.NewWatcher(conn, prefix);

  std::vector<std::atomic<int64_t>> ack(total), lib_first(total), lib_last(total), raw_first(total),
      raw_last(total);
  for (int i = 0; i < total; ++i) {
    ack[i] = lib_first[i] = lib_last[i] = raw_first[i] = raw_last[i] = 0;
  }
  auto record = [](std::atomic<int64_t>& first, std::atomic<int64_t>& last, int64_t now) {
    int64_t zero = 0;
    first.compare_exchange_strong(zero, now);
    last.store(now);
  };

  std::vector<discovery::Subscription> subs;
  for (int s = 0; s < subscribers; ++s) {
    subs.push_back(watcher->Subscribe({}, [&](const discovery::ChangeEvent& ev) {
      const int64_t now = NowNs();
      auto it = ev.instance->meta.find("seq");
      int64_t seq = -1;
      if (it == ev.instance->meta.end() || !absl::SimpleAtoi(it->second, &seq)) return;
      if (seq >= 0 && seq < total) record(lib_first[seq], lib_last[seq], now);
    }));
  }

  std::vector<std::function<void(int64_t, int64_t)>> raw_callbacks(
      subscribers, [&](int64_t seq, int64_t now) { record(raw_first[seq], raw_last[seq], now); });
  auto rev = writer.Revision();
  RawWatch raw(&raw_bare, prefix, rev.ok() ? *rev + 1 : 0,
               [&](const mvccpb::Event& ev, int64_t /*recv*/) {
                 // The bare stream's "logic": find the sequence number in the value.
                 const std::string& v = ev.kv().value();
                 size_t at = v.find("\"seq\":\"");
                 int64_t seq = -1;
                 if (at == std::string::npos) return;
                 at += 7;
                 size_t endq = v.find('"', at);
                 if (!absl::SimpleAtoi(absl::string_view(v).substr(at, endq - at), &seq)) return;
                 if (seq < 0 || seq >= total) return;
                 for (auto& cb : raw_callbacks) cb(seq, NowNs());
               });
  if (auto s = raw.Start(); !s.ok()) {
    out["error"] = s.ToString();
    return out;
  }

  // Writer: `rate` puts per second over 1,000 keys (first adds, then updates).
  const int keys = std::min(total, 1000);
  std::vector<Instance> instances;
  for (int i = 0; i < keys; ++i) instances.push_back(MakeInstance(i));
  int errors = 0;
  const int64_t t0 = NowNs();
  const int64_t period = static_cast<int64_t>(1e9 / rate);
  for (int seq = 0; seq < total; ++seq) {
    const int64_t due = t0 + period * seq;
    const int64_t now = NowNs();
    if (due > now) std::this_thread::sleep_for(std::chrono::nanoseconds(due - now));
    Instance& in = instances[seq % keys];
    in.meta["seq"] = absl::StrCat(seq);
    in.meta["ts"] = absl::StrCat(NowNs());
    if (!writer.Put(KeyOf(prefix, in), discovery::EncodeInstance(in)).ok()) {
      ++errors;
      continue;
    }
    ack[seq].store(NowNs());
  }
  const double write_secs = Seconds(NowNs() - t0);
  auto all_seen = [&](std::vector<std::atomic<int64_t>>& last) {
    for (int i = 0; i < total; ++i) {
      if (ack[i].load() != 0 && last[i].load() == 0) return false;
    }
    return true;
  };
  WaitFor([&] { return all_seen(lib_last) && all_seen(raw_last); }, absl::Seconds(10),
          absl::Milliseconds(10));
  raw.Stop();
  subs.clear();

  struct Lat {
    std::vector<int64_t> v;
    int missing = 0;
    int before_ack = 0;
  };
  auto collect = [&](std::vector<std::atomic<int64_t>>& recv) {
    Lat l;
    for (int i = 0; i < total; ++i) {
      if (ack[i].load() == 0) continue;
      if (recv[i].load() == 0) {
        ++l.missing;
        continue;
      }
      int64_t d = recv[i].load() - ack[i].load();
      if (d < 0) {
        ++l.before_ack;
        d = 0;  // the event overtook the Put's answer
      }
      l.v.push_back(d);
    }
    return l;
  };
  auto put = [&](const std::string& tag, Lat l) {
    out[tag + "_p50_ms"] = Round(Percentile(l.v, 50) / 1e6);
    out[tag + "_p99_ms"] = Round(Percentile(l.v, 99) / 1e6);
    out[tag + "_max_ms"] = Round(l.v.empty() ? 0 : static_cast<double>(l.v.back()) / 1e6);
    out[tag + "_missing"] = l.missing;
    out[tag + "_before_ack"] = l.before_ack;
  };
  out["puts"] = total - errors;
  out["put_errors"] = errors;
  out["achieved_rate_per_s"] = Round((total - errors) / write_secs, 1);
  Lat lib_last_l = collect(lib_last);
  Lat raw_last_l = collect(raw_last);
  put("lib", lib_last_l);
  put("baseline", raw_last_l);
  if (subscribers > 1) {
    put("lib_first", collect(lib_first));
    put("baseline_first", collect(raw_first));
  }
  const double lib99 = out["lib_p99_ms"].get<double>();
  const double raw99 = out["baseline_p99_ms"].get<double>();
  out["delta_p99_ms"] = Round(lib99 - raw99);
  const bool complete = lib_last_l.missing == 0 && errors == 0;
  if (subscribers > 1) {
    out["target"] = Target("report only (p99 to the last of the subscribers)", complete);
  } else {
    out["target"] = Target("p99 <= baseline p99 + 0.5 ms", complete && lib99 <= raw99 + 0.5);
  }
  auto st = watcher->stats();
  out["watcher_events"] = st.events;
  out["watcher_invalid"] = st.invalid_values;
  return out;
}

// ---------------------------------------------------------------------------------------------
// watch-throughput

Json RunThroughput(const Context& cx) {
  const Flags& f = *cx.flags;
  const int n = f.throughput_n;
  Json out;
  out["scenario"] = "watch-throughput";
  out["n"] = n;
  out["writers"] = f.throughput_writers;

  const std::string prefix = UniquePrefix("throughput", "tp");
  Bare writer(cx.endpoints[0]);
  Bare raw_bare(cx.endpoints[0]);
  std::vector<std::string> keys(n), values(n);
  for (int i = 0; i < n; ++i) {
    Instance in = MakeInstance(i);
    keys[i] = KeyOf(prefix, in);
    values[i] = discovery::EncodeInstance(in);
  }
  auto conn = cx.Connect();
  auto watcher = cx.NewWatcher(conn, prefix);
  auto rev = writer.Revision();
  if (!rev.ok()) {
    out["error"] = rev.status().ToString();
    return out;
  }

  // 1. Live: both watchers follow the same puts; time from the first put until the
  // watcher's snapshot holds all n / the bare stream has counted n events.
  {
    std::atomic<int64_t> raw_done{0};
    std::atomic<uint64_t> raw_count{0};
    RawWatch raw(&raw_bare, prefix, *rev + 1, [&](const mvccpb::Event&, int64_t recv) {
      if (raw_count.fetch_add(1) + 1 == static_cast<uint64_t>(n)) raw_done.store(recv);
    });
    if (auto s = raw.Start(); !s.ok()) {
      out["error"] = s.ToString();
      return out;
    }
    std::atomic<int> errors{0};
    std::atomic<int64_t> puts_done{0};
    const int64_t t0 = NowNs();
    std::thread writers([&] {
      ParallelFor(f.throughput_writers, n, [&](int i) {
        if (!writer.Put(keys[i], values[i]).ok()) errors.fetch_add(1);
      });
      puts_done.store(NowNs());
    });
    int64_t lib_done = 0;
    WaitFor(
        [&] {
          if (lib_done == 0 && watcher->snapshot()->size() == static_cast<size_t>(n)) {
            lib_done = NowNs();
          }
          return lib_done != 0 && raw_done.load() != 0;
        },
        absl::Seconds(300));
    writers.join();
    raw.Stop();
    const double put_secs = Seconds(puts_done.load() - t0);
    out["put_errors"] = errors.load();
    out["puts_per_s"] = Round(n / put_secs, 1);
    if (lib_done == 0 || raw_done.load() == 0) {
      out["error"] = absl::StrFormat("timeout: watcher has %d, raw stream %d of %d",
                                     watcher->snapshot()->size(), raw_count.load(), n);
      out["target"] = Target(">= 0.9x baseline events/s", false);
      return out;
    }
    const double lib_rate = n / Seconds(lib_done - t0);
    const double raw_rate = n / Seconds(raw_done.load() - t0);
    out["events_per_s"] = Round(lib_rate, 1);
    out["baseline_events_per_s"] = Round(raw_rate, 1);
    out["ratio"] = Round(lib_rate / raw_rate);
    out["lag_after_last_put_ms"] = Round(std::max<int64_t>(0, lib_done - puts_done.load()) / 1e6);
    out["baseline_lag_after_last_put_ms"] =
        Round(std::max<int64_t>(0, raw_done.load() - puts_done.load()) / 1e6);
    out["target"] = Target(">= 0.9x baseline events/s", lib_rate >= 0.9 * raw_rate);
  }

  // 2. Catch-up (consumer speed alone): n updates are written while the watcher's stream is
  // paused; then the time until it has applied them, vs a bare stream reading the same
  // history from the same revision.
  {
    auto& hub = conn->client()->watch_hub();
    hub.SetPausedForTest(true);
    WaitFor([&] { return conn->watch_streams() == 0; }, absl::Seconds(5));
    auto before = writer.Revision();
    const uint64_t events0 = watcher->stats().events;
    ParallelFor(f.throughput_writers, n, [&](int i) {
      std::string v = values[i];
      v.insert(v.size() - 1, ",\"bench\":1");  // an unknown field: a real value change
      (void)writer.Put(keys[i], v);
    });
    const int64_t t0 = NowNs();
    hub.SetPausedForTest(false);
    const bool lib_ok =
        WaitFor([&] { return watcher->stats().events >= events0 + static_cast<uint64_t>(n); },
                absl::Seconds(300));
    const double lib_secs = Seconds(NowNs() - t0);
    std::atomic<uint64_t> count{0};
    std::atomic<int64_t> done{0};
    const int64_t r0 = NowNs();
    RawWatch raw(&raw_bare, prefix, before.ok() ? *before + 1 : 0,
                 [&](const mvccpb::Event&, int64_t recv) {
                   if (count.fetch_add(1) + 1 == static_cast<uint64_t>(n)) done.store(recv);
                 });
    const bool raw_ok =
        raw.Start().ok() && WaitFor([&] { return done.load() != 0; }, absl::Seconds(300));
    raw.Stop();
    if (lib_ok && raw_ok) {
      out["catchup_events_per_s"] = Round(n / lib_secs, 1);
      out["catchup_baseline_events_per_s"] = Round(n / Seconds(done.load() - r0), 1);
      out["catchup_ratio"] = Round((n / lib_secs) / (n / Seconds(done.load() - r0)));
    } else {
      out["catchup_error"] = "timeout";
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// resync

Json RunResync(const Context& cx) {
  const Flags& f = *cx.flags;
  const int n = f.resync_n;
  Json out;
  out["scenario"] = "resync";
  out["n"] = n;
  const std::string prefix = UniquePrefix("resync", "rs");
  Bare bare(cx.endpoints[0]);
  if (int errors = BulkPut(bare, prefix, n, 16); errors != 0) {
    out["error"] = absl::StrCat(errors, " puts failed");
    return out;
  }

  auto conn = cx.Connect();
  malloc_trim(0);
  const int64_t rss0 = ProcStatus("VmRSS");
  const int64_t s0 = NowNs();
  auto watcher = cx.NewWatcher(conn, prefix);
  const double sync_secs = Seconds(NowNs() - s0);
  const int64_t rss1 = ProcStatus("VmRSS");
  out["initial_sync_s"] = Round(sync_secs);
  out["rss_delta_kib"] = rss1 - rss0;
  const double per_instance = (rss1 - rss0) * 1024.0 / n;
  out["rss_per_instance_bytes"] = Round(per_instance, 0);

  // Pause the watch, change 1% (update, delete, add), compact, resume.
  auto& hub = conn->client()->watch_hub();
  hub.SetPausedForTest(true);
  WaitFor([&] { return conn->watch_streams() == 0; }, absl::Seconds(5));
  const int changes = std::max(1, n / 100);
  for (int i = 0; i < changes; ++i) {
    Instance up = MakeInstance(i);
    up.status = discovery::InstanceStatus::kError;
    (void)bare.Put(KeyOf(prefix, up), discovery::EncodeInstance(up));
    (void)bare.Delete(KeyOf(prefix, MakeInstance(n - 1 - i)));
    Instance add = MakeInstance(n + i);
    (void)bare.Put(KeyOf(prefix, add), discovery::EncodeInstance(add));
  }
  auto rev = bare.Revision();
  if (!rev.ok() || !bare.Compact(*rev).ok()) {
    out["error"] = "compaction failed";
    return out;
  }
  const uint64_t resyncs0 = watcher->stats().resyncs;
  const std::string added_id = MakeInstance(n + changes - 1).instance_id;
  const int64_t t0 = NowNs();
  hub.SetPausedForTest(false);
  const bool ok = WaitFor(
      [&] {
        auto st = watcher->stats();
        return st.resyncs > resyncs0 && st.instances == static_cast<size_t>(n) &&
               st.revision >= *rev && watcher->snapshot()->Find("world", added_id) != nullptr;
      },
      absl::Seconds(120), absl::Milliseconds(2));
  const double secs = Seconds(NowNs() - t0);

  // Baseline: the bare paged Range of the same prefix (page size as the watcher's).
  const int64_t r0 = NowNs();
  auto count = bare.RangeAll(prefix, 1000);
  const double raw_secs = Seconds(NowNs() - r0);

  out["converged"] = ok;
  out["resync_s"] = Round(secs);
  out["resyncs"] = watcher->stats().resyncs - resyncs0;
  out["baseline_range_s"] = Round(raw_secs);
  out["baseline_keys"] = count.ok() ? *count : -1;
  out["ratio"] = Round(secs / raw_secs, 2);
  out["target"] = Target("converge <= 2 s, <= 2 KiB RSS per instance",
                         ok && secs <= 2.0 && per_instance <= 2048);
  return out;
}

// ---------------------------------------------------------------------------------------------
// pick

Json RunPick(const Context& cx) {
  const Flags& f = *cx.flags;
  const int n = f.pick_n;
  Json out;
  out["scenario"] = "pick";
  out["n"] = n;
  out["changes_per_s"] = f.pick_rate;
  out["seconds"] = f.pick_seconds;
  const std::string prefix = UniquePrefix("pick", "pk");
  Bare bare(cx.endpoints[0]);
  BulkPut(bare, prefix, n, 16);
  auto conn = cx.Connect();
  auto watcher = cx.NewWatcher(conn, prefix);

  struct Kind {
    const char* name;
    discovery::PickerKind kind;
  };
  const std::vector<Kind> kinds = {
      {"round_robin", discovery::PickerKind::kRoundRobin},
      {"weighted_round_robin", discovery::PickerKind::kWeightedRoundRobin},
      {"random", discovery::PickerKind::kRandom},
      {"least_load", discovery::PickerKind::kLeastLoad},
      {"consistent_hash", discovery::PickerKind::kConsistentHash},
  };
  std::vector<std::shared_ptr<discovery::Picker>> pickers;
  for (const Kind& k : kinds) pickers.push_back(watcher->NewPicker("world", "", {.kind = k.kind}));
  const std::vector<InstancePtr> plain = watcher->snapshot()->OfType("world");

  // Changes: `pick_rate` per second; mostly load updates, every 10th flips status
  // ready <-> error (so the candidate set changes).
  std::atomic<bool> stop{false};
  std::atomic<int> changes{0};
  std::thread changer([&] {
    const int64_t period = static_cast<int64_t>(1e9 / f.pick_rate);
    int64_t next = NowNs();
    for (int c = 0; !stop.load(); ++c) {
      next += period;
      std::this_thread::sleep_for(std::chrono::nanoseconds(std::max<int64_t>(0, next - NowNs())));
      Instance in = MakeInstance((c * 7) % n);
      in.performance["load"] = (c % 97) / 97.0;
      if (c % 10 == 0 && (c / 10) % 2 == 0) in.status = discovery::InstanceStatus::kError;
      if (bare.Put(KeyOf(prefix, in), discovery::EncodeInstance(in)).ok()) changes.fetch_add(1);
    }
  });

  // Clock overhead: back-to-back steady_clock reads.
  std::vector<uint32_t> overhead;
  for (int i = 0; i < 100000; ++i) {
    const int64_t a = NowNs();
    const int64_t b = NowNs();
    overhead.push_back(static_cast<uint32_t>(b - a));
  }
  const double clock_ns = Percentile(overhead, 50);

  std::vector<std::vector<uint32_t>> samples(kinds.size() + 1);
  std::vector<std::string> keys;
  for (int i = 0; i < 4096; ++i) keys.push_back(absl::StrCat("player-", i * 7919));
  std::atomic<uint64_t> counter{0};
  const size_t kChunk = 20000;
  const size_t kMaxSamples = 4000000;
  const int64_t end = NowNs() + static_cast<int64_t>(f.pick_seconds * 1e9);
  size_t nulls = 0;
  while (NowNs() < end) {
    for (size_t k = 0; k <= kinds.size(); ++k) {
      auto& s = samples[k];
      if (s.size() >= kMaxSamples) continue;
      for (size_t i = 0; i < kChunk; ++i) {
        const std::string& key = keys[i & 4095];
        int64_t a, b;
        InstancePtr p;
        if (k < kinds.size()) {
          a = NowNs();
          p = pickers[k]->Pick(key);
          b = NowNs();
        } else {
          // Baseline: a plain atomic counter modulo a vector.
          a = NowNs();
          p = plain[counter.fetch_add(1, std::memory_order_relaxed) % plain.size()];
          b = NowNs();
        }
        asm volatile("" : : "r"(p.get()) : "memory");
        nulls += p == nullptr;
        s.push_back(static_cast<uint32_t>(b - a));
      }
    }
  }
  stop.store(true);
  changer.join();

  out["changes_applied"] = changes.load();
  out["clock_overhead_ns"] = clock_ns;
  out["null_picks"] = nulls;
  auto corrected = [&](double v) { return Round(std::max(0.0, v - clock_ns), 1); };
  Json per_kind = Json::object();
  double worst_p50 = 0;
  for (size_t k = 0; k < kinds.size(); ++k) {
    Json j;
    j["p50_ns"] = corrected(Percentile(samples[k], 50));
    j["p99_ns"] = corrected(Percentile(samples[k], 99));
    j["samples"] = samples[k].size();
    worst_p50 = std::max(worst_p50, j["p50_ns"].get<double>());
    per_kind[kinds[k].name] = j;
  }
  out["pickers"] = per_kind;
  out["baseline_p50_ns"] = corrected(Percentile(samples.back(), 50));
  out["baseline_p99_ns"] = corrected(Percentile(samples.back(), 99));
  out["worst_p50_ns"] = worst_p50;
  out["target"] = Target("p50 <= 100 ns (every kind)", worst_p50 <= 100);
  return out;
}

// ---------------------------------------------------------------------------------------------
// gateway (discoveryd): discover requests/s over keep-alive connections, SSE fan-out p99.

int ConnectLoopback(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool SendAll(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t w = send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (w <= 0) return false;
    off += static_cast<size_t>(w);
  }
  return true;
}

// Reads one HTTP/1.1 response (Content-Length or chunked) from a keep-alive connection.
// `buf` carries bytes past the response to the next call. Returns the status or -1.
int ReadResponse(int fd, std::string& buf) {
  auto fill = [&]() {
    char tmp[65536];
    ssize_t r = recv(fd, tmp, sizeof(tmp), 0);
    if (r <= 0) return false;
    buf.append(tmp, static_cast<size_t>(r));
    return true;
  };
  size_t hdr_end;
  while ((hdr_end = buf.find("\r\n\r\n")) == std::string::npos) {
    if (!fill()) return -1;
  }
  std::string head = absl::AsciiStrToLower(buf.substr(0, hdr_end));
  int status = -1;
  if (head.size() > 12) (void)absl::SimpleAtoi(head.substr(9, 3), &status);
  size_t pos = hdr_end + 4;
  if (size_t cl = head.find("content-length:"); cl != std::string::npos) {
    size_t len = 0;
    size_t eol = head.find("\r\n", cl);
    std::string v(absl::StripAsciiWhitespace(head.substr(cl + 15, eol - cl - 15)));
    (void)absl::SimpleAtoi(v, &len);
    while (buf.size() < pos + len) {
      if (!fill()) return -1;
    }
    buf.erase(0, pos + len);
    return status;
  }
  if (absl::StrContains(head, "chunked")) {
    for (;;) {
      size_t eol;
      while ((eol = buf.find("\r\n", pos)) == std::string::npos) {
        if (!fill()) return -1;
      }
      size_t len = std::stoul(buf.substr(pos, eol - pos), nullptr, 16);
      while (buf.size() < eol + 2 + len + 2) {
        if (!fill()) return -1;
      }
      pos = eol + 2 + len + 2;
      if (len == 0) break;
    }
    buf.erase(0, pos);
    return status;
  }
  buf.erase(0, pos);
  return status;
}

Json RunGateway(const Context& cx) {
  const Flags& f = *cx.flags;
  Json out;
  out["scenario"] = "gateway";
  if (f.discoveryd.empty()) {
    out["skipped"] = "no --discoveryd PATH given (discoveryd is built in tools/discoveryd)";
    return out;
  }
  const int port = discovery::testing::PickFreePort();
  std::string args = absl::StrReplaceAll(
      f.discoveryd_args,
      {{"{port}", absl::StrCat(port)}, {"{endpoints}", absl::StrJoin(cx.endpoints, ",")}});
  std::vector<std::string> argv = {f.discoveryd};
  for (absl::string_view a : absl::StrSplit(args, ' ', absl::SkipWhitespace())) {
    argv.emplace_back(a);
  }
  auto child = discovery::testing::ChildProcess::Spawn(
      {.argv = argv,
       .env = {{"ETCD_ENDPOINTS", absl::StrJoin(cx.endpoints, ",")},
               {"DISCOVERY_API_TOKEN", f.discoveryd_token}}});
  if (!child.ok()) {
    out["skipped"] = absl::StrCat("discoveryd did not start: ", child.status().ToString());
    return out;
  }
  const bool healthy = WaitFor(
      [&] {
        auto r = discovery::testing::HttpGet(port, "/healthz", absl::Seconds(1));
        return r.ok() && r->status == 200;
      },
      absl::Seconds(10), absl::Milliseconds(100));
  if (!healthy) {
    out["skipped"] =
        absl::StrCat("discoveryd not healthy on /healthz: ", (*child)->ReadStderr().substr(0, 300));
    return out;
  }
  // Data: 100 instances of type world.
  const std::string prefix = "/services/";
  Bare bare(cx.endpoints[0]);
  BulkPut(bare, prefix, 100, 8);
  absl::SleepFor(absl::Milliseconds(500));

  // 1. Discover: keep-alive connections, each a closed loop of GETs for gateway_seconds.
  const std::string request =
      absl::StrCat("GET /sd/v1/instances?type=world HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Token: ",
                   f.discoveryd_token, "\r\n\r\n");
  std::atomic<int64_t> ok{0}, bad{0};
  const int64_t end = NowNs() + static_cast<int64_t>(f.gateway_seconds * 1e9);
  const int64_t d0 = NowNs();
  {
    std::vector<std::thread> conns;
    for (int c = 0; c < f.gateway_connections; ++c) {
      conns.emplace_back([&] {
        int fd = ConnectLoopback(port);
        if (fd < 0) return;
        std::string buf;
        for (int i = 0; i < 1000000 && NowNs() < end; ++i) {
          if (!SendAll(fd, request)) break;
          int st = ReadResponse(fd, buf);
          if (st == 200) {
            ok.fetch_add(1);
          } else {
            bad.fetch_add(1);
            if (st < 0) break;
          }
        }
        close(fd);
      });
    }
    for (auto& t : conns) t.join();
  }
  const double secs = Seconds(NowNs() - d0);
  out["discover_per_s"] = Round(ok.load() / secs, 1);
  out["discover_errors"] = bad.load();

  // Baseline: the same concurrency doing a bare Range of the type's prefix per request.
  {
    std::atomic<int64_t> rok{0};
    const int64_t rend = NowNs() + static_cast<int64_t>(f.gateway_seconds * 1e9);
    const int64_t r0 = NowNs();
    std::vector<std::thread> conns;
    for (int c = 0; c < f.gateway_connections; ++c) {
      conns.emplace_back([&] {
        while (NowNs() < rend) {
          if (bare.RangeAll(prefix + "world/", 1000).ok()) rok.fetch_add(1);
        }
      });
    }
    for (auto& t : conns) t.join();
    out["baseline_range_per_s"] = Round(rok.load() / Seconds(NowNs() - r0), 1);
  }

  // 2. SSE fan-out: sse_subscribers connections on /sd/v1/subscribe; 20 paced puts; put ack ->
  // event line received on each connection.
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  const std::string sub_req = absl::StrCat(
      "GET /sd/v1/subscribe?type=world HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: "
      "text/event-stream\r\nX-API-Token: ",
      f.discoveryd_token, "\r\n\r\n");
  std::vector<int> fds;
  for (int i = 0; i < f.sse_subscribers; ++i) {
    int fd = ConnectLoopback(port);
    if (fd < 0 || !SendAll(fd, sub_req)) {
      if (fd >= 0) close(fd);
      break;
    }
    fds.push_back(fd);
  }
  out["sse_connected"] = static_cast<int>(fds.size());
  constexpr int kPuts = 20;
  std::vector<std::atomic<int64_t>> ack(kPuts);
  for (auto& a : ack) a = 0;
  std::mutex rmu;
  std::vector<std::pair<int, int64_t>> received;  // seq, recv time
  std::atomic<bool> stop{false};
  int ep = epoll_create1(EPOLL_CLOEXEC);
  std::vector<std::string> bufs(fds.size());
  for (size_t i = 0; i < fds.size(); ++i) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = i;
    epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
  }
  std::thread reader([&] {
    epoll_event evs[256];
    char tmp[65536];
    while (!stop.load()) {
      int k = epoll_wait(ep, evs, 256, 50);
      const int64_t now = NowNs();
      for (int e = 0; e < k; ++e) {
        size_t i = evs[e].data.u64;
        ssize_t r = recv(fds[i], tmp, sizeof(tmp), MSG_DONTWAIT);
        if (r <= 0) {
          epoll_ctl(ep, EPOLL_CTL_DEL, fds[i], nullptr);
          continue;
        }
        std::string& b = bufs[i];
        b.append(tmp, static_cast<size_t>(r));
        size_t nl;
        while ((nl = b.find('\n')) != std::string::npos) {
          std::string line = b.substr(0, nl);
          b.erase(0, nl + 1);
          size_t at = line.find("\"seq\":\"");
          int64_t seq = -1;
          if (!absl::StartsWith(line, "data:") || at == std::string::npos) continue;
          at += 7;
          if (absl::SimpleAtoi(line.substr(at, line.find('"', at) - at), &seq) && seq >= 0 &&
              seq < kPuts) {
            std::lock_guard lock(rmu);
            received.emplace_back(static_cast<int>(seq), now);
          }
        }
      }
    }
  });
  absl::SleepFor(absl::Seconds(1));
  for (int seq = 0; seq < kPuts; ++seq) {
    Instance in = MakeInstance(seq);
    in.meta["seq"] = absl::StrCat(seq);
    if (bare.Put(KeyOf(prefix, in), discovery::EncodeInstance(in)).ok()) ack[seq] = NowNs();
    absl::SleepFor(absl::Milliseconds(100));
  }
  absl::SleepFor(absl::Seconds(2));
  stop.store(true);
  reader.join();
  close(ep);
  for (int fd : fds) close(fd);
  std::vector<int64_t> lat;
  for (auto& [seq, t] : received) {
    if (ack[seq].load() != 0) lat.push_back(std::max<int64_t>(0, t - ack[seq].load()));
  }
  out["sse_events_received"] = static_cast<int64_t>(received.size());
  out["sse_events_expected"] = static_cast<int64_t>(fds.size()) * kPuts;
  out["sse_p50_ms"] = Round(Percentile(lat, 50) / 1e6);
  out["sse_p99_ms"] = Round(Percentile(lat, 99) / 1e6);
  out["target"] = Target("report only", !lat.empty());
  return out;
}

// ---------------------------------------------------------------------------------------------

Json RunScenario(const std::string& name, const Context& cx) {
  const Flags& f = *cx.flags;
  if (name == "register") return RunRegister(cx);
  if (name == "keepalive") return RunKeepalive(cx);
  if (name == "watch-latency") return RunLatency(cx, name, f.latency_rate, f.latency_seconds, 1);
  if (name == "fanout") {
    return RunLatency(cx, name, f.fanout_rate, f.fanout_seconds, f.fanout_subscribers);
  }
  if (name == "watch-throughput") return RunThroughput(cx);
  if (name == "resync") return RunResync(cx);
  if (name == "pick") return RunPick(cx);
  if (name == "gateway") return RunGateway(cx);
  Json out;
  out["scenario"] = name;
  out["error"] = "unknown scenario";
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  CLI::App app{"discovery-bench: end-to-end benchmarks of the discovery library against etcd"};
  app.add_option("--scenario", f.scenarios,
                 "Scenario(s) to run (default: all): keepalive, register, watch-latency, "
                 "fanout, watch-throughput, resync, pick, gateway");
  app.add_flag("--smoke", f.smoke, "All scenarios (unless --scenario) with tiny sizes; < 60 s");
  app.add_option("--endpoints", f.endpoints,
                 "Existing etcd (comma list); default: start one per scenario on 127.0.0.1");
  app.add_option("--log-level", f.log_level, "Library log level (stderr)");
  app.add_option("--register-n", f.register_n, "register: instances");
  app.add_option("--register-threads", f.register_threads, "register: calling threads");
  app.add_option("--keepalive-n", f.keepalive_n, "keepalive: leases");
  app.add_option("--keepalive-seconds", f.keepalive_seconds, "keepalive: measured seconds");
  app.add_option("--keepalive-ttl", f.keepalive_ttl, "keepalive: lease TTL seconds");
  app.add_option("--latency-rate", f.latency_rate, "watch-latency: puts per second");
  app.add_option("--latency-seconds", f.latency_seconds, "watch-latency: seconds");
  app.add_option("--fanout-subscribers", f.fanout_subscribers, "fanout: subscribers");
  app.add_option("--fanout-rate", f.fanout_rate, "fanout: puts per second");
  app.add_option("--fanout-seconds", f.fanout_seconds, "fanout: seconds");
  app.add_option("--throughput-n", f.throughput_n, "watch-throughput: puts");
  app.add_option("--throughput-writers", f.throughput_writers, "watch-throughput: writers");
  app.add_option("--resync-n", f.resync_n, "resync: instances");
  app.add_option("--pick-n", f.pick_n, "pick: instances");
  app.add_option("--pick-rate", f.pick_rate, "pick: changes per second");
  app.add_option("--pick-seconds", f.pick_seconds, "pick: seconds");
  app.add_option("--discoveryd", f.discoveryd, "gateway: path of discoveryd (else skipped)");
  app.add_option("--discoveryd-args", f.discoveryd_args,
                 "gateway: discoveryd arguments; {port} and {endpoints} are substituted");
  app.add_option("--gateway-seconds", f.gateway_seconds, "gateway: seconds of discover load");
  app.add_option("--gateway-connections", f.gateway_connections, "gateway: keep-alive conns");
  app.add_option("--sse-subscribers", f.sse_subscribers, "gateway: SSE subscribers");
  CLI11_PARSE(app, argc, argv);

  if (f.smoke) {
    // Explicit sizes given on the command line still win.
    Flags given = f;
    f.ApplySmoke();
    if (app.count("--register-n")) f.register_n = given.register_n;
    if (app.count("--keepalive-n")) f.keepalive_n = given.keepalive_n;
    if (app.count("--keepalive-seconds")) f.keepalive_seconds = given.keepalive_seconds;
    if (app.count("--throughput-n")) f.throughput_n = given.throughput_n;
    if (app.count("--resync-n")) f.resync_n = given.resync_n;
  }
  if (f.scenarios.empty()) f.scenarios = kAllScenarios;

  auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>("discovery.bench", sink);
  logger->set_level(spdlog::level::from_str(f.log_level));

  int failures = 0;
  for (const std::string& name : f.scenarios) {
    Context cx;
    cx.flags = &f;
    cx.logger = logger;
    std::unique_ptr<discovery::testing::EtcdCluster> cluster;
    if (!f.endpoints.empty()) {
      cx.endpoints = discovery::SplitEndpoints(f.endpoints);
    } else if (name != "gateway" || !f.discoveryd.empty()) {
      auto c = discovery::testing::EtcdCluster::Start(
          {.members = 1, .extra_args = {"--quota-backend-bytes", "4294967296"}});
      if (!c.ok()) {
        std::cerr << "starting etcd: " << c.status() << "\n";
        return 2;
      }
      cluster = *std::move(c);
      cx.endpoints = cluster->ClientEndpoints();
    }
    const int64_t t0 = NowNs();
    Json result = RunScenario(name, cx);
    result["wall_s"] = Round(Seconds(NowNs() - t0), 1);
    if (result.contains("error")) ++failures;
    std::cout << result.dump() << std::endl;
  }
  // Timing targets are reported, never asserted; only errors fail the run.
  return failures == 0 ? 0 : 1;
}
