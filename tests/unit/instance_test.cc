#include "discovery/instance.h"

#include <cstdint>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace discovery {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

constexpr char kUlidAlphabet[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

absl::Time Ms(int64_t ms) { return absl::FromUnixMillis(ms); }

Instance FullInstance() {
  Instance in;
  in.instance_id = "01JCYFZQ7D4NB4MZ5S6Z6NXYK8";
  in.type = "world";
  in.group = "kr-1";
  in.hostname = "game-01.kr.example.com";
  in.public_ip = "123.45.67.89";
  in.private_ip = "10.0.0.5";
  in.ports = {{"game", 8001}, {"grpc", 50051}};
  in.status = InstanceStatus::kReady;
  in.custom_state = "match:42";
  in.version = "1.4.2";
  in.region = "ap-northeast-2";
  in.zone = "a";
  in.weight = 250;
  in.meta = {{"k", "v"}, {"owner", "team-a"}};
  in.system_info = Json{{"os", "linux"}, {"cores", 16}, {"tags", {"a", "b"}}};
  in.performance = Json{{"tps", 1200}, {"load", 0.8}};
  in.started_at = Ms(1795637070123);  // 2026-11-25T20:04:30.123Z
  in.updated_at = Ms(1795637075456);
  in.lease_id = 0x694d7a1c2f3b4c01;
  in.extra = Json{{"futureField", {{"nested", true}}}, {"anotherOne", 7}};
  return in;
}

void ExpectSameInstance(const Instance& a, const Instance& b) {
  EXPECT_EQ(a.instance_id, b.instance_id);
  EXPECT_EQ(a.type, b.type);
  EXPECT_EQ(a.group, b.group);
  EXPECT_EQ(a.hostname, b.hostname);
  EXPECT_EQ(a.public_ip, b.public_ip);
  EXPECT_EQ(a.private_ip, b.private_ip);
  EXPECT_EQ(a.ports, b.ports);
  EXPECT_EQ(a.status, b.status);
  EXPECT_EQ(a.custom_state, b.custom_state);
  EXPECT_EQ(a.version, b.version);
  EXPECT_EQ(a.region, b.region);
  EXPECT_EQ(a.zone, b.zone);
  EXPECT_EQ(a.weight, b.weight);
  EXPECT_EQ(a.meta, b.meta);
  EXPECT_EQ(a.system_info, b.system_info);
  EXPECT_EQ(a.performance, b.performance);
  EXPECT_EQ(a.started_at, b.started_at);
  EXPECT_EQ(a.updated_at, b.updated_at);
  EXPECT_EQ(a.lease_id, b.lease_id);
  EXPECT_EQ(a.extra, b.extra);
}

// Decodes `json` and expects kInvalidArgument whose message contains `needle`.
void ExpectDecodeError(std::string_view json, std::string_view needle) {
  absl::StatusOr<Instance> got = DecodeInstance(json);
  ASSERT_FALSE(got.ok()) << "decoded unexpectedly: " << json;
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(got.status().message()), HasSubstr(std::string(needle)));
}

// ---- status ----

TEST(InstanceStatusTest, NamesRoundTrip) {
  const std::vector<std::pair<InstanceStatus, std::string>> cases = {
      {InstanceStatus::kInitializing, "initializing"},
      {InstanceStatus::kReady, "ready"},
      {InstanceStatus::kShuttingDown, "shutting_down"},
      {InstanceStatus::kError, "error"},
  };
  for (const auto& [status, name] : cases) {
    EXPECT_EQ(ToString(status), name);
    absl::StatusOr<InstanceStatus> parsed = ParseInstanceStatus(name);
    ASSERT_TRUE(parsed.ok()) << name;
    EXPECT_EQ(*parsed, status);
  }
}

TEST(InstanceStatusTest, ParseRejectsUnknownNames) {
  for (std::string_view bad : {"", "READY", "Ready", "shutting-down", "draining", "ready "}) {
    absl::StatusOr<InstanceStatus> parsed = ParseInstanceStatus(bad);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(parsed.status().message()), HasSubstr("status"));
  }
}

