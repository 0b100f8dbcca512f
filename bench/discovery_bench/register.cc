// discovery-bench scenario "register": N registrations through the Registrar with K in
// flight (--register-api sync: K threads calling Register; async: RegisterAsync with K
// outstanding; many: one RegisterMany, 64 in flight); registrations/s and p50/p99 per
// registration. The raw figure to compare with is
// `discovery-raw-bench register --inflight K` (bench/compare.sh runs both alternately).
// With --gateway / --store the same registrations go through discoveryd or to Redis
// (bench/gateway_compare.sh); --peer-pids adds the servers' CPU over the registrations.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

#include "common.h"
#include "discovery/registrar.h"

namespace discovery_bench {
namespace {

constexpr int kRegisterManyInflight = 64;  // what RegisterMany keeps in flight

struct RegisterResult {
  std::vector<discovery::Registration> regs;  // the successful ones
  std::vector<int64_t> latency_ns;            // per registration, in call order
  int errors = 0;
};

// `inflight` threads calling Registrar::Register, each blocking on its registration.
RegisterResult RegisterSync(discovery::Registrar& registrar, std::vector<Instance> instances,
                            const discovery::RegistrationOptions& options, int inflight) {
  const int n = static_cast<int>(instances.size());
  RegisterResult r;
  r.latency_ns.assign(n, 0);
  r.regs.reserve(n);
  std::mutex mu;
  std::atomic<int> errors{0};
  ParallelFor(inflight, n, [&](int i) {
    const int64_t s = NowNs();
    auto reg = registrar.Register(std::move(instances[i]), options);
    r.latency_ns[i] = NowNs() - s;
    if (!reg.ok()) {
      errors.fetch_add(1);
      return;
    }
    std::lock_guard lock(mu);
    r.regs.push_back(*std::move(reg));
  });
  r.errors = errors.load();
  return r;
}

// Registrar::RegisterAsync from the calling thread with `inflight` registrations
// outstanding: each completion frees a slot, the caller starts the next one.
RegisterResult RegisterAsync(discovery::Registrar& registrar, std::vector<Instance> instances,
                             const discovery::RegistrationOptions& options, int inflight) {
  const int n = static_cast<int>(instances.size());
  RegisterResult r;
  r.latency_ns.assign(n, 0);
  r.regs.reserve(n);
  std::mutex mu;
  std::condition_variable cv;
  int outstanding = 0;
  int finished = 0;
  for (int i = 0; i < n; ++i) {
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return outstanding < inflight; });
      ++outstanding;
    }
    const int64_t s = NowNs();
    registrar.RegisterAsync(std::move(instances[i]), options,
                            [&, i, s](absl::StatusOr<discovery::Registration> reg) {
                              const int64_t e = NowNs();
                              std::lock_guard lock(mu);
                              r.latency_ns[i] = e - s;
                              if (reg.ok()) {
                                r.regs.push_back(*std::move(reg));
                              } else {
                                ++r.errors;
                              }
                              --outstanding;
                              ++finished;
                              cv.notify_all();
                            });
  }
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return finished == n; });
  return r;
}

// One Registrar::RegisterMany of all n (it keeps 64 in flight). Per-registration latency is
// not observable from outside the batch: every element gets the mean by Little's law,
// 64 x elapsed / n.
RegisterResult RegisterBatch(discovery::Registrar& registrar, std::vector<Instance> instances,
                             const discovery::RegistrationOptions& options) {
  const int n = static_cast<int>(instances.size());
  RegisterResult r;
  const int64_t s = NowNs();
  auto results = registrar.RegisterMany(std::move(instances), options);
  const int64_t elapsed = NowNs() - s;
  const int64_t mean = n > 0 ? elapsed * std::min(n, kRegisterManyInflight) / n : 0;
  r.latency_ns.assign(n, mean);
  r.regs.reserve(n);
  for (auto& reg : results) {
    if (reg.ok()) {
      r.regs.push_back(*std::move(reg));
    } else {
      ++r.errors;
    }
  }
  return r;
}

}  // namespace

Json RunRegister(const Context& cx) {
  const Flags& f = *cx.flags;
  const int n = f.register_n;
  const std::string& api = f.register_api;
  const int k = api == "many" ? kRegisterManyInflight : std::max(1, f.register_inflight);
  Json out;
  out["scenario"] = "register";
  out["impl"] = "library";
  out["backend"] = cx.Backend();
  out["api"] = api == "many"    ? "RegisterMany of N (64 in flight; p50/p99 = mean)"
               : api == "async" ? "RegisterAsync, K in flight"
                                : "Register, K threads";
  out["n"] = n;
  out["inflight"] = k;

  auto conn = cx.Connect();
  auto registrar =
      discovery::Registrar::Create({.connection = conn, .on_event = {}, .logger = cx.logger});
  if (!registrar.ok()) {
    out["error"] = registrar.status().ToString();
    return out;
  }
  const std::string prefix = cx.Prefix("register", "lib");
  std::vector<Instance> instances;
  instances.reserve(n);
  for (int i = 0; i < n; ++i) {
    instances.push_back(MakeInstance(i));
    instances.back().instance_id.clear();  // the registrar generates a ULID
  }
  bench_measure::PeerCpu peers(f.peer_pids);
  peers.Begin();
  const int64_t t0 = NowNs();
  const discovery::RegistrationOptions options{.prefix = prefix};
  RegisterResult r = api == "many"    ? RegisterBatch(**registrar, std::move(instances), options)
                     : api == "async" ? RegisterAsync(**registrar, std::move(instances), options, k)
                                      : RegisterSync(**registrar, std::move(instances), options, k);
  const double secs = Seconds(NowNs() - t0);
  for (const auto& [name, pct] : peers.End()) out[name] = pct;
  out["per_s"] = Round((n - r.errors) / secs, 1);
  out["p50_ms"] = Round(Percentile(r.latency_ns, 50) / 1e6);
  out["p99_ms"] = Round(Percentile(r.latency_ns, 99) / 1e6);
  out["errors"] = r.errors;
  out["target"] = Target(">= 0.9x discovery-raw-bench register (bench/compare.sh)", r.errors == 0);
  ParallelFor(16, static_cast<int>(r.regs.size()), [&](int i) { (void)r.regs[i].Close(); });
  return out;
}

}  // namespace discovery_bench
