// Helpers shared by the etcd stream tests (auth_streams_test, stream_history_test): clients,
// puts, and a thread-safe recorder of the events a WatchHub watch delivers.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "etcd/client.h"
#include "etcd/watch_hub.h"
#include "harness_util.h"

namespace discovery::stream_test {

namespace pb = ::etcdserverpb;

inline std::shared_ptr<etcd::Client> MakeClient(const std::vector<std::string>& endpoints,
                                                const std::string& user = "",
                                                const std::string& password = "") {
  EtcdOptions o;
  o.endpoints = endpoints;
  o.user = user;
  o.password = password;
  o.call_timeout = testing::TimeScale(absl::Seconds(5));
  auto c = etcd::Client::Create(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : nullptr;
}

inline absl::StatusOr<int64_t> Put(etcd::Client& c, const std::string& k, const std::string& v) {
  pb::PutRequest req;
  req.set_key(k);
  req.set_value(v);
  auto r = c.Put(req);
  if (!r.ok()) return r.status();
  return r->header().revision();
}

// The store revision, read with a count-only Range of `key` (one the client may read).
inline absl::StatusOr<int64_t> Revision(etcd::Client& c, const std::string& key = "/services/") {
  pb::RangeRequest req;
  req.set_key(key);
  req.set_count_only(true);
  auto r = c.Range(req);
  if (!r.ok()) return r.status();
  return r->header().revision();
}

// What one watch delivered ("key=value" per PUT, in order) and how it ended.
class Recorder {
 public:
  etcd::WatchHub::Listener Listener() {
    etcd::WatchHub::Listener l;
    l.on_events = [this](const pb::WatchResponse& r) {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& ev : r.events()) {
        revisions_.push_back(ev.kv().mod_revision());
        seen_.push_back(ev.kv().key() + "=" + ev.kv().value());
      }
    };
    l.on_broken = [this](const absl::Status& why) {
      std::lock_guard<std::mutex> lock(mu_);
      broken_.push_back(why);
    };
    return l;
  }
  size_t count() {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_.size();
  }
  std::vector<std::string> seen() {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_;
  }
  std::vector<int64_t> revisions() {
    std::lock_guard<std::mutex> lock(mu_);
    return revisions_;
  }
  std::vector<absl::Status> broken() {
    std::lock_guard<std::mutex> lock(mu_);
    return broken_;
  }
  bool WaitForCount(size_t n, absl::Duration timeout) {
    return testing::WaitUntil([&] { return count() >= n; }, timeout);
  }
  bool WaitBroken(absl::Duration timeout) {
    return testing::WaitUntil([&] { return !broken().empty(); }, timeout);
  }

 private:
  std::mutex mu_;
  std::vector<std::string> seen_;
  std::vector<int64_t> revisions_;
  std::vector<absl::Status> broken_;
};

inline etcd::WatchHub::Spec PrefixSpec(const std::string& prefix, int64_t start_revision) {
  etcd::WatchHub::Spec spec;
  spec.key = prefix;
  spec.range_end = prefix.substr(0, prefix.size() - 1) + static_cast<char>(prefix.back() + 1);
  spec.start_revision = start_revision;
  return spec;
}

// Strictly increasing revisions: nothing delivered twice.
inline void ExpectIncreasing(const std::vector<int64_t>& revisions) {
  for (size_t i = 1; i < revisions.size(); ++i) {
    EXPECT_LT(revisions[i - 1], revisions[i]) << "event " << i << " delivered out of order/twice";
  }
}

}  // namespace discovery::stream_test