TEST(InstanceStatusTest, TransitionTable) {
  using S = InstanceStatus;
  const S all[] = {S::kInitializing, S::kReady, S::kShuttingDown, S::kError};
  // allowed[from][to], in the order of `all`.
  const bool allowed[4][4] = {
      /* initializing -> */ {true, true, true, true},
      /* ready        -> */ {false, true, true, true},
      /* shutting_down-> */ {false, false, true, true},
      /* error        -> */ {false, true, true, true},
  };
  for (int f = 0; f < 4; ++f) {
    for (int t = 0; t < 4; ++t) {
      EXPECT_EQ(IsValidTransition(all[f], all[t]), allowed[f][t])
          << ToString(all[f]) << " -> " << ToString(all[t]);
    }
  }
  EXPECT_FALSE(IsValidTransition(S::kShuttingDown, S::kReady));
  EXPECT_FALSE(IsValidTransition(S::kReady, S::kInitializing));
}

// ---- accessors ----

TEST(InstanceTest, AddressPrefersPublicThenPrivateThenHostname) {
  Instance in;
  in.hostname = "host";
  EXPECT_EQ(in.Address(), "host");
  in.private_ip = "10.0.0.1";
  EXPECT_EQ(in.Address(), "10.0.0.1");
  in.public_ip = "1.2.3.4";
  EXPECT_EQ(in.Address(), "1.2.3.4");
  Instance empty;
  EXPECT_EQ(empty.Address(), "");
}

TEST(InstanceTest, Port) {
  Instance in;
  in.ports["game"] = 8001;
  EXPECT_EQ(in.Port("game"), 8001);
  EXPECT_EQ(in.Port("grpc"), 0);
  EXPECT_EQ(in.Port(""), 0);
}

TEST(InstanceTest, PerformanceNumber) {
  Instance in;
  in.performance =
      Json{{"tps", 1200}, {"load", 0.8},  {"big", 18446744073709551615ULL}, {"neg", -3},
           {"name", "x"}, {"flag", true}, {"obj", Json::object()}};
  EXPECT_DOUBLE_EQ(in.PerformanceNumber("tps", -1), 1200.0);
  EXPECT_DOUBLE_EQ(in.PerformanceNumber("load", -1), 0.8);
  EXPECT_DOUBLE_EQ(in.PerformanceNumber("big", -1), 18446744073709551615.0);
  EXPECT_DOUBLE_EQ(in.PerformanceNumber("neg", 0), -3.0);
  EXPECT_DOUBLE_EQ(in.PerformanceNumber("name", -1), -1.0);
  EXPECT_DOUBLE_EQ(in.PerformanceNumber("flag", -1), -1.0);
  EXPECT_DOUBLE_EQ(in.PerformanceNumber("obj", -1), -1.0);
  EXPECT_DOUBLE_EQ(in.PerformanceNumber("missing", 42.5), 42.5);
  in.performance = Json::array({1, 2});
  EXPECT_DOUBLE_EQ(in.PerformanceNumber("tps", 7), 7.0);
}

// ---- encode ----

TEST(EncodeTest, FullRoundTripPreservesEverythingIncludingUnknownFields) {
  Instance in = FullInstance();
  std::string json = EncodeInstance(in);
  absl::StatusOr<Instance> back = DecodeInstance(json);
  ASSERT_TRUE(back.ok()) << back.status() << "\n" << json;
  ExpectSameInstance(in, *back);
  // Stable: encoding the decoded value gives identical bytes.
  EXPECT_EQ(EncodeInstance(*back), json);
}

