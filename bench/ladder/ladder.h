// discovery-ladder: the fan-out load ladder of issue 15, measuring discoveryd from outside.
// One file per job: main.cc (flags, rung loop, JSON), etcd_load.cc (bulk load and the paced
// churn writer on bare etcd stubs), sse_fleet.cc (epoll SSE subscribers, many per thread),
// replicas.cc (discoveryd processes, /proc figures, discover timing), report.cc (latency,
// missed, the rung's JSON line).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "child_process.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"

namespace ladder {

using Json = nlohmann::ordered_json;

// CLOCK_MONOTONIC ns: system-wide, so times taken in different processes compare.
int64_t NowNs();
// Set by the run-timeout watchdog (and SIGINT/SIGTERM): every wait gives up.
extern std::atomic<bool> g_abort;

// ---- etcd_load.cc --------------------------------------------------------------------------
std::shared_ptr<grpc::Channel> EtcdChannel(const std::string& endpoint);
// Group name of instance i: "g<i / group_size>".
std::string GroupOf(int i, int group_size);
// The library's JSON (EncodeInstance) of instance i, ~450 bytes, meta.seq = `seq`.
std::string InstanceValue(int i, int group_size, int64_t seq);
std::string InstanceKey(const std::string& prefix, int i);
// Pipelined puts of instances [0, n) (no lease), `inflight` outstanding.
absl::Status LoadInstances(const std::shared_ptr<grpc::Channel>& ch, const std::string& prefix,
                           int n, int group_size, int inflight);
// Deletes every key under `prefix`, and discoveryd's epoch key beside it ("/p/" -> "/p.epoch").
absl::Status DeletePrefix(const std::shared_ptr<grpc::Channel>& ch, const std::string& prefix);

struct ChurnResult {
  struct Put {
    int64_t sent_ns = 0;
    int64_t ack_ns = 0;    // 0: failed
    int64_t revision = 0;  // etcd's revision of this put
    int group = 0;         // group index of the key
  };
  std::vector<Put> puts;
  int errors = 0;
  int64_t t0 = 0, t_end = 0;  // schedule start, last ack
  int64_t max_lag_ns = 0;     // worst (send - due)
};
// `rate` puts/s for `seconds` on keys spread over every group (stride through [0, n)),
// each put's value carries meta.seq = seq_base + seq. Blocks until every put completed.
ChurnResult RunChurn(const std::shared_ptr<grpc::Channel>& ch, const std::string& prefix, int n,
                     int group_size, int rate, double seconds, int inflight, int64_t seq_base);

// ---- sse_fleet.cc --------------------------------------------------------------------------
struct SubSpec {
  int port = 0;
  int replica = 0;
  int group = 0;
};

// S SSE subscribers over `threads` epoll loops (each owns every threads-th subscriber).
class SseFleet {
 public:
  struct Record {
    int32_t sub;
    int64_t revision;
    int64_t recv_ns;
  };
  SseFleet(std::vector<SubSpec> subs, int threads, int connect_inflight);
  ~SseFleet();
  void Start();  // connects, at most connect_inflight not yet synced per fleet at once
  void Stop();   // closes every connection, joins the threads

  int synced() const { return synced_.load(); }
  int failed() const { return failed_.load(); }  // refused, non-200, closed before synced
  int disconnected() const { return disconnected_.load(); }  // closed after synced
  int resets() const { return resets_.load(); }
  int64_t init_frames() const { return init_frames_.load(); }
  int64_t delivered() const { return delivered_.load(); }  // update/remove frames recorded
  // Per subscriber: synced_ns - connect start (0 if not synced).
  std::vector<int64_t> AttachNs() const;
  int64_t start_ns() const { return start_ns_; }
  // Recording of update/remove frames on/off; TakeRecords() drains what was recorded.
  void SetRecording(bool on);
  // Every subscriber of `replica` connects again, to `port`, at most `inflight` not yet synced
  // at once (a restarted replica's reconnect storm). Those still open are closed first (and
  // counted as disconnected). synced() counts the new syncs on top of the old ones.
  struct ReconnectRequest {
    int replica = 0, port = 0, inflight = 1;
  };
  void Reconnect(int replica, int port, int inflight);
  std::vector<Record> TakeRecords();
  std::string first_error() const;
  std::vector<pid_t> thread_ids() const;

 private:
  struct Loop;
  void Run(Loop* loop);

