// Raw hiredis pieces of discovery-bench's Redis watch-throughput and resync (--store redis://):
// writers running the library's put/delete scripts from bare connections (so every write is one
// script call with one change-log record, as the library's writes are), the store's current
// seq, a bare XREAD BLOCK reader of the change log and a bare HSCAN + HMGET of the instance
// hash (the reads the Redis watch source makes). Header-only; hiredis and bench/redis_raw.h.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "measure.h"
#include "redis_raw.h"

namespace discovery_bench::redis_log {

using bench_redis::Conn;
using bench_redis::IntAt;
using bench_redis::ReplyPtr;

// The store's last change seq ({ns}:meta seq); -1 on error.
inline int64_t StoreSeq(Conn& c) {
  ReplyPtr r = c.Command({"HGET", c.keys()[0], "seq"});
  if (!r) return -1;
  if (r->type == REDIS_REPLY_NIL) return 0;
  return IntAt(r.get(), -1, -1);
}

// A one-hour lease for a scenario's instances on `admin`, as a decimal string; empty with
// `*error` set when Redis is unreachable or the grant fails.
inline std::string GrantHourLease(Conn& admin, std::string* error) {
  const int64_t lease_id = bench_redis::Grant(admin, 3600 * 1000);
  if (!admin.ok() || lease_id == 0) {
    *error = "redis: " + (admin.ok() ? std::string("lease grant failed") : admin.error());
    return "";
  }
  return std::to_string(lease_id);
}

// Puts keys[i] = values[i] for i in [0, n) with `threads` connections (kPutIfUnchanged guarded
// by mods[i], which receives the new modification seq). Returns the failures.
inline int ParallelPut(const std::string& url, const std::vector<std::string>& keys,
                       const std::vector<std::string>& values, const std::string& lease,
                       std::vector<int64_t>& mods, int threads) {
  std::atomic<int> errors{0};
  std::atomic<int> next{0};
  const int n = static_cast<int>(keys.size());
  std::vector<std::thread> pool;
  for (int t = 0; t < std::max(1, threads); ++t) {
    pool.emplace_back([&] {
      Conn c(url);
      for (int i = next.fetch_add(1); i < n; i = next.fetch_add(1)) {
        ReplyPtr r = c.Eval(discovery::redis::kPutIfUnchangedScript,
                            {keys[i], values[i], lease, std::to_string(mods[i])});
        if (IntAt(r.get(), 0) == 1) {
          mods[i] = IntAt(r.get(), 1, 0);
        } else {
          errors.fetch_add(1);
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  return errors.load();
}

// A bare reader of the change log from `from_seq` on its own thread (XREAD COUNT 1000 BLOCK):
// counts the records whose key starts with `prefix`; done() is the NowNs() at which `target`
// were counted (0 until then).
class LogReader {
 public:
  LogReader(const std::string& url, std::string prefix, int64_t from_seq, uint64_t target)
      : conn_(url), prefix_(std::move(prefix)), from_(from_seq), target_(target) {}
  ~LogReader() { Stop(); }

  bool Start() {
    if (!conn_.ok()) return false;
    thread_ = std::thread([this] { Run(); });
    return true;
  }
  void Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  int64_t done() const { return done_.load(); }
  uint64_t count() const { return count_.load(); }

 private:
  void Run() {
    std::string last = std::to_string(from_) + "-0";
    while (!stop_.load() && done_.load() == 0) {
      ReplyPtr r = conn_.Command(
          {"XREAD", "COUNT", "1000", "BLOCK", "200", "STREAMS", conn_.keys()[6], last});
      if (!r) return;
      if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) continue;  // nil: timed out
      const redisReply* stream = r->element[0];
      if (stream->type != REDIS_REPLY_ARRAY || stream->elements < 2) continue;
      const redisReply* entries = stream->element[1];
      for (size_t e = 0; e < entries->elements; ++e) {
        const redisReply* entry = entries->element[e];
        if (entry->elements < 2) continue;
        last.assign(entry->element[0]->str, entry->element[0]->len);
        const redisReply* f = entry->element[1];
        for (size_t i = 0; i + 1 < f->elements; i += 2) {
          if (std::string(f->element[i]->str, f->element[i]->len) != "key") continue;
          const redisReply* k = f->element[i + 1];
          if (k->len >= prefix_.size() &&
              prefix_.compare(0, prefix_.size(), k->str, prefix_.size()) == 0) {
            if (count_.fetch_add(1) + 1 == target_) done_.store(bench_measure::NowNs());
          }
        }
      }
    }
  }

  Conn conn_;
  std::string prefix_;
  int64_t from_;
  uint64_t target_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> count_{0};
  std::atomic<int64_t> done_{0};
  std::thread thread_;
};

// A full read of the instances under `prefix` as the watch source makes it: HSCAN of the
// instance hash in pages of `page` (COUNT) and HMGET of each page's modification seqs. Returns
// the instances found under the prefix; -1 on error.
inline int64_t ScanAll(Conn& c, const std::string& prefix, int64_t page) {
  std::string cursor = "0";
  int64_t found = 0;
  do {
    ReplyPtr r = c.Command({"HSCAN", c.keys()[1], cursor, "COUNT", std::to_string(page)});
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 2) return -1;
    cursor.assign(r->element[0]->str, r->element[0]->len);
    const redisReply* items = r->element[1];
    std::vector<std::string> hmget = {"HMGET", c.keys()[2]};
    for (size_t i = 0; i + 1 < items->elements; i += 2) {
      std::string k(items->element[i]->str, items->element[i]->len);
      if (k.compare(0, prefix.size(), prefix) != 0) continue;
      hmget.push_back(std::move(k));
    }
    if (hmget.size() == 2) continue;
    found += static_cast<int64_t>(hmget.size() - 2);
    if (!c.Command(hmget)) return -1;
  } while (cursor != "0");
  return found;
}

}  // namespace discovery_bench::redis_log
