// The watcher's cache at scale against a real etcd: one change in a large type publishes a
// snapshot that shares the unchanged instances' storage with the previous one (O(changed)
// publishing; the old cache copied the whole type's vector per batch), and the published
// views stay equal to etcd after random churn.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "discovery/watcher.h"
#include "etcd/client.h"
#include "etcd_harness.h"

namespace discovery {
namespace {

using testing::EtcdCluster;
using testing::TimeScale;
using testing::WaitUntil;
namespace pb = ::etcdserverpb;

constexpr int kInstances = 5000;

std::string Value(int i, int version) {
  Instance in;
  in.instance_id = absl::StrFormat("id%06d", i);
  in.type = "world";
  in.group = absl::StrFormat("g-%03d", i / 100);
  in.hostname = "h";
  in.weight = version;
  return EncodeInstance(in);
}
std::string Key(int i) { return absl::StrFormat("/services/world/id%06d", i); }

class WatcherCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto c = EtcdCluster::Start({.members = 1});
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = *std::move(c);
    EtcdOptions o;
    o.endpoints = cluster_->ClientEndpoints();
    o.call_timeout = TimeScale(absl::Seconds(10));
    auto conn = Connection::Create(o);
    ASSERT_TRUE(conn.ok()) << conn.status();
    conn_ = *conn;
    for (int t = 0; t < kInstances / 100; ++t) {
      pb::TxnRequest txn;
      for (int i = t * 100; i < (t + 1) * 100; ++i) {
        pb::PutRequest* put = txn.add_success()->mutable_request_put();
        put->set_key(Key(i));
        put->set_value(Value(i, 0));
      }
      ASSERT_TRUE(conn_->client()->Txn(txn).ok());
    }
    auto w = Watcher::Create({.connection = conn_});
    ASSERT_TRUE(w.ok()) << w.status();
    watcher_ = *std::move(w);
    ASSERT_TRUE(watcher_->WaitForSync(TimeScale(absl::Seconds(30))).ok());
    ASSERT_EQ(watcher_->snapshot()->size(), static_cast<size_t>(kInstances));
  }
  int64_t Put(int i, int version) {
    pb::PutRequest put;
    put.set_key(Key(i));
    put.set_value(Value(i, version));
    auto r = conn_->client()->Put(put);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->header().revision() : 0;
  }
  SnapshotPtr SnapshotAt(int64_t revision) {
    EXPECT_TRUE(WaitUntil([&] { return watcher_->snapshot()->revision() >= revision; },
                          TimeScale(absl::Seconds(10))));
    return watcher_->snapshot();
  }

  std::unique_ptr<EtcdCluster> cluster_;
  std::shared_ptr<Connection> conn_;
  std::unique_ptr<Watcher> watcher_;
};

TEST_F(WatcherCacheTest, OneChangeSharesTheRestOfTheTypeWithThePreviousSnapshot) {
  SnapshotPtr before = watcher_->snapshot();
  SnapshotPtr after = SnapshotAt(Put(2500, 1));
  ASSERT_EQ(after->revision(), before->revision() + 1);
  const auto& a = before->OfType("world");
  const auto& b = after->OfType("world");
  ASSERT_EQ(a.size(), b.size());
  size_t moved = 0;  // slots whose storage is not shared with the previous snapshot
  for (size_t i = 0; i < a.size(); ++i) moved += &a[i] != &b[i];
  EXPECT_LE(moved, 512u) << "a publish must copy only the chunk it changed";
  EXPECT_EQ(b[2500]->weight, 1);
  EXPECT_EQ(a[2500]->weight, 0);  // the previous snapshot is untouched
}

TEST_F(WatcherCacheTest, ViewsEqualEtcdAfterRandomChurn) {
  std::mt19937 rng(7);
  int64_t last = 0;
  std::map<std::string, int> want;  // instance id -> weight
  for (int i = 0; i < kInstances; ++i) want[absl::StrFormat("id%06d", i)] = 0;
  for (int k = 0; k < 300; ++k) {
    const int i = static_cast<int>(rng() % (kInstances + 200));
    const std::string id = absl::StrFormat("id%06d", i);
    if (rng() % 4 == 0) {
      pb::DeleteRangeRequest del;
      del.set_key(Key(i));
      auto r = conn_->client()->DeleteRange(del);
      ASSERT_TRUE(r.ok());
      last = r->header().revision();
      want.erase(id);
    } else {
      last = Put(i, k + 1);
      want[id] = k + 1;
    }
  }
  SnapshotPtr snap = SnapshotAt(last);
  ASSERT_EQ(snap->size(), want.size());
  std::map<std::string, int> got;
  std::string previous_key;
  for (const InstancePtr& in : snap->OfType("world")) {
    const std::string key = absl::StrCat(in->group, "/", in->instance_id);
    EXPECT_LT(previous_key, key) << "sorted by (group, instanceId)";
    previous_key = key;
    got[in->instance_id] = in->weight;
  }
  EXPECT_EQ(got, want);
  EXPECT_EQ(snap->Select({.type = "world", .group = "g-010"}).size(),
            static_cast<size_t>(std::count_if(want.begin(), want.end(), [](const auto& kv) {
              return kv.first >= "id001000" && kv.first < "id001100";
            })));
}

}  // namespace
}  // namespace discovery
