// discovery-bench scenario "register": Registrar::Register calls with K in flight.
#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "bare.h"
#include "common.h"
#include "discovery/picker.h"
#include "discovery/registrar.h"
#include "discovery/watcher.h"

namespace discovery_bench {

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

}  // namespace discovery_bench
