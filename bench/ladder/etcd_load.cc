// discovery-ladder: instances written straight into etcd on bare generated stubs (no library
// client in the write path): a pipelined bulk load and the paced churn writer, whose every put
// records its send time, ack time and etcd revision.
#include <time.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "discovery/instance.h"
#include "etcd/etcdserverpb/rpc.grpc.pb.h"
#include "ladder.h"
#include "sample_instance.h"

namespace ladder {

namespace pb = ::etcdserverpb;

std::atomic<bool> g_abort{false};

int64_t NowNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

std::shared_ptr<grpc::Channel> EtcdChannel(const std::string& endpoint) {
  std::string target = endpoint;
  if (absl::StartsWith(target, "http://")) target = target.substr(7);
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetMaxReceiveMessageSize(64 * 1024 * 1024);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

std::string GroupOf(int i, int group_size) { return absl::StrCat("g", i / group_size); }

std::string InstanceKey(const std::string& prefix, int i) {
  return absl::StrFormat("%sworld/01JCYFZQ7D4NB4MZ5S6Z%06d", prefix, i);
}

std::string InstanceValue(int i, int group_size, int64_t seq) {
  // The benchmarks' sample instance, in the ladder's groups, stamped with the churn sequence.
  discovery::Instance in = discovery_bench::SampleInstance(i);
  in.group = GroupOf(i, group_size);
  in.meta = {{"seq", absl::StrCat(seq)}, {"build", "2026.12.01-r4821"}};
  in.updated_at = absl::FromUnixSeconds(1700000000 + seq);
  return discovery::EncodeInstance(in);
}

namespace {

// Up to `inflight` async puts outstanding; Issue() blocks for a free slot.
class Pipeline {
 public:
  using Done = std::function<void(int tag, const grpc::Status&, const pb::PutResponse&)>;
  Pipeline(const std::shared_ptr<grpc::Channel>& ch, int inflight, Done done)
      : kv_(pb::KV::NewStub(ch)),
        slots_(static_cast<size_t>(std::max(1, inflight))),
        done_(std::move(done)) {
    for (int i = static_cast<int>(slots_.size()) - 1; i >= 0; --i) free_.push_back(i);
  }
  // Returns false (and issues nothing) on abort.
  bool Issue(int tag, std::string key, std::string value, int64_t* issued_ns = nullptr) {
    int s;
    {
      std::unique_lock<std::mutex> lock(mu_);
      while (free_.empty()) {
        if (g_abort.load()) return false;
        cv_.wait_for(lock, std::chrono::milliseconds(100));
      }
      s = free_.back();
      free_.pop_back();
    }
    Slot& slot = slots_[static_cast<size_t>(s)];
    slot.tag = tag;
    slot.req.set_key(std::move(key));
    slot.req.set_value(std::move(value));
    slot.resp.Clear();
    slot.ctx = std::make_unique<grpc::ClientContext>();
    slot.ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    if (issued_ns != nullptr) *issued_ns = NowNs();
    kv_->async()->Put(slot.ctx.get(), &slot.req, &slot.resp, [this, s](grpc::Status st) {
      Slot& sl = slots_[static_cast<size_t>(s)];
      done_(sl.tag, st, sl.resp);
      std::lock_guard<std::mutex> lock(mu_);
      free_.push_back(s);
      cv_.notify_all();
    });
    return true;
  }
  void Drain() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return free_.size() == slots_.size(); });
  }

 private:
  struct Slot {
    std::unique_ptr<grpc::ClientContext> ctx;
    pb::PutRequest req;
    pb::PutResponse resp;
    int tag = 0;
  };
  std::unique_ptr<pb::KV::Stub> kv_;
  std::vector<Slot> slots_;
  Done done_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<int> free_;
};

void SleepUntil(int64_t due) {
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(due / 1000000000);
  ts.tv_nsec = static_cast<long>(due % 1000000000);
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) != 0) {
  }
}

}  // namespace

