// discoveryd never serves an unsynced cache, and SSE resume / epochs (label etcd): a real etcd
// from the harness, discoveryd spawned as a process, instances written straight to etcd with
// the library's internal client (fast, no leases unless a test wants one).
//
// The SSE client here is raw (RawSse): it reads frame by frame and can drop the connection at
// any frame, and a Model applies frames like the dashboard / a browser's EventSource does
// (the last `id:` seen is what it reconnects with; a fresh init replaces its state).
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "discovery/etcd.h"
#include "discovery/instance.h"
#include "etcd/client.h"
#include "gateway_fixture.h"
#include "http_test_client.h"
#include "raw_sse.h"

namespace discovery::testing {
namespace {

namespace pb = ::etcdserverpb;

std::string InstanceValue(const std::string& id, size_t filler = 0) {
  Instance in = WorldInstance(id);
  if (filler > 0) in.meta["filler"] = std::string(filler, 'x');
  return EncodeInstance(in);
}

class SseTest : public DiscoverydTest {
 protected:
  void SetUp() override {
    DiscoverydTest::SetUp();
    if (HasFatalFailure()) return;
    Connect();
  }
  void Connect() {
    EtcdOptions o;
    o.endpoints = cluster_->ClientEndpoints();
    auto conn = Connection::Create(o);
    ASSERT_TRUE(conn.ok()) << conn.status();
    conn_ = *std::move(conn);
  }
  etcd::Client& client() { return *conn_->client(); }

  void Put(const std::string& id, size_t filler = 0, int64_t lease = 0) {
    pb::PutRequest req;
    req.set_key("/services/world/" + id);
    req.set_value(InstanceValue(id, filler));
    req.set_lease(lease);
    auto r = client().Put(req);
    ASSERT_TRUE(r.ok()) << r.status();
  }
  void Delete(const std::string& id) {
    pb::DeleteRangeRequest req;
    req.set_key("/services/world/" + id);
    ASSERT_TRUE(client().DeleteRange(req).ok());
  }
  // One revision putting every id.
  void TxnPut(const std::vector<std::string>& ids) {
    pb::TxnRequest txn;
    for (const std::string& id : ids) {
      auto* put = txn.add_success()->mutable_request_put();
      put->set_key("/services/world/" + id);
      put->set_value(InstanceValue(id));
    }
    auto r = client().Txn(txn);
    ASSERT_TRUE(r.ok()) << r.status();
  }
  // etcd's truth: "world/<id>" for every key under /services/.
  std::set<std::string> EtcdKeys() {
    pb::RangeRequest req;
    req.set_key("/services/");
    req.set_range_end("/services0");
    req.set_keys_only(true);
    auto r = client().Range(req);
    EXPECT_TRUE(r.ok()) << r.status();
    std::set<std::string> out;
    if (!r.ok()) return out;
    for (const auto& kv : r->kvs()) out.insert(kv.key().substr(std::string("/services/").size()));
    return out;
  }
  int DiscoverCount(int port) {
    Response r = Must(Http(port, "GET", "/sd/v1/instances?type=world"));
    return r.status == 200 ? static_cast<int>(r.Json()["instances"].size()) : -1;
  }
  // Reads frames into `m` until it shows exactly etcd's keys (after a synced on this
  // connection unless `synced_already`).
  ::testing::AssertionResult ReadUntilEtcdState(RawSse& s, Model& m, bool synced_already = false) {
    std::set<std::string> want = EtcdKeys();
    bool synced = synced_already;
    absl::Time deadline = absl::Now() + TimeScale(absl::Seconds(10));
    while (absl::Now() < deadline) {
      if (synced && m.Keys() == want) return ::testing::AssertionSuccess();
      auto f = s.Next(absl::Milliseconds(500));
      if (!f) {
        want = EtcdKeys();
        continue;
      }
      m.Apply(*f);
      synced = synced || f->event == "synced";
    }
    std::string diff;
    for (const auto& k : m.Keys())
      if (!want.count(k)) absl::StrAppend(&diff, " ghost:", k);
    for (const auto& k : want)
      if (!m.state.count(k)) absl::StrAppend(&diff, " missing:", k);
    return ::testing::AssertionFailure()
           << "subscriber state != etcd (synced=" << synced << "):" << diff;
  }