TEST(EncodeTest, CompactKnownFieldsInOrderThenExtras) {
  std::string json = EncodeInstance(FullInstance());
  EXPECT_EQ(json.find('\n'), std::string::npos);
  EXPECT_EQ(json.find(": "), std::string::npos);
  EXPECT_TRUE(
      absl::StartsWith(json, R"({"instanceId":"01JCYFZQ7D4NB4MZ5S6Z6NXYK8","type":"world",)"))
      << json;
  const char* order[] = {"\"instanceId\"",  "\"type\"",      "\"group\"",      "\"hostname\"",
                         "\"publicIp\"",    "\"privateIp\"", "\"ports\"",      "\"status\"",
                         "\"customState\"", "\"version\"",   "\"region\"",     "\"zone\"",
                         "\"weight\"",      "\"meta\"",      "\"systemInfo\"", "\"performance\"",
                         "\"startedAt\"",   "\"updatedAt\"", "\"leaseId\"",    "\"anotherOne\"",
                         "\"futureField\""};
  size_t last = 0;
  for (const char* key : order) {
    size_t pos = json.find(key);
    ASSERT_NE(pos, std::string::npos) << key;
    EXPECT_GE(pos, last) << key << " out of order in " << json;
    last = pos;
  }
  EXPECT_THAT(json, HasSubstr(R"("ports":{"game":8001,"grpc":50051})"));
  EXPECT_THAT(json, HasSubstr(R"("status":"ready")"));
  EXPECT_THAT(json, HasSubstr(R"("weight":250)"));
  EXPECT_THAT(json, HasSubstr(R"("startedAt":"2026-11-25T20:04:30.123Z")"));
  EXPECT_THAT(json, HasSubstr(R"("leaseId":"694d7a1c2f3b4c01")"));
  EXPECT_THAT(json, HasSubstr(R"("futureField":{"nested":true})"));
}

TEST(EncodeTest, OmitsUnsetTimesAndZeroLease) {
  Instance in;
  in.instance_id = "a";
  in.type = "t";
  std::string json = EncodeInstance(in);
  EXPECT_EQ(json.find("startedAt"), std::string::npos) << json;
  EXPECT_EQ(json.find("updatedAt"), std::string::npos) << json;
  EXPECT_EQ(json.find("leaseId"), std::string::npos) << json;
  EXPECT_THAT(json, HasSubstr(R"("status":"initializing")"));
  EXPECT_THAT(json, HasSubstr(R"("weight":100)"));
  absl::StatusOr<Instance> back = DecodeInstance(json);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->started_at, absl::InfinitePast());
  EXPECT_EQ(back->updated_at, absl::InfinitePast());
  EXPECT_EQ(back->lease_id, 0);
}

TEST(EncodeTest, KnownFieldsWinOverExtra) {
  Instance in = FullInstance();
  in.extra["type"] = "hijack";
  in.extra["leaseId"] = "deadbeef";
  in.extra["custom"] = 1;
  in.lease_id = 0;  // omitted; the extra "leaseId" must still not be emitted
  std::string json = EncodeInstance(in);
  EXPECT_EQ(json.find("hijack"), std::string::npos) << json;
  EXPECT_EQ(json.find("leaseId"), std::string::npos) << json;
  EXPECT_THAT(json, HasSubstr(R"("custom":1)"));
  Json j = InstanceToJson(in);
  EXPECT_EQ(j["type"], "world");
  EXPECT_FALSE(j.contains("leaseId"));
  EXPECT_EQ(j["custom"], 1);
}

TEST(EncodeTest, InstanceToJsonMatchesEncode) {
  Instance in = FullInstance();
  Json j = InstanceToJson(in);
  EXPECT_EQ(j, Json::parse(EncodeInstance(in)));
  absl::StatusOr<Instance> back = InstanceFromJson(j);
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameInstance(in, *back);
}

TEST(EncodeTest, InvalidUtf8DoesNotThrow) {
  Instance in;
  in.instance_id = "a";
  in.type = "t";
  in.hostname = std::string("bad\xff\xfe", 5);
  in.meta["k"] = std::string("\xc3", 1);
  std::string json;
  EXPECT_NO_THROW(json = EncodeInstance(in));
  EXPECT_TRUE(DecodeInstance(json).ok()) << json;
}

