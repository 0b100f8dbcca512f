// The paced watch-latency writer on Redis: bench/paced_core.h's schedule, each in-flight slot a
// thread with its own hiredis connection running the library's put script (kPutIfUnchanged
// guarded by the key's last modification, so every put is one atomic script call with one
// change-log record, as the library's writes are). The same keys and values as the etcd writer
// (SeqKey / SeqValue), all on one lease of an hour that Revoke() drops at the end. Shared by
// discovery-bench --store redis:// and discovery-raw-redis-bench watch-latency.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "paced_core.h"
#include "redis_raw.h"

namespace bench_writer {

class RedisPacedWriter {
 public:
  RedisPacedWriter(std::string url, std::string ns = "sd") : url_(std::move(url)), ns_(ns) {
    bench_redis::Conn c(url_, ns_);
    lease_ = bench_redis::Grant(c, 3600 * 1000);
    if (!c.ok()) error_ = c.error();
    if (lease_ == 0 && error_.empty()) error_ = "lease grant failed";
  }
  const std::string& error() const { return error_; }

  PacedResult Run(const std::string& prefix, int rate, int total, int inflight, int keys = 1000) {
    keys = std::max(1, std::min(std::max(1, total), keys));
    inflight = std::max(1, inflight);
    std::vector<std::atomic<int64_t>> mod(static_cast<size_t>(keys));
    for (auto& m : mod) m = 0;
    struct Worker {
      std::mutex mu;
      std::condition_variable cv;
      int seq = -1;
      std::function<void(bool)> done;
      bool stop = false;
      std::thread th;
    };
    std::vector<std::unique_ptr<Worker>> workers;
    const std::string lease = std::to_string(lease_);
    for (int i = 0; i < inflight; ++i) {
      workers.push_back(std::make_unique<Worker>());
      Worker* w = workers.back().get();
      w->th = std::thread([this, w, &mod, &prefix, keys, lease] {
        bench_redis::Conn c(url_, ns_);
        std::unique_lock<std::mutex> lock(w->mu);
        while (true) {
          w->cv.wait(lock, [&] { return w->stop || w->seq >= 0; });
          if (w->seq < 0) return;
          const int seq = w->seq;
          auto done = std::move(w->done);
          w->seq = -1;
          lock.unlock();
          const size_t k = static_cast<size_t>(seq % keys);
          bench_redis::ReplyPtr r =
              c.Eval(discovery::redis::kPutIfUnchangedScript,
                     {SeqKey(prefix, static_cast<int>(k)), SeqValue(static_cast<int>(k), seq),
                      lease, std::to_string(mod[k].load())});
          const bool ok = bench_redis::IntAt(r.get(), 0) == 1;
          if (ok) mod[k] = bench_redis::IntAt(r.get(), 1, 0);
          done(ok);
          lock.lock();
        }
      });
    }
    PacedResult res =
        RunPaced(rate, total, inflight, [&](int s, int seq, std::function<void(bool)> done) {
          Worker& w = *workers[static_cast<size_t>(s)];
          std::lock_guard<std::mutex> lock(w.mu);
          w.seq = seq;
          w.done = std::move(done);
          w.cv.notify_one();
        });
    for (auto& w : workers) {
      {
        std::lock_guard<std::mutex> lock(w->mu);
        w->stop = true;
      }
      w->cv.notify_one();
      w->th.join();
    }
    return res;
  }

  // Drops the writer's lease and so every key it wrote.
  void Revoke() {
    bench_redis::Conn c(url_, ns_);
    c.Eval(discovery::redis::kRevokeScript, {std::to_string(lease_)});
  }

 private:
  std::string url_;
  std::string ns_;
  int64_t lease_ = 0;
  std::string error_;
};

}  // namespace bench_writer