  std::shared_ptr<Connection> conn_;
};

// etcd is SIGSTOPped while discoveryd starts: discover answers 503 + Retry-After (never an
// empty 200) and SSE sends nothing until the first sync; then the full set, at once.
TEST_F(SseTest, StartupNeverServesAnUnsyncedCache) {
  constexpr int kInstances = 200;
  for (int i = 0; i < kInstances; ++i) Put(absl::StrCat("w-", i));
  ASSERT_TRUE(cluster_->Stop(0).ok());
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  Response list = Must(Http(gw.port, "GET", "/sd/v1/instances?type=world"));
  EXPECT_EQ(list.status, 503) << list.body;
  EXPECT_EQ(list.headers["retry-after"], "1");
  EXPECT_EQ(list.Json()["error"]["code"], "unavailable") << list.body;
  EXPECT_EQ(list.Json()["error"]["message"], "watch cache not synced yet") << list.body;
  Response one = Must(Http(gw.port, "GET", "/sd/v1/instances/w-1?type=world"));
  EXPECT_EQ(one.status, 503) << one.body;
  // A heartbeat that would look its type up in the cache must not hear "not found".
  Response hb = Must(Http(gw.port, "POST", "/sd/v1/instances/w-1/heartbeat"));
  EXPECT_EQ(hb.status, 503) << hb.body;
  auto sse = SseClient::Connect(gw.port, "/sd/v1/subscribe?type=world");
  ASSERT_TRUE(sse.ok()) << sse.status();
  EXPECT_TRUE(
      (*sse)->WaitFor([&](const auto&) { return (*sse)->status() == 200; }, absl::Seconds(5)));
  // Still unsynced: more 503s, and not a single SSE event.
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(Must(Http(gw.port, "GET", "/sd/v1/instances")).status, 503);
  }
  EXPECT_TRUE((*sse)->Events().empty()) << (*sse)->Events()[0].event;