TEST(EncodeTest, UnicodeRoundTrip) {
  Instance in;
  in.instance_id = "01JCYFZQ7D4NB4MZ5S6Z6NXYK8";
  in.type = "world";
  in.hostname = "서버-01.例え.example";
  in.custom_state = "🎮 lobby \"quoted\" \\ back\nline\ttab \x01";
  in.meta["名前"] = "Ünïcödé ✓";
  in.extra["émoji😀"] = "値";
  std::string json = EncodeInstance(in);
  absl::StatusOr<Instance> back = DecodeInstance(json);
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameInstance(in, *back);

  // \u escapes (incl. a surrogate pair) decode to UTF-8.
  absl::StatusOr<Instance> esc =
      DecodeInstance(R"({"instanceId":"x","type":"t","hostname":"\u00e9\ud83d\ude00"})");
  ASSERT_TRUE(esc.ok()) << esc.status();
  EXPECT_EQ(esc->hostname, "é😀");
}

// ---- lease id ----

TEST(LeaseIdTest, HexBothWays) {
  const std::vector<std::pair<int64_t, std::string>> cases = {
      {1, "1"},
      {0x694d7a1c2f3b4c01, "694d7a1c2f3b4c01"},
      {0x7fffffffffffffff, "7fffffffffffffff"},
      {0xabcdef, "abcdef"},
      {static_cast<int64_t>(0x8000000000000000ULL), "8000000000000000"},
      {-1, "ffffffffffffffff"},
  };
  for (const auto& [id, hex] : cases) {
    Instance in;
    in.instance_id = "x";
    in.type = "t";
    in.lease_id = id;
    std::string json = EncodeInstance(in);
    EXPECT_THAT(json, HasSubstr("\"leaseId\":\"" + hex + "\"")) << json;
    absl::StatusOr<Instance> back = DecodeInstance(json);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->lease_id, id) << hex;
  }
}

TEST(LeaseIdTest, DecodeAcceptsIntegerAndUpperCase) {
  absl::StatusOr<Instance> a =
      DecodeInstance(R"({"instanceId":"x","type":"t","leaseId":9223372036854775807})");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->lease_id, 0x7fffffffffffffff);
  absl::StatusOr<Instance> b = DecodeInstance(R"({"instanceId":"x","type":"t","leaseId":12345})");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->lease_id, 12345);
  // An unsigned integer above INT64_MAX is taken as the bit pattern, like a hex string.
  absl::StatusOr<Instance> u =
      DecodeInstance(R"({"instanceId":"x","type":"t","leaseId":18446744073709551615})");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->lease_id, -1);
  absl::StatusOr<Instance> c =
      DecodeInstance(R"({"instanceId":"x","type":"t","leaseId":"694D7A1C2F3B4C01"})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->lease_id, 0x694d7a1c2f3b4c01);
}

TEST(LeaseIdTest, DecodeRejectsBadValues) {
  ExpectDecodeError(R"({"instanceId":"x","type":"t","leaseId":"xyz"})", "field \"leaseId\"");
  ExpectDecodeError(R"({"instanceId":"x","type":"t","leaseId":""})", "field \"leaseId\"");
  ExpectDecodeError(R"({"instanceId":"x","type":"t","leaseId":"1234567890abcdef0"})",
                    "field \"leaseId\"");
  ExpectDecodeError(R"({"instanceId":"x","type":"t","leaseId":1.5})", "field \"leaseId\"");
  ExpectDecodeError(R"({"instanceId":"x","type":"t","leaseId":true})", "field \"leaseId\"");
}

// ---- decode ----

TEST(DecodeTest, MinimalUsesDefaults) {
  absl::StatusOr<Instance> got = DecodeInstance(R"({"instanceId":"abc","type":"world"})");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->instance_id, "abc");
  EXPECT_EQ(got->type, "world");
  EXPECT_EQ(got->group, "");
  EXPECT_TRUE(got->ports.empty());
  EXPECT_EQ(got->status, InstanceStatus::kInitializing);
  EXPECT_EQ(got->weight, 100);
  EXPECT_TRUE(got->meta.empty());
  // Null until set (issue 15: no empty JSON object held per instance); null reads as empty.
  EXPECT_TRUE(got->system_info.empty());
  EXPECT_TRUE(got->performance.empty());
  EXPECT_EQ(got->started_at, absl::InfinitePast());
  EXPECT_EQ(got->lease_id, 0);
  EXPECT_TRUE(got->extra.empty());
}

