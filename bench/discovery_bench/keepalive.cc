// discovery-bench scenario "keepalive": CPU, threads and lost leases of N leases kept alive.
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

}  // namespace discovery_bench