  ASSERT_TRUE(cluster_->Cont(0).ok());
  std::vector<int> answers;
  ASSERT_TRUE(WaitUntil(
      [&] {
        int n = DiscoverCount(gw.port);
        answers.push_back(n);
        return n >= 0;
      },
      absl::Seconds(20)));
  for (int n : answers) EXPECT_TRUE(n == -1 || n == kInstances) << "discover answered " << n;
  ASSERT_TRUE((*sse)->WaitFor(
      [](const std::vector<SseEvent>& ev) {
        return HasEvent(ev, "synced", [](auto&) { return true; });
      },
      absl::Seconds(10)));
  int inits = 0;
  for (const SseEvent& e : (*sse)->Events()) {
    if (e.event == "synced") {
      EXPECT_EQ(e.data["instances"], kInstances);
      break;
    }
    EXPECT_EQ(e.event, "init");
    ++inits;
  }
  EXPECT_EQ(inits, kInstances) << "synced before the cache was complete";
}

// A subscriber dropped in the middle of a large init reconnects with the last id it saw and
// ends with exactly etcd's state (a partial init must never be "resumed").
TEST_F(SseTest, DropInTheMiddleOfInitThenReconnect) {
  constexpr int kInstances = 300;
  for (int i = 0; i < kInstances; ++i) Put(absl::StrCat("w-", i), 2048);
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  ASSERT_TRUE(WaitUntil([&] { return DiscoverCount(gw.port) == kInstances; }, absl::Seconds(10)));
  Model m;
  {
    auto s = RawSse::Open(gw.port, "");
    ASSERT_NE(s, nullptr);
    for (int i = 0; i < 100; ++i) {
      auto f = s->Next();
      ASSERT_TRUE(f.has_value()) << "frame " << i;
      ASSERT_EQ(f->event, "init");
      EXPECT_EQ(f->id, "") << "init frames carry no id";
      m.Apply(*f);
    }
  }  // dropped after 100 of 300 init frames
  for (int i = 0; i < 50; ++i) Delete(absl::StrCat("w-", i));
  for (int i = 0; i < 20; ++i) Put(absl::StrCat("late-", i));
  auto s = RawSse::Open(gw.port, m.last_id);
  ASSERT_NE(s, nullptr);
  m.NewConnection();
  EXPECT_TRUE(ReadUntilEtcdState(*s, m)) << "reconnected with id '" << m.last_id << "'";
  EXPECT_FALSE(m.resumed);
}

// A subscriber dropped in the middle of one revision's events (a Txn putting 3 keys, then a
// lease revoke removing 3 keys) resumes from the last complete revision: nothing missing, no
// ghosts.
TEST_F(SseTest, DropInTheMiddleOfAMultiKeyRevisionThenResume) {
  for (int i = 0; i < 5; ++i) Put(absl::StrCat("base-", i));
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  Model m;
  auto s = RawSse::Open(gw.port, "");
  ASSERT_NE(s, nullptr);
  ASSERT_TRUE(ReadUntilEtcdState(*s, m));
  // A revision the client sees in full: the resume point.
  Put("single");
  for (;;) {
    auto f = s->Next();
    ASSERT_TRUE(f.has_value());
    m.Apply(*f);
    if (f->event == "update") break;
  }
  ASSERT_FALSE(m.last_id.empty());

  // 1. Txn putting 3 keys: the client drops after the first of its 3 frames.
  TxnPut({"txn-a", "txn-b", "txn-c"});
  auto f = s->Next();
  ASSERT_TRUE(f.has_value());
  ASSERT_EQ(f->event, "update");
  m.Apply(*f);
  s.reset();
  s = RawSse::Open(gw.port, m.last_id);
  ASSERT_NE(s, nullptr);
  m.NewConnection();
  EXPECT_TRUE(ReadUntilEtcdState(*s, m)) << "resumed from " << m.last_id;
  EXPECT_TRUE(m.resumed) << "expected a resume from " << m.last_id;

  // 2. A lease with 3 keys revoked: the client drops after the first remove.
  auto lease = client().LeaseGrant([] {
    pb::LeaseGrantRequest r;
    r.set_ttl(60);
    return r;
  }());
  ASSERT_TRUE(lease.ok()) << lease.status();
  for (const char* id : {"leased-a", "leased-b", "leased-c"}) Put(id, 0, lease->id());
  ASSERT_TRUE(ReadUntilEtcdState(*s, m, true));
  pb::LeaseRevokeRequest revoke;
  revoke.set_id(lease->id());
  ASSERT_TRUE(client().LeaseRevoke(revoke).ok());
  f = s->Next();
  ASSERT_TRUE(f.has_value());
  ASSERT_EQ(f->event, "remove");
  m.Apply(*f);
  s.reset();
  s = RawSse::Open(gw.port, m.last_id);
  ASSERT_NE(s, nullptr);
  m.NewConnection();
  EXPECT_TRUE(ReadUntilEtcdState(*s, m)) << "resumed from " << m.last_id;
  EXPECT_TRUE(m.resumed) << "expected a resume from " << m.last_id;
}

// Every replica serves the same epoch (kept in etcd beside the prefix); a Last-Event-ID of
// another epoch, of no epoch (a plain number from before epochs) or garbage gets a fresh init.
TEST_F(SseTest, EpochIsSharedAndForeignIdsGetAFreshInit) {
  Put("one");
  GatewayProc a = StartGateway();
  GatewayProc b = StartGateway();
  ASSERT_GT(a.port, 0);
  ASSERT_GT(b.port, 0);
  auto synced_of = [](int port, const std::string& last_id) -> std::optional<Frame> {
    auto s = RawSse::Open(port, last_id);
    if (s == nullptr) return std::nullopt;
    std::vector<Frame> frames;
    while (auto f = s->Next()) {
      if (f->event == "synced") {
        f->data["inits"] = static_cast<int>(frames.size());
        return f;
      }
      frames.push_back(*f);
    }
    return std::nullopt;
  };
  auto sa = synced_of(a.port, "");
  auto sb = synced_of(b.port, "");
  ASSERT_TRUE(sa && sb);
  const std::string epoch = EpochOfId(sa->id);
  ASSERT_EQ(epoch.size(), 8u) << sa->id;
  EXPECT_EQ(EpochOfId(sb->id), epoch) << "replicas disagree on the epoch";
  json stored = Value("/services.epoch");
  EXPECT_EQ(stored["epoch"], epoch) << stored.dump();

  const int64_t rev = RevisionOfId(sa->id);
  const std::string foreign = epoch == "deadbeef" ? "cafebabe" : "deadbeef";
  for (const std::string& id : {absl::StrCat(foreign, ".", rev), std::to_string(rev),
                                std::string("x.y.z"), absl::StrCat(epoch, ".", rev + 1000000)}) {
    auto s = synced_of(a.port, id);
    ASSERT_TRUE(s.has_value()) << id;
    EXPECT_EQ(s->data["resumed"], false) << id;
    EXPECT_EQ(s->data["inits"], 1) << id;
  }
  // The same epoch resumes on the replica that issued the id.
  {
    auto s = synced_of(a.port, sa->id);
    ASSERT_TRUE(s.has_value());
    EXPECT_EQ(s->data["resumed"], true);
    EXPECT_EQ(s->data["inits"], 0);
  }
  // An event id resumes on the other replica too, once that one has seen the event.
  auto live = RawSse::Open(a.port, "");
  ASSERT_NE(live, nullptr);
  Model m;
  ASSERT_TRUE(ReadUntilEtcdState(*live, m));
  Put("two");
  ASSERT_TRUE(ReadUntilEtcdState(*live, m, true));
  ASSERT_EQ(EpochOfId(m.last_id), epoch);
  ASSERT_TRUE(WaitUntil([&] { return DiscoverCount(b.port) == 2; }, absl::Seconds(5)));
  auto s = synced_of(b.port, m.last_id);
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->data["resumed"], true) << m.last_id;
  EXPECT_EQ(s->data["inits"], 0);
}

