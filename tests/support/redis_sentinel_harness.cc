#include "redis_sentinel_harness.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "harness_util.h"

namespace discovery::testing {

std::string CliField(const std::string& reply, const std::string& field) {
  std::vector<std::string> lines = absl::StrSplit(reply, '\n');
  for (size_t i = 0; i + 1 < lines.size(); ++i) {
    if (absl::StripAsciiWhitespace(lines[i]) == field) {
      return std::string(absl::StripAsciiWhitespace(lines[i + 1]));
    }
  }
  return "";
}

absl::StatusOr<std::unique_ptr<RedisSentinelGroup>> RedisSentinelGroup::Start(int replicas,
                                                                              int sentinels) {
  std::unique_ptr<RedisSentinelGroup> g(new RedisSentinelGroup());
  auto master = RedisServer::Start({});
  if (!master.ok()) return master.status();
  const int mport = (*master)->port();
  g->nodes_.push_back(*std::move(master));
  for (int i = 0; i < replicas; ++i) {
    auto r = RedisServer::Start({.replica_of = mport});
    if (!r.ok()) return r.status();
    g->nodes_.push_back(*std::move(r));
  }
  auto synced = [&] {
    for (size_t i = 1; i < g->nodes_.size(); ++i) {
      auto info = g->nodes_[i]->Cli({"INFO", "replication"});
      if (!info.ok() || info->find("master_link_status:up") == std::string::npos) return false;
    }
    return true;
  };
  if (!WaitUntil(synced, absl::Seconds(15))) {
    return absl::DeadlineExceededError("redis replicas did not reach master_link_status:up");
  }
  for (int i = 0; i < sentinels; ++i) {
    auto s = RedisServer::Start({.monitor = mport, .master_name = kMasterName});
    if (!s.ok()) return s.status();
    g->sentinels_.push_back(*std::move(s));
  }
  // Every sentinel knows the replicas and the other sentinels (hello messages every 2 s).
  auto known = [&] {
    for (auto& s : g->sentinels_) {
      auto m = s->Cli({"SENTINEL", "master", kMasterName});
      if (!m.ok()) return false;
      if (CliField(*m, "num-slaves") != absl::StrCat(replicas) ||
          CliField(*m, "num-other-sentinels") != absl::StrCat(sentinels - 1)) {
        return false;
      }
    }
    return true;
  };
  if (!WaitUntil(known, absl::Seconds(20), absl::Milliseconds(200))) {
    return absl::DeadlineExceededError(
        "the sentinels did not discover each other and the replicas");
  }
  return g;
}

std::string RedisSentinelGroup::Url() const {
  std::string hosts;
  for (const auto& s : sentinels_) {
    absl::StrAppend(&hosts, hosts.empty() ? "" : ",", "127.0.0.1:", s->port());
  }
  return absl::StrCat("redis+sentinel://", hosts, "/", kMasterName);
}

absl::StatusOr<int> RedisSentinelGroup::MasterPort(size_t i) {
  auto r = sentinels_[i]->Cli({"SENTINEL", "get-master-addr-by-name", kMasterName});
  if (!r.ok()) return r.status();
  std::vector<std::string> lines = absl::StrSplit(*r, '\n');
  int port = 0;
  if (lines.size() < 2 || !absl::SimpleAtoi(absl::StripAsciiWhitespace(lines[1]), &port)) {
    return absl::InternalError(absl::StrCat("SENTINEL get-master-addr-by-name: '", *r, "'"));
  }
  return port;
}

RedisServer* RedisSentinelGroup::NodeOnPort(int port) {
  for (auto& n : nodes_) {
    if (n->port() == port) return n.get();
  }
  return nullptr;
}

}  // namespace discovery::testing
