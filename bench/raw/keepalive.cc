// discovery-raw-bench keepalive: N leases granted (pipelined, callback API), then ONE
// LeaseKeepAlive stream: every TTL/3 all N keepalives written in one burst (buffer hint on
// all but the last write), a reader thread consuming the answers. CPU is the getrusage
// delta over the measured window only: it starts half a keepalive interval after the second
// burst is due (warm-up = TTL/2 after the stream opened) and lasts --seconds.
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "raw_common.h"

namespace raw_bench {
namespace {

// Grants n leases with `inflight` LeaseGrant calls in flight; ids of the granted ones.
std::vector<int64_t> GrantAll(pb::Lease::Stub* stub, int n, int ttl, int inflight) {
  struct State {
    pb::Lease::Stub* stub;
    int n, ttl;
    std::vector<int64_t> ids;
    std::atomic<int> next{0}, done{0};
    std::mutex mu;
    std::condition_variable cv;
    void Start(int i) {
      struct Op {
        grpc::ClientContext ctx;
        pb::LeaseGrantRequest req;
        pb::LeaseGrantResponse resp;
      };
      auto* op = new Op;
      op->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      op->req.set_ttl(ttl);
      stub->async()->LeaseGrant(&op->ctx, &op->req, &op->resp, [this, op, i](grpc::Status s) {
        if (s.ok()) ids[i] = op->resp.id();
        delete op;
        if (int j = next.fetch_add(1); j < n) Start(j);
        if (done.fetch_add(1) + 1 == n) {
          std::lock_guard lock(mu);
          cv.notify_all();
        }
      });
    }
  } st{.stub = stub, .n = n, .ttl = ttl, .ids = std::vector<int64_t>(n, 0)};
  if (n == 0) return {};
  const int first = std::min(n, inflight);
  st.next.store(first);
  for (int i = 0; i < first; ++i) st.Start(i);
  {
    std::unique_lock lock(st.mu);
    st.cv.wait(lock, [&] { return st.done.load() == n; });
  }
  std::erase(st.ids, 0);
  return st.ids;
}

}  // namespace

Json RunKeepalive(const Flags& f) {
  const int n = f.keepalive_n;
  const int ttl = std::max(1, f.ttl);
  Json out;
  out["scenario"] = "keepalive";
  out["impl"] = "raw";
  out["n"] = n;
  out["seconds"] = f.keepalive_seconds;
  out["ttl_s"] = ttl;
  const int64_t threads_start = ProcStatus("Threads");
  auto channel = NewChannel(f.endpoint);
  auto lease = pb::Lease::NewStub(channel);
  std::vector<int64_t> ids = GrantAll(lease.get(), n, ttl, 64);
  out["registered"] = static_cast<int>(ids.size());
  out["register_errors"] = n - static_cast<int>(ids.size());

  grpc::ClientContext ctx;
  auto stream = lease->LeaseKeepAlive(&ctx);
  std::atomic<int> lost{0};
  std::atomic<int64_t> answers{0};
  std::thread reader([&] {
    pb::LeaseKeepAliveResponse resp;
    while (stream->Read(&resp)) {
      answers.fetch_add(1, std::memory_order_relaxed);
      if (resp.ttl() <= 0) lost.fetch_add(1, std::memory_order_relaxed);
    }
  });

  const int64_t interval = static_cast<int64_t>(ttl * 1e9 / 3);
  const int64_t s0 = NowNs();
  const int64_t w0 = s0 + interval * 3 / 2;
  const int64_t w1 = w0 + static_cast<int64_t>(f.keepalive_seconds * 1e9);
  double cpu0 = -1, cpu1 = -1;
  int64_t max_threads = 0, answers0 = 0, answers1 = 0;
  pb::LeaseKeepAliveRequest req;
  const auto hint = grpc::WriteOptions().set_buffer_hint();
  bool write_failed = false;
  for (int64_t burst = s0; !write_failed;) {
    // Sleep until the next event: a burst, the window's start or its end.
    const int64_t next = std::min(burst, cpu0 < 0 ? w0 : w1);
    if (const int64_t now = NowNs(); next > now) {
      std::this_thread::sleep_for(std::chrono::nanoseconds(next - now));
    }
    const int64_t now = NowNs();
    if (cpu0 < 0 && now >= w0) {
      cpu0 = CpuSeconds();
      answers0 = answers.load();
    }
    if (cpu0 >= 0 && now >= w1) {
      cpu1 = CpuSeconds();
      answers1 = answers.load();
      break;
    }
    max_threads = std::max(max_threads, ProcStatus("Threads"));
    if (now >= burst) {
      for (size_t i = 0; i < ids.size(); ++i) {
        req.set_id(ids[i]);
        if (!stream->Write(req, i + 1 < ids.size() ? hint : grpc::WriteOptions())) {
          write_failed = true;
          break;
        }
      }
      burst += interval;
    }
  }
  const double wall = Seconds(w1 - w0);
  stream->WritesDone();
  ctx.TryCancel();
  reader.join();
  (void)stream->Finish();
  if (write_failed) out["error"] = "keepalive stream write failed";
  const double cpu = cpu1 - cpu0;
  out["warmup_s"] = Round(Seconds(w0 - s0), 2);
  out["cpu_s"] = Round(cpu);
  out["cpu_pct_of_core"] = Round(100.0 * cpu / wall, 2);
  out["cpu_us_per_keepalive"] =
      ids.empty() ? 0.0 : Round(1e6 * cpu / (static_cast<double>(ids.size()) * wall * 3 / ttl), 2);
  out["threads_total"] = max_threads;
  out["threads_before_connection"] = threads_start;
  out["threads_added"] = max_threads - threads_start;
  out["threads_grpc"] = max_threads - threads_start - 1;  // all but our reader
  out["keepalive_streams"] = 1;
  out["leases_lost"] = lost.load();
  out["keepalives_per_s"] = Round(n / (ttl / 3.0), 1);
  out["answers_in_window"] = answers1 - answers0;

  // Cleanup (not measured).
  for (size_t i = 0; i < ids.size(); ++i) {
    grpc::ClientContext c;
    c.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    pb::LeaseRevokeRequest r;
    r.set_id(ids[i]);
    pb::LeaseRevokeResponse resp;
    (void)lease->LeaseRevoke(&c, r, &resp);
  }
  return out;
}

}  // namespace raw_bench
