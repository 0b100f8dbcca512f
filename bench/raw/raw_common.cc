#include "raw_common.h"

#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace raw_bench {

std::shared_ptr<grpc::Channel> NewChannel(const std::string& endpoint) {
  std::string target = endpoint;
  if (absl::StartsWith(target, "http://")) target = target.substr(7);
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetMaxReceiveMessageSize(64 * 1024 * 1024);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

std::string InstanceId(int i) { return absl::StrFormat("01JCYFZQ7D4NB4MZ5S6Z%06d", i); }

namespace {

// Everything of the value up to and including `"meta":{`.
std::string Head(int i) {
  return absl::StrFormat(
      R"({"instanceId":"%s","type":"world","group":"kr-%d","hostname":"game-%d.kr.example.com",)"
      R"("publicIp":"123.45.%d.%d","privateIp":"10.0.%d.%d","ports":{"game":8001,"grpc":50051},)"
      R"("status":"ready","customState":"","version":"1.4.2","region":"ap-northeast-2",)"
      R"("zone":"a","weight":100,"meta":{)",
      InstanceId(i), i % 8, i, (i / 250) % 250, i % 250, (i / 250) % 250, i % 250);
}

std::string Tail(int i) {
  return absl::StrFormat(
      R"(},"systemInfo":{},"performance":{"load":%s,"tps":1200},)"
      R"("startedAt":"2023-11-14T22:13:20.000Z","updatedAt":"2026-12-01T21:48:32.703Z")",
      absl::StrCat((i % 100) / 100.0));
}

}  // namespace

std::string ValueHead(int i) { return absl::StrCat(Head(i), Tail(i), R"(,"leaseId":")"); }

std::string ValueWithLease(const std::string& head, int64_t lease) {
  return absl::StrCat(head, absl::Hex(static_cast<uint64_t>(lease)), "\"}");
}

std::string ValueWithSeq(int i, int64_t seq) {
  return absl::StrCat(Head(i), R"("seq":")", seq, R"(","ts":")", NowNs(), "\"", Tail(i), "}");
}

std::string PrefixEnd(std::string prefix) {
  prefix.back() = static_cast<char>(prefix.back() + 1);  // prefixes end with '/'
  return prefix;
}

std::string UniquePrefix(const std::string& mode) {
  static std::atomic<int> counter{0};
  return absl::StrFormat("/bench/raw-%s-%d-%d-%d/", mode, getpid(), time(nullptr),
                         counter.fetch_add(1));
}

}  // namespace raw_bench