TEST(DecodeTest, NullOptionalFieldsAreDefaults) {
  absl::StatusOr<Instance> got = DecodeInstance(
      R"({"instanceId":"a","type":"t","group":null,"ports":null,"meta":null,"weight":null,)"
      R"("status":null,"startedAt":null,"leaseId":null,"performance":null,"systemInfo":null})");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->weight, 100);
  EXPECT_EQ(got->status, InstanceStatus::kInitializing);
  EXPECT_TRUE(got->system_info.empty());
}

TEST(DecodeTest, UnknownFieldsGoToExtra) {
  absl::StatusOr<Instance> got =
      DecodeInstance(R"({"instanceId":"a","type":"t","zz":[1,{"a":null}],"x":"y"})");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->extra, (Json{{"zz", Json::array({1, Json{{"a", nullptr}}})}, {"x", "y"}}));
  EXPECT_THAT(EncodeInstance(*got), HasSubstr(R"("x":"y")"));
  EXPECT_THAT(EncodeInstance(*got), HasSubstr(R"("zz":[1,{"a":null}])"));
}

TEST(DecodeTest, MetaNonStringValuesStoredAsDump) {
  absl::StatusOr<Instance> got = DecodeInstance(
      R"({"instanceId":"a","type":"t","meta":{"s":"v","n":5,"b":true,"o":{"k":[1]},"z":null}})");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->meta.at("s"), "v");
  EXPECT_EQ(got->meta.at("n"), "5");
  EXPECT_EQ(got->meta.at("b"), "true");
  EXPECT_EQ(got->meta.at("o"), R"({"k":[1]})");
  EXPECT_EQ(got->meta.at("z"), "null");
}

TEST(DecodeTest, TimesAcceptAnyRfc3339) {
  absl::StatusOr<Instance> got =
      DecodeInstance(R"({"instanceId":"a","type":"t","startedAt":"2026-11-25T22:04:30.123+02:00",)"
                     R"("updatedAt":"2026-11-25T20:04:30Z"})");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->started_at, Ms(1795637070123));
  EXPECT_EQ(got->updated_at, Ms(1795637070000));
  std::string json = EncodeInstance(*got);
  EXPECT_THAT(json, HasSubstr(R"("startedAt":"2026-11-25T20:04:30.123Z")"));
  EXPECT_THAT(json, HasSubstr(R"("updatedAt":"2026-11-25T20:04:30.000Z")"));

  absl::StatusOr<Instance> nanos = DecodeInstance(
      R"({"instanceId":"a","type":"t","startedAt":"2026-11-25T20:04:30.123456789Z"})");
  ASSERT_TRUE(nanos.ok()) << nanos.status();
  EXPECT_EQ(nanos->started_at, Ms(1795637070123) + absl::Nanoseconds(456789));
}

TEST(DecodeTest, NotJson) {
  ExpectDecodeError("", "not valid JSON");
  ExpectDecodeError("hello", "not valid JSON");
  ExpectDecodeError(R"({"instanceId":"a","type":"t"} trailing)", "not valid JSON");
  ExpectDecodeError("{'instanceId':'a'}", "not valid JSON");
  ExpectDecodeError(std::string("{\"instanceId\":\"a\xff\",\"type\":\"t\"}"), "not valid JSON");
}

TEST(DecodeTest, Truncated) {
  std::string json = EncodeInstance(FullInstance());
  for (size_t n : {json.size() - 1, json.size() / 2, size_t{1}}) {
    ExpectDecodeError(json.substr(0, n), "not valid JSON");
  }
}