// etcd wiped and restarted (new cluster id, revisions start over): live subscribers get
// `reset`, then the new state, with no ghost of the old one; the epoch is replaced in etcd.
TEST_F(SseTest, WipeSendsResetThenTheNewStateWithoutGhosts) {
  for (int i = 0; i < 20; ++i) Put(absl::StrCat("old-", i));
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  Model m;
  auto s = RawSse::Open(gw.port, "");
  ASSERT_NE(s, nullptr);
  ASSERT_TRUE(ReadUntilEtcdState(*s, m));
  const std::string old_epoch = EpochOfId(m.last_id);
  ASSERT_FALSE(old_epoch.empty());

  ASSERT_TRUE(cluster_->WipeAndRestartAll().ok());
  conn_.reset();
  Connect();
  Put("new-1");
  Put("new-2");
  EXPECT_TRUE(ReadUntilEtcdState(*s, m));
  EXPECT_EQ(m.resets, 1);
  EXPECT_EQ(m.Keys(), (std::set<std::string>{"world/new-1", "world/new-2"}));
  const std::string new_epoch = EpochOfId(m.last_id);
  EXPECT_NE(new_epoch, old_epoch);
  json stored = Value("/services.epoch");
  EXPECT_EQ(stored["epoch"], new_epoch) << stored.dump();
  EXPECT_EQ(stored["replaces"], old_epoch) << stored.dump();
  // An id of the old history gets a fresh init.
  auto again = RawSse::Open(gw.port, absl::StrCat(old_epoch, ".", 1));
  ASSERT_NE(again, nullptr);
  Model m2;
  EXPECT_TRUE(ReadUntilEtcdState(*again, m2));
  EXPECT_FALSE(m2.resumed);
}

// Another replica replaced the epoch in etcd (it saw the history reset first): this replica's
// subscribers get `reset` and a fresh init under the new epoch, and resume ids of the old
// epoch no longer resume.
TEST_F(SseTest, EpochReplacedByAnotherReplicaResetsSubscribers) {
  Put("one");
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  Model m;
  auto s = RawSse::Open(gw.port, "");
  ASSERT_NE(s, nullptr);
  ASSERT_TRUE(ReadUntilEtcdState(*s, m));
  const std::string old_epoch = EpochOfId(m.last_id);
  const std::string fresh = old_epoch == "0badf00d" ? "0badcafe" : "0badf00d";
  ASSERT_TRUE(cluster_
                  ->Etcdctl({"put", "/services.epoch",
                             json({{"epoch", fresh}, {"replaces", old_epoch}}).dump()})
                  .ok());
  bool reset = false;
  for (auto f = s->Next(); f.has_value(); f = s->Next()) {
    m.Apply(*f);
    if (f->event == "reset") {
      reset = true;
      EXPECT_EQ(f->data["epoch"], fresh);
    }
    if (reset && f->event == "synced") break;
  }
  ASSERT_TRUE(reset);
  EXPECT_EQ(EpochOfId(m.last_id), fresh);
  EXPECT_EQ(m.Keys(), EtcdKeys());
  auto again = RawSse::Open(gw.port, absl::StrCat(old_epoch, ".", RevisionOfId(m.last_id)));
  ASSERT_NE(again, nullptr);
  Model m2;
  EXPECT_TRUE(ReadUntilEtcdState(*again, m2));
  EXPECT_FALSE(m2.resumed);
}

// The same-identity wipe (same cluster id, revisions start over at 1): the watch hub reports
// the revision going back, the Watcher confirms it and resets its history (OnHistoryReset).
TEST_F(SseTest, SameIdentityWipeSendsResetWithoutGhosts) {
  for (int i = 0; i < 20; ++i) Put(absl::StrCat("old-", i));
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  Model m;
  auto s = RawSse::Open(gw.port, "");
  ASSERT_NE(s, nullptr);
  ASSERT_TRUE(ReadUntilEtcdState(*s, m));
  const std::string old_epoch = EpochOfId(m.last_id);
  ASSERT_TRUE(cluster_->WipeAndRestartSameIdentity().ok());
  conn_.reset();
  Connect();
  Put("new-1");
  EXPECT_TRUE(ReadUntilEtcdState(*s, m));
  EXPECT_EQ(m.resets, 1);
  EXPECT_EQ(m.Keys(), (std::set<std::string>{"world/new-1"}));
  EXPECT_NE(EpochOfId(m.last_id), old_epoch);
}

}  // namespace
}  // namespace discovery::testing