  std::vector<SubSpec> subs_;
  int connect_inflight_;
  std::vector<std::unique_ptr<Loop>> loops_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> recording_{false};
  std::atomic<int> synced_{0}, failed_{0}, disconnected_{0}, resets_{0};
  std::atomic<int64_t> init_frames_{0}, delivered_{0};
  int64_t start_ns_ = 0;
  std::vector<std::atomic<int64_t>> attach_ns_;
  mutable std::mutex err_mu_;
  std::string first_error_;
};

// ---- replicas.cc ---------------------------------------------------------------------------
struct Replica {
  int port = 0;
  int64_t spawn_ns = 0;
  int64_t synced_ns = 0;  // first /healthz 200
  std::unique_ptr<discovery::testing::ChildProcess> proc;
  pid_t pid() const { return proc ? proc->pid() : -1; }
};
// Starts discoveryd on a free port (SIGKILLed with its ChildProcess; spawn from main thread).
absl::StatusOr<Replica> SpawnReplica(const std::string& binary, const std::string& endpoint,
                                     const std::string& prefix, const std::string& log_dir,
                                     int index);
// Polls /healthz of every replica until each answers 200 (records synced_ns).
absl::Status WaitSynced(std::vector<Replica>& replicas, double timeout_s);
// SIGTERM, up to 5 s to exit, then SIGKILL; reaped.
void StopReplica(Replica& r);
// /proc/<pid>/status VmRSS in KiB (-1 if gone).
int64_t RssKib(pid_t pid);
// utime + stime of /proc/<pid>/stat (or /proc/<pid>/task/<tid>/stat) in seconds.
double CpuSeconds(pid_t pid, pid_t tid = 0);
// Per thread of `pid`: tid -> (comm, utime+stime seconds).
std::map<pid_t, std::pair<std::string, double>> ThreadCpu(pid_t pid);
// GET /sd/v1/instances?type=world on `port`: wall ms and body bytes (ms < 0 on failure).
struct Discover {
  double ms = -1;
  size_t bytes = 0;
  int status = 0;
};
Discover TimedDiscover(int port, double timeout_s);
std::string LoadAvg();

// ---- rung.cc -------------------------------------------------------------------------------
struct Config {
  std::string discoveryd;  // binary
  std::string etcd_url;    // empty: start one etcd per size on /dev/shm
  std::string work_dir;    // logs
  std::vector<int> churn{200, 1000, 2000};
  double seconds = 20;            // churn per rate
  double drain_s = 10;            // deadline for deliveries after the last ack
  double attach_timeout_s = 120;  // all subscribers init + synced
  double sync_timeout_s = 120;
  int group_size = 100;
  int writer_inflight = 64;
  int load_inflight = 128;
  int sub_threads = 1;
  int connect_inflight = 256;
  bool restart_storm = false;  // after the churn rates: restart replica 0 (storm.cc)
  int storm_inflight = 1024;   // its subscribers reconnecting (not yet synced) at once
  int storm_rate = 200;        // churn during the restart and storm
  double storm_seconds = 0;    // 0: sync time of the first start + 20 s
  int64_t nofile_soft = 0, nofile_hard = 0;
};
struct Size {
  std::string name;
  int instances = 0;
  int subscribers = 0;
  int replicas = 1;
  std::vector<int> churn;  // empty: Config::churn
};
// Runs one size (fresh etcd unless etcd_url), one JSON line per churn rate on stdout.
// Returns the lines; an error when the setup failed outright.
absl::StatusOr<std::vector<Json>> RunSize(const Config& cfg, const Size& size);

// ---- storm.cc ------------------------------------------------------------------------------
struct StormInput {
  const Config* cfg = nullptr;
  const Size* size = nullptr;
  const Json* base = nullptr;  // the size's setup figures
  const std::vector<SubSpec>* subs = nullptr;
  std::shared_ptr<grpc::Channel> channel;
  std::string endpoint, prefix;
  int64_t seq_base = 1;
};
// Restarts replica 0 (reps[0] is the new process after) under churn and reconnects its
// subscribers at once: one JSON line ("<size>@storm").
absl::StatusOr<Json> RunRestartStorm(const StormInput& in, std::vector<Replica>& reps,
                                     SseFleet& fleet);

// ---- report.cc -----------------------------------------------------------------------------
struct Delivery {
  int64_t expected = 0;
  int64_t matched = 0;
  int64_t missed = 0;
  int64_t unexpected = 0;  // frames of revisions not in this churn, or duplicates
  std::vector<double> latency_ms;
};
// Matches recorded frames against the churn's puts: subscriber s watches group subs[s].group.
Delivery Match(const ChurnResult& churn, const std::vector<SubSpec>& subs,
               const std::vector<SseFleet::Record>& records);
// Expected deliveries (sum over puts of subscribers watching the put's group).
int64_t ExpectedDeliveries(const ChurnResult& churn, const std::vector<SubSpec>& subs);
double Pct(std::vector<double>& v, double p);  // sorts v
// {"p50","p99","p99.9","max"} of `ms` (sorts it), rounded to the microsecond.
Json LatencyJson(std::vector<double>& ms);
double R3(double v);
// The keys a rung's JSON line must carry (the smoke checks them).
const std::vector<std::string>& RequiredKeys();

}  // namespace ladder
