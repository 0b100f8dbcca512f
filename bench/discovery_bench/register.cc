// discovery-bench scenario "register": N registrations through the Registrar with K in
// flight; registrations/s and p50/p99 per registration. The raw figure to compare with is
// `discovery-raw-bench register --inflight K` (bench/compare.sh runs both alternately).
#include <atomic>
#include <mutex>
#include <string>
#include <vector>

#include "common.h"
#include "discovery/registrar.h"

namespace discovery_bench {
namespace {

struct RegisterResult {
  std::vector<discovery::Registration> regs;  // the successful ones
  std::vector<int64_t> latency_ns;            // per registration, in call order
  int errors = 0;
};

// The library side of the figure, in one place: n instances registered with `inflight`
// registrations in flight. Today: `inflight` threads calling Registrar::Register.
RegisterResult RegisterAll(discovery::Registrar& registrar, std::vector<Instance> instances,
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

}  // namespace

Json RunRegister(const Context& cx) {
  const Flags& f = *cx.flags;
  const int n = f.register_n;
  const int k = std::max(1, f.register_inflight);
  Json out;
  out["scenario"] = "register";
  out["impl"] = "library";
  out["api"] = "Register, K threads";
  out["n"] = n;
  out["inflight"] = k;

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
  const int64_t t0 = NowNs();
  RegisterResult r = RegisterAll(**registrar, std::move(instances), {.prefix = prefix}, k);
  const double secs = Seconds(NowNs() - t0);
  out["per_s"] = Round((n - r.errors) / secs, 1);
  out["p50_ms"] = Round(Percentile(r.latency_ns, 50) / 1e6);
  out["p99_ms"] = Round(Percentile(r.latency_ns, 99) / 1e6);
  out["errors"] = r.errors;
  out["target"] = Target(">= 0.9x discovery-raw-bench register (bench/compare.sh)", r.errors == 0);
  ParallelFor(16, static_cast<int>(r.regs.size()), [&](int i) { (void)r.regs[i].Close(); });
  return out;
}

}  // namespace discovery_bench