absl::Status LoadInstances(const std::shared_ptr<grpc::Channel>& ch, const std::string& prefix,
                           int n, int group_size, int inflight) {
  std::mutex mu;
  std::string first_error;
  std::atomic<int> errors{0};
  Pipeline pipe(ch, inflight, [&](int, const grpc::Status& st, const pb::PutResponse&) {
    if (st.ok()) return;
    if (errors.fetch_add(1) == 0) {
      std::lock_guard<std::mutex> lock(mu);
      first_error = st.error_message();
    }
  });
  for (int i = 0; i < n && errors.load() == 0; ++i) {
    if (!pipe.Issue(i, InstanceKey(prefix, i), InstanceValue(i, group_size, 0))) break;
  }
  pipe.Drain();
  if (g_abort.load()) return absl::DeadlineExceededError("aborted during load");
  if (errors.load() > 0) {
    return absl::UnavailableError(absl::StrCat(errors.load(), " puts failed: ", first_error));
  }
  return absl::OkStatus();
}

absl::Status DeletePrefix(const std::shared_ptr<grpc::Channel>& ch, const std::string& prefix) {
  auto kv = pb::KV::NewStub(ch);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  pb::DeleteRangeRequest req;
  req.set_key(prefix);
  std::string end = prefix;
  end.back() = static_cast<char>(end.back() + 1);
  req.set_range_end(end);
  pb::DeleteRangeResponse resp;
  grpc::Status st = kv->DeleteRange(&ctx, req, &resp);
  if (!st.ok()) return absl::UnavailableError(st.error_message());
  grpc::ClientContext ctx2;
  ctx2.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  pb::DeleteRangeRequest epoch;
  epoch.set_key(absl::StrCat(prefix.substr(0, prefix.size() - 1), ".epoch"));
  st = kv->DeleteRange(&ctx2, epoch, &resp);
  return st.ok() ? absl::OkStatus() : absl::UnavailableError(st.error_message());
}

ChurnResult RunChurn(const std::shared_ptr<grpc::Channel>& ch, const std::string& prefix, int n,
                     int group_size, int rate, double seconds, int inflight, int64_t seq_base) {
  ChurnResult r;
  rate = std::max(1, rate);
  const int total = std::max(1, static_cast<int>(rate * seconds));
  r.puts.resize(static_cast<size_t>(total));
  std::mutex mu;
  Pipeline pipe(ch, inflight, [&](int seq, const grpc::Status& st, const pb::PutResponse& resp) {
    const int64_t done = NowNs();
    std::lock_guard<std::mutex> lock(mu);
    ChurnResult::Put& p = r.puts[static_cast<size_t>(seq)];
    if (st.ok()) {
      p.ack_ns = done;
      p.revision = resp.header().revision();
      r.t_end = std::max(r.t_end, done);
    } else {
      ++r.errors;
    }
  });
  // A prime stride visits every key (n is not a multiple of it) and spreads consecutive puts
  // over groups; the offset moves each churn to other keys.
  const int64_t stride = 7919;
  const int64_t period = static_cast<int64_t>(1e9 / rate);
  r.t0 = NowNs();
  for (int seq = 0; seq < total && !g_abort.load(); ++seq) {
    const int64_t due = r.t0 + period * seq;
    if (NowNs() < due) SleepUntil(due);
    const int i = static_cast<int>((seq_base + seq * stride) % n);
    std::string value = InstanceValue(i, group_size, seq_base + seq);
    int64_t issued = 0;
    {
      std::lock_guard<std::mutex> lock(mu);
      r.puts[static_cast<size_t>(seq)].group = i / group_size;
    }
    if (!pipe.Issue(seq, InstanceKey(prefix, i), std::move(value), &issued)) break;
    std::lock_guard<std::mutex> lock(mu);
    r.puts[static_cast<size_t>(seq)].sent_ns = issued;
    r.max_lag_ns = std::max(r.max_lag_ns, issued - due);
  }
  pipe.Drain();
  return r;
}

}  // namespace ladder