TEST(DecodeTest, NotAnObject) {
  ExpectDecodeError(R"([{"instanceId":"a","type":"t"}])", "expected an object, got array");
  ExpectDecodeError("42", "expected an object");
  ExpectDecodeError(R"("str")", "expected an object");
  ExpectDecodeError("null", "expected an object");
}

TEST(DecodeTest, MissingOrBadRequiredFields) {
  ExpectDecodeError(R"({"type":"t"})", "field \"instanceId\": missing");
  ExpectDecodeError(R"({"instanceId":"a"})", "field \"type\": missing");
  ExpectDecodeError(R"({"instanceId":"","type":"t"})", "field \"instanceId\"");
  ExpectDecodeError(R"({"instanceId":"a","type":""})", "field \"type\"");
  ExpectDecodeError(R"({"instanceId":7,"type":"t"})", "field \"instanceId\": expected string");
  ExpectDecodeError(R"({"instanceId":"a","type":["t"]})", "field \"type\": expected string");
}

TEST(DecodeTest, WrongTypes) {
  ExpectDecodeError(R"({"instanceId":"a","type":"t","ports":[8001]})",
                    "field \"ports\": expected object");
  ExpectDecodeError(R"({"instanceId":"a","type":"t","ports":{"game":"8001"}})",
                    "field \"ports.game\": expected integer 1..65535");
  ExpectDecodeError(R"({"instanceId":"a","type":"t","ports":{"game":8001.5}})",
                    "field \"ports.game\": expected integer 1..65535");
  ExpectDecodeError(R"({"instanceId":"a","type":"t","weight":"100"})",
                    "field \"weight\": expected integer 0..10000");
  ExpectDecodeError(R"({"instanceId":"a","type":"t","weight":true})", "field \"weight\"");
  ExpectDecodeError(R"({"instanceId":"a","type":"t","group":1})", "field \"group\"");
  ExpectDecodeError(R"({"instanceId":"a","type":"t","hostname":{}})", "field \"hostname\"");
  ExpectDecodeError(R"({"instanceId":"a","type":"t","status":1})", "field \"status\"");
  ExpectDecodeError(R"({"instanceId":"a","type":"t","status":"running"})", "field \"status\"");
  ExpectDecodeError(R"({"instanceId":"a","type":"t","meta":"k=v"})", "field \"meta\"");
  ExpectDecodeError(R"({"instanceId":"a","type":"t","performance":[1]})", "field \"performance\"");
  ExpectDecodeError(R"({"instanceId":"a","type":"t","startedAt":12345})", "field \"startedAt\"");
  ExpectDecodeError(R"({"instanceId":"a","type":"t","updatedAt":"yesterday"})",
                    "field \"updatedAt\"");
}

TEST(DecodeTest, PortOutOfRange) {
  ExpectDecodeError(R"({"instanceId":"a","type":"t","ports":{"game":0}})",
                    "field \"ports.game\": expected integer 1..65535");
  ExpectDecodeError(R"({"instanceId":"a","type":"t","ports":{"game":65536}})",
                    "field \"ports.game\": expected integer 1..65535");
  ExpectDecodeError(R"({"instanceId":"a","type":"t","ports":{"game":-1}})", "field \"ports.game\"");
  ExpectDecodeError(R"({"instanceId":"a","type":"t","ports":{"game":18446744073709551615}})",
                    "field \"ports.game\"");
  absl::StatusOr<Instance> edge =
      DecodeInstance(R"({"instanceId":"a","type":"t","ports":{"lo":1,"hi":65535}})");
  ASSERT_TRUE(edge.ok()) << edge.status();
  EXPECT_EQ(edge->Port("lo"), 1);
  EXPECT_EQ(edge->Port("hi"), 65535);
}

TEST(DecodeTest, IntegralFloatsAcceptedForIntegers) {
  absl::StatusOr<Instance> got =
      DecodeInstance(R"({"instanceId":"a","type":"t","ports":{"game":8001.0},"weight":5e1})");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->Port("game"), 8001);
  EXPECT_EQ(got->weight, 50);
  ExpectDecodeError(R"({"instanceId":"a","type":"t","weight":1e999})", "not valid JSON");
}

