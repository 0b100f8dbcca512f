// discovery-raw-bench watch-latency: the paced, pipelined writer of bench/paced_writer.h (up
// to --inflight Puts outstanding on its own channel, the value carries a sequence number) and
// one bare Watch stream (blocking reader/writer on another channel) read by a dedicated
// thread that timestamps each event on arrival. Figures: receive - put acknowledged, and
// receive - put sent (CLOCK_MONOTONIC).
#include <atomic>
#include <thread>

#include "paced_writer.h"
#include "raw_common.h"

namespace raw_bench {

Json RunWatchLatency(const Flags& f) {
  const int rate = std::max(1, f.rate);
  const int total = std::max(1, static_cast<int>(rate * f.latency_seconds));
  Json out;
  out["scenario"] = "watch-latency";
  out["impl"] = "raw";
  out["rate_per_s"] = rate;
  out["seconds"] = f.latency_seconds;
  out["subscribers"] = 1;
  const std::string prefix = f.prefix.empty() ? UniquePrefix("watch") : f.prefix;
  auto wch = NewChannel(f.endpoint);
  auto rch = NewChannel(f.endpoint);
  auto watch = pb::Watch::NewStub(rch);

  std::vector<std::atomic<int64_t>> recv(total);
  for (auto& r : recv) r.store(0);

  grpc::ClientContext wctx;
  auto stream = watch->Watch(&wctx);
  pb::WatchRequest create;
  create.mutable_create_request()->set_key(prefix);
  create.mutable_create_request()->set_range_end(PrefixEnd(prefix));
  if (!stream->Write(create)) {
    out["error"] = "watch: create write failed";
    return out;
  }
  std::atomic<bool> created{false};
  std::atomic<uint64_t> events{0};
  std::thread reader([&] {
    pb::WatchResponse resp;
    while (stream->Read(&resp)) {
      const int64_t now = bench_writer::MonoNs();
      if (resp.created()) created.store(true);
      for (const auto& ev : resp.events()) {
        const int64_t seq = bench_writer::SeqOf(ev.kv().value());
        int64_t at = now;
        if (f.work_ns > 0) {  // --work-ns: a stand-in for a client's work before its callback
          const int64_t until = bench_writer::MonoNs() + f.work_ns;
          while ((at = bench_writer::MonoNs()) < until) {
          }
        }
        if (seq >= 0 && seq < total) recv[seq].store(at, std::memory_order_relaxed);
        if (f.work_after_ns > 0) {  // --work-after-ns: work after the callback (freeing, ...)
          const int64_t until = bench_writer::MonoNs() + f.work_after_ns;
          while (bench_writer::MonoNs() < until) {
          }
        }
      }
      events.fetch_add(static_cast<uint64_t>(resp.events_size()));
    }
  });
  for (int i = 0; i < 10000 && !created.load(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (!created.load()) {
    wctx.TryCancel();
    reader.join();
    out["error"] = "watch: not created within 10 s";
    return out;
  }

  // Writer: `rate` puts per second over 1,000 keys, pipelined (bench/paced_writer.h, the
  // same code as discovery-bench's watch-latency).
  bench_writer::PacedResult w =
      bench_writer::RunPacedWriter(wch, prefix, rate, total, f.writer_inflight, f.full_value);
  const std::vector<int64_t>& sent = w.sent;
  const std::vector<int64_t>& ack = w.ack;
  const int errors = w.errors;
  out["writer_inflight"] = f.writer_inflight;
  out["full_value"] = f.full_value;
  out["achieved_rate_per_s"] = Round(w.achieved_rate_per_s, 1);
  out["writer_max_inflight"] = w.max_inflight_reached;
  out["writer_max_lag_ms"] = Round(static_cast<double>(w.max_lag_ns) / 1e6);
  // Wait (bounded) for the last events.
  auto all_seen = [&] {
    for (int i = 0; i < total; ++i) {
      if (ack[i] != 0 && recv[i].load() == 0) return false;
    }
    return true;
  };
  for (int i = 0; i < 1000 && !all_seen(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  wctx.TryCancel();
  reader.join();
  (void)stream->Finish();

  std::vector<int64_t> from_ack, from_send;
  int missing = 0, before_ack = 0;
  for (int i = 0; i < total; ++i) {
    if (ack[i] == 0) continue;
    const int64_t r = recv[i].load();
    if (r == 0) {
      ++missing;
      continue;
    }
    int64_t d = r - ack[i];
    if (d < 0) {
      ++before_ack;
      d = 0;  // the event overtook the Put's answer
    }
    from_ack.push_back(d);
    from_send.push_back(r - sent[i]);
  }
  auto put = [&](const std::string& tag, std::vector<int64_t>& v) {
    out[tag + "_p50_ms"] = Round(Percentile(v, 50) / 1e6);
    out[tag + "_p99_ms"] = Round(Percentile(v, 99) / 1e6);
    out[tag + "_p999_ms"] = Round(Percentile(v, 99.9) / 1e6);
    out[tag + "_max_ms"] = Round(v.empty() ? 0 : static_cast<double>(v.back()) / 1e6);
  };
  out["puts"] = total - errors;
  out["put_errors"] = errors;
  put("ack", from_ack);  // same figure names as discovery-bench (there: through the Watcher)
  put("send", from_send);
  out["missing"] = missing;
  out["before_ack"] = before_ack;
  out["events"] = events.load();
  return out;
}

}  // namespace raw_bench