TEST(DecodeTest, WeightRange) {
  ExpectDecodeError(R"({"instanceId":"a","type":"t","weight":-1})", "field \"weight\"");
  ExpectDecodeError(R"({"instanceId":"a","type":"t","weight":10001})", "field \"weight\"");
  absl::StatusOr<Instance> zero = DecodeInstance(R"({"instanceId":"a","type":"t","weight":0})");
  ASSERT_TRUE(zero.ok()) << zero.status();
  EXPECT_EQ(zero->weight, 0);
}

TEST(DecodeTest, Oversized) {
  std::string json = R"({"instanceId":"a","type":"t","pad":")" + std::string(200, 'x') + "\"}";
  EXPECT_TRUE(DecodeInstance(json, json.size()).ok());
  absl::StatusOr<Instance> got = DecodeInstance(json, json.size() - 1);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("exceeds the limit"));

  std::string big =
      R"({"instanceId":"a","type":"t","pad":")" + std::string(kMaxInstanceBytes, 'x') + "\"}";
  ExpectDecodeError(big, "exceeds the limit of 65536");
  // The limit applies before parsing: oversized garbage reports size, not syntax.
  ExpectDecodeError(std::string(kMaxInstanceBytes + 1, '['), "exceeds the limit");
}

TEST(DecodeTest, DeepNestingRejectedWithoutCrash) {
  std::string deep(10000, '[');
  ExpectDecodeError(deep, "nesting");
  std::string deep_closed = std::string(10000, '[') + std::string(10000, ']');
  ExpectDecodeError(deep_closed, "nesting");
  std::string in_field = R"({"instanceId":"a","type":"t","x":)" + std::string(5000, '{');
  ExpectDecodeError(in_field, "nesting");

  // Depth 64 (the object itself plus 63 arrays) is fine; 65 is not.
  auto nested = [](int arrays) {
    return R"({"instanceId":"a","type":"t","x":)" + std::string(arrays, '[') +
           std::string(arrays, ']') + "}";
  };
  EXPECT_TRUE(DecodeInstance(nested(63)).ok());
  ExpectDecodeError(nested(64), "nesting");

  // Brackets inside strings (including after escaped quotes) do not count.
  std::string in_string =
      R"({"instanceId":"a","type":"t","x":"\")" + std::string(1000, '[') + "\"}";
  absl::StatusOr<Instance> got = DecodeInstance(in_string);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->extra["x"].get<std::string>().size(), 1001u);
}

// ---- validation ----

TEST(ValidateTest, Names) {
  EXPECT_TRUE(ValidateName("type", "world").ok());
  EXPECT_TRUE(ValidateName("type", "a.b_c-D9").ok());
  EXPECT_TRUE(ValidateName("type", std::string(64, 'a')).ok());
  for (std::string_view bad : {"", "bad/name", "has space", "ünï", "a:b"}) {
    absl::Status st = ValidateName("type", bad);
    ASSERT_FALSE(st.ok()) << bad;
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_FALSE(ValidateName("group", std::string(65, 'a')).ok());
  EXPECT_EQ(ValidateName("type", "bad/name").message(),
            R"(type "bad/name": must match [A-Za-z0-9._-]{1,64})");
  EXPECT_THAT(std::string(ValidateName("group", "").message()), HasSubstr("group \"\""));
}

Instance ValidInstance() {
  Instance in;
  in.type = "world";
  in.group = "kr-1";
  in.ports["game"] = 8001;
  return in;
}

void ExpectInvalid(const Instance& in, std::string_view needle) {
  absl::Status st = ValidateInstance(in);
  ASSERT_FALSE(st.ok()) << needle;
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr(std::string(needle)));
}

TEST(ValidateTest, Instance) {
  EXPECT_TRUE(ValidateInstance(ValidInstance()).ok());
  EXPECT_TRUE(ValidateInstance(FullInstance()).ok()) << ValidateInstance(FullInstance());
  {
    Instance in = ValidInstance();
    in.instance_id = NewUlid();
    EXPECT_TRUE(ValidateInstance(in).ok());
    in.instance_id = "bad id";
    ExpectInvalid(in, "instanceId");
    in.instance_id = std::string(65, 'A');
    ExpectInvalid(in, "instanceId");
  }
  {
    Instance in = ValidInstance();
    in.type = "";
    ExpectInvalid(in, "type");
    in.type = "bad/name";
    ExpectInvalid(in, R"(type "bad/name")");
  }
  {
    Instance in = ValidInstance();
    in.group = "";
    ExpectInvalid(in, "group");
  }
  {
    Instance in = ValidInstance();
    in.ports["bad name"] = 1;
    ExpectInvalid(in, "ports");
  }
  {
    Instance in = ValidInstance();
    in.ports["game"] = 0;
    ExpectInvalid(in, "ports.game");
    in.ports["game"] = 65536;
    ExpectInvalid(in, "ports.game");
    in.ports["game"] = 65535;
    EXPECT_TRUE(ValidateInstance(in).ok());
  }
  {
    Instance in = ValidInstance();
    in.weight = -1;
    ExpectInvalid(in, "weight");
    in.weight = 10001;
    ExpectInvalid(in, "weight");
    in.weight = 0;
    EXPECT_TRUE(ValidateInstance(in).ok());
    in.weight = 10000;
    EXPECT_TRUE(ValidateInstance(in).ok());
  }
}

// ---- ULID ----

void ExpectUlidShape(const std::string& id) {
  ASSERT_EQ(id.size(), 26u) << id;
  for (char c : id) {
    EXPECT_NE(std::string_view(kUlidAlphabet).find(c), std::string_view::npos) << id;
  }
  // 128 bits in 26 digits: the first digit carries 3 bits.
  EXPECT_LE(id[0], '7') << id;
}

TEST(UlidTest, ShapeAndTimePrefix) {
  int64_t before = absl::ToUnixMillis(absl::Now());
  std::string id = NewUlid();
  int64_t after = absl::ToUnixMillis(absl::Now());
  ExpectUlidShape(id);
  // Decode the 10-digit time prefix.
  int64_t ms = 0;
  for (int i = 0; i < 10; ++i) {
    ms = ms * 32 + static_cast<int64_t>(std::string_view(kUlidAlphabet).find(id[i]));
  }
  EXPECT_GE(ms, before);
  EXPECT_LE(ms, after + 1);
}

TEST(UlidTest, UniqueAndStrictlyIncreasingInOneThread) {
  std::vector<std::string> ids;
  ids.reserve(10000);
  for (int i = 0; i < 10000; ++i) ids.push_back(NewUlid());
  std::set<std::string> unique(ids.begin(), ids.end());
  EXPECT_EQ(unique.size(), ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    ExpectUlidShape(ids[i]);
    if (i > 0) {
      ASSERT_LT(ids[i - 1], ids[i]) << "at " << i;
    }
  }
}

TEST(UlidTest, UniqueAcrossThreads) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 2000;
  std::vector<std::vector<std::string>> per_thread(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&per_thread, t] {
      per_thread[t].reserve(kPerThread);
      for (int i = 0; i < kPerThread; ++i) per_thread[t].push_back(NewUlid());
    });
  }
  for (std::thread& th : threads) th.join();
  std::set<std::string> all;
  for (const auto& ids : per_thread) {
    ASSERT_EQ(ids.size(), static_cast<size_t>(kPerThread));
    for (size_t i = 0; i < ids.size(); ++i) {
      ExpectUlidShape(ids[i]);
      // Each thread sees a strictly increasing sequence too.
      if (i > 0) {
        EXPECT_LT(ids[i - 1], ids[i]);
      }
      all.insert(ids[i]);
    }
  }
  EXPECT_EQ(all.size(), static_cast<size_t>(kThreads * kPerThread));
}

}  // namespace
}  // namespace discovery
