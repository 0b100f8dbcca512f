// The instance codec's fast paths against its general paths (nlohmann values):
// - decoding (src/instance_decode_fast.cc): wherever the fast path gives an instance, the
//   general one gives the same (compared by their canonical encodings, unknown fields
//   included); what a registrar writes always takes the fast path; anything unusual is left to
//   the general path, which has the precise error;
// - encoding (src/instance_encode.cc): the same bytes as the general path for every instance,
//   including strings that need escaping or are not UTF-8 at all.
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "discovery/instance.h"
#include "gtest/gtest.h"
#include "instance_internal.h"

namespace discovery {
namespace {

using instance_internal::DecodeInstanceFast;
using instance_internal::DecodeInstanceGeneral;
using instance_internal::EncodeInstanceGeneral;

// The fast path either gives up or agrees with the general path; returns whether it decoded.
bool Agrees(const std::string& json) {
  std::optional<Instance> fast = DecodeInstanceFast(json);
  absl::StatusOr<Instance> general = DecodeInstanceGeneral(json);
  if (!fast.has_value()) return false;
  EXPECT_TRUE(general.ok()) << json
                            << ": fast decoded what the general path rejects: " << general.status();
  if (general.ok()) {
    EXPECT_EQ(EncodeInstance(*fast), EncodeInstance(*general)) << json;
  }
  return true;
}

Instance Full(int i) {
  Instance in;
  in.instance_id = absl::StrFormat("01JCYFZQ7D4NB4MZ5S6Z%06d", i);
  in.type = "world";
  in.group = absl::StrCat("kr-", i % 3);
  in.hostname = "game-1.example.com";
  in.public_ip = "123.45.6.7";
  in.private_ip = "10.0.0.7";
  in.ports = {{"game", 8001}, {"grpc", 50051}};
  in.status = static_cast<InstanceStatus>(i % 4);
  in.custom_state = i % 2 ? "match" : "";
  in.version = "1.4.2";
  in.region = "ap-northeast-2";
  in.zone = "a";
  in.weight = i % 10001;
  in.meta = {{"k", "v"}, {"\xed\x95\x9c", "\"quoted\" \\ \n"}};
  in.system_info = i % 2 ? nlohmann::json::object() : nlohmann::json{{"cpu", 8}, {"os", "linux"}};
  in.performance = {{"tps", 1200}, {"load", 0.25}, {"nested", {{"a", {1, 2.5, "x", nullptr}}}}};
  in.started_at = absl::FromUnixMillis(1700000000123 + i);
  if (i % 3 == 0) in.updated_at = absl::FromUnixMillis(1700000001000 + i);
  in.lease_id = i % 5 == 0 ? 0 : 0x694d7a1c2f3b4c01 + i;
  if (i % 2) in.extra = {{"owner", "team-a"}, {"tags", {"x", "y"}}, {"n", -3}, {"z", nullptr}};
  return in;
}

TEST(DecodeFastTest, WhatRegistrarsWriteTakesTheFastPathAndAgrees) {
  for (int i = 0; i < 200; ++i) {
    const std::string json = EncodeInstance(Full(i));
    EXPECT_TRUE(Agrees(json)) << "fell back for " << json;
  }
  EXPECT_TRUE(Agrees(R"({"instanceId":"a","type":"t"})"));
}

TEST(DecodeFastTest, UnusualButValidDocumentsAgree) {
  const std::vector<std::string> docs = {
      // nulls keep defaults; unknown nulls stay in extra
      R"({"instanceId":"a","type":"t","group":null,"ports":null,"meta":null,"weight":null,"status":null,"systemInfo":null,"performance":null,"startedAt":null,"leaseId":null,"x":null})",
      // integral floats, integer lease ids (positive, negative, huge unsigned), upper-case hex
      R"({"instanceId":"a","type":"t","weight":5.0,"ports":{"p":80.0},"leaseId":-5})",
      R"({"instanceId":"a","type":"t","leaseId":18446744073709551615})",
      R"({"instanceId":"a","type":"t","leaseId":"0XABCDEF"})",
      // escapes and unicode in every kind of string
      "{\"instanceId\":\"a\",\"type\":\"t\",\"group\":\"\xed\x95\x9c \xf0\x9f\x8e\xae\","
      "\"meta\":{\"\\n\":\"\\t\\b\\f\\r\"},\"zone\":\"\\\"\\\\\\/\"}",
      // unknown fields of every JSON type, nested, repeated (the last one wins)
      R"({"x":1,"instanceId":"a","y":[{"a":[[],{}]},true,false,null,1.5,-2,"s"],"type":"t","x":{"k":[1]}})",
      R"({"instanceId":"a","type":"t","x":{"a":1,"a":2}})",
      // systemInfo of any type (kept when not null or {}); empty status keeps the default
      R"({"instanceId":"a","type":"t","systemInfo":"text","status":""})",
      R"({"instanceId":"a","type":"t","systemInfo":[1,2],"performance":{}})",
      R"({"instanceId":"a","type":"t","systemInfo":{},"performance":{"p":{"q":[]}}})",
      // repeated ports/meta keys: the last one wins, as in the document tree
      R"({"instanceId":"a","type":"t","ports":{"p":1,"p":2},"meta":{"m":"1","m":"2"}})",
      // times with offsets and fractions
      R"({"instanceId":"a","type":"t","startedAt":"2024-01-02T03:04:05+09:00","updatedAt":"2024-01-02T03:04:05.123456789Z"})",
      // the known fields in reverse order (FieldOf starts after the last field it found)
      R"({"leaseId":"1f","updatedAt":"2024-01-02T03:04:05Z","startedAt":"2024-01-02T03:04:05Z","performance":{"a":1},"systemInfo":{"b":2},"meta":{"m":"v"},"weight":7,"zone":"z","region":"r","version":"v","customState":"c","status":"ready","ports":{"p":1},"privateIp":"10.0.0.1","publicIp":"1.2.3.4","hostname":"h","group":"g","type":"t","instanceId":"a"})",
      // whitespace everywhere
      " {\n \"instanceId\" : \"a\" ,\t\"type\":\"t\" , \"ports\" : { \"p\" : 1 } } \n",
  };
  for (const std::string& doc : docs) {
    EXPECT_TRUE(DecodeInstanceGeneral(doc).ok()) << doc;
    EXPECT_TRUE(Agrees(doc)) << "fell back for " << doc;
  }
}

TEST(DecodeFastTest, AnythingElseIsLeftToTheGeneralPath) {
  // Each must make the fast path give up (the general path decides, with its error or with
  // the conversion the fast path does not make).
  const std::vector<std::string> docs = {
      "",
      "null",
      "[]",
      "\"s\"",
      "1",
      "{",
      R"({"instanceId":"a","type":"t"} x)",
      R"({"type":"t"})",
      R"({"instanceId":"","type":"t"})",
      R"({"instanceId":null,"type":"t"})",
      R"({"instanceId":1,"type":"t"})",
      R"({"instanceId":"a","type":"t","group":1})",
      R"({"instanceId":"a","type":"t","group":{}})",
      R"({"instanceId":"a","type":"t","ports":[]})",
      R"({"instanceId":"a","type":"t","ports":{"p":0}})",
      R"({"instanceId":"a","type":"t","ports":{"p":"80"}})",
      R"({"instanceId":"a","type":"t","ports":{"p":{}}})",
      R"({"instanceId":"a","type":"t","status":"sleeping"})",
      R"({"instanceId":"a","type":"t","status":1})",
      R"({"instanceId":"a","type":"t","weight":1.5})",
      R"({"instanceId":"a","type":"t","weight":10001})",
      R"({"instanceId":"a","type":"t","weight":"1"})",
      R"({"instanceId":"a","type":"t","meta":{"m":1}})",
      R"({"instanceId":"a","type":"t","meta":{"m":{"n":"o"}}})",
      R"({"instanceId":"a","type":"t","meta":[]})",
      R"({"instanceId":"a","type":"t","performance":1})",
      R"({"instanceId":"a","type":"t","performance":[]})",
      R"({"instanceId":"a","type":"t","startedAt":""})",
      R"({"instanceId":"a","type":"t","startedAt":"yesterday"})",
      R"({"instanceId":"a","type":"t","updatedAt":1})",
      R"({"instanceId":"a","type":"t","leaseId":"xyz"})",
      R"({"instanceId":"a","type":"t","leaseId":1.5})",
      R"({"instanceId":"a","type":"t","leaseId":"11112222333344445"})",
      // a known field twice (the document tree keeps the last one; not worth copying)
      R"({"instanceId":"a","type":"t","type":"u"})",
      R"({"instanceId":"a","type":"t","ports":{"p":1},"ports":{"q":2}})",
      "{\"instanceId\":\"a\",\"type\":\"t\",\"zone\":\"\xff\"}",          // invalid UTF-8
      "{\"instanceId\":\"a\",\"type\":\"t\",\"zone\":\"\xed\xa0\x80\"}",  // a surrogate
      "{\"instanceId\":\"a\",\"type\":\"t\",\"zone\":\"\xc0\xaf\"}",      // overlong
      "{\"instanceId\":\"a\",\"type\":\"t\",\"zone\":\"\x01\"}",          // a raw control byte
      // \u escapes (nlohmann pairs surrogates), integers beyond 64 bits, deep nesting
      R"({"instanceId":"a\u0041","type":"t","group":"\ud55c"})",
      R"({"instanceId":"a","type":"t","x":18446744073709551616})",
      R"({"instanceId":"a","type":"t","x":-9223372036854775809})",
      R"({"instanceId":"a","type":"t","x":1e999})",
      // not JSON: leading zeros, bare fractions, trailing commas, single quotes, comments
      R"({"instanceId":"a","type":"t","x":01})",
      R"({"instanceId":"a","type":"t","x":1.})",
      R"({"instanceId":"a","type":"t","x":.5})",
      R"({"instanceId":"a","type":"t",})",
      R"({"instanceId":"a","type":"t","x":[1,]})",
      R"({'instanceId':"a","type":"t"})",
      R"({"instanceId":"a","type":"t"/*c*/})",
      std::string(70, '[') + std::string(70, ']'),
  };
  for (const std::string& doc : docs) {
    EXPECT_FALSE(DecodeInstanceFast(doc).has_value()) << doc;
  }
}

// ParseTimestampFast gives a time only where absl::ParseTime(RFC3339_full) gives the same one.
bool TimestampAgrees(const std::string& s) {
  absl::Time fast;
  if (!instance_internal::ParseTimestampFast(s, &fast)) return false;
  absl::Time general;
  std::string err;
  EXPECT_TRUE(absl::ParseTime(absl::RFC3339_full, s, &general, &err))
      << s << ": fast parsed what absl rejects: " << err;
  EXPECT_EQ(fast, general) << s;
  return true;
}

TEST(TimestampFastTest, EveryDayOfFourHundredYearsAgrees) {
  // 1800..2199: every day (the Gregorian cycle, leap centuries included), a time of day that
  // moves through the hours, minutes and seconds, and 0..9 fractional digits.
  const absl::Time from = absl::FromCivil(absl::CivilDay(1800, 1, 1), absl::UTCTimeZone());
  const absl::Time to = absl::FromCivil(absl::CivilDay(2200, 1, 1), absl::UTCTimeZone());
  int64_t days = 0;
  for (absl::Time day = from; day < to; day += absl::Hours(24), ++days) {
    const absl::Time t = day + absl::Seconds((days * 7919) % 86400) +
                         absl::Nanoseconds((days * 104729) % 1000000000);
    const int digits = days % 10;
    const std::string format =
        digits == 0 ? "%Y-%m-%d%ET%H:%M:%SZ" : absl::StrCat("%Y-%m-%d%ET%H:%M:%E", digits, "SZ");
    const std::string s = absl::FormatTime(format, t, absl::UTCTimeZone());
    ASSERT_TRUE(TimestampAgrees(s)) << "not taken: " << s;
  }
  EXPECT_EQ(days, 146097);
}

TEST(TimestampFastTest, NearMissesAreLeftToAbsl) {
  // Out of range, other shapes, offsets, leap seconds: never a time absl would not give.
  const std::vector<std::string> rejected = {
      "2023-02-29T00:00:00Z",
      "2100-02-29T00:00:00Z",
      "2023-04-31T00:00:00Z",
      "2023-00-10T00:00:00Z",
      "2023-13-10T00:00:00Z",
      "2023-01-00T00:00:00Z",
      "2023-01-32T00:00:00Z",
      "2023-01-10T24:00:00Z",
      "2023-01-10T23:60:00Z",
      "2023-12-31T23:59:60Z",
      "2023-01-10T00:00:00",
      "2023-01-10T00:00:00.Z",
      "2023-01-10T00:00:00.1234567891Z",
      "2023-01-10t00:00:00Z",
      "2023-01-10T00:00:00z",
      "2023-01-10T00:00:00+00:00",
      "2023-1-10T00:00:00Z",
      "+2023-01-10T00:00:00Z",
      "2023-01-10T00:00:00.12a4Z",
      " 2023-01-10T00:00:00Z",
      "2023-01-10 00:00:00Z",
      "",
  };
  for (const std::string& s : rejected) EXPECT_FALSE(TimestampAgrees(s)) << s;
  EXPECT_TRUE(TimestampAgrees("2024-02-29T23:59:59.999999999Z"));
  EXPECT_TRUE(TimestampAgrees("2000-02-29T00:00:00.5Z"));
  // Every byte of a valid timestamp replaced by each of a set of bytes: whatever the fast path
  // takes, absl gives the same time.
  const std::string base = "2024-02-29T13:45:59.123Z";
  const std::string bytes = "0123456789-:T.Zzt +/\x01\xff";
  int taken = 0;
  for (size_t i = 0; i < base.size(); ++i) {
    for (char b : bytes) {
      std::string s = base;
      s[i] = b;
      taken += TimestampAgrees(s) ? 1 : 0;
    }
  }
  EXPECT_GT(taken, 0);
}

TEST(EncodeFastTest, SameBytesAsTheGeneralPath) {
  for (int i = 0; i < 200; ++i) {
    const Instance in = Full(i);
    ASSERT_EQ(EncodeInstance(in), EncodeInstanceGeneral(in)) << i;
  }
  // Every byte value in a string field, a port name, a meta key and value, an unknown key.
  std::string all;
  for (int c = 1; c < 256; ++c) all += static_cast<char>(c);
  const std::vector<std::string> strings = {"",
                                            "plain",
                                            "\"q\" \\ /",
                                            std::string("nul\0mid", 7),
                                            "\x01\x1f\x7f\b\f\n\r\t",
                                            "\xed\x95\x9c\xea\xb8\x80 \xf0\x9f\x8e\xae",
                                            "\xff",
                                            "ab\xc3",
                                            "\xed\xa0\x80",
                                            "\xc0\xaf",
                                            "\xf4\x90\x80\x80",
                                            all};
  for (const std::string& s : strings) {
    Instance in = Full(1);
    in.group = s;
    in.hostname = s;
    in.ports[s] = 1;
    in.meta[s] = s;
    in.extra[s.empty() ? "e" : s] = s;
    EXPECT_EQ(EncodeInstance(in), EncodeInstanceGeneral(in)) << absl::CHexEscape(s);
  }
  // Defaults and odd free-form values: null systemInfo, a performance that is not an object,
  // extras under known names (not written twice), unset times, lease 0, empty maps.
  Instance bare;
  bare.instance_id = "a";
  bare.type = "t";
  EXPECT_EQ(EncodeInstance(bare), EncodeInstanceGeneral(bare));
  bare.performance = 5;
  bare.system_info = "text";
  bare.extra = {{"type", "shadow"}, {"leaseId", 1}, {"x", {{"y", {1, nullptr}}}}};
  bare.weight = -1;
  bare.lease_id = -1;
  bare.started_at = absl::InfiniteFuture();
  EXPECT_EQ(EncodeInstance(bare), EncodeInstanceGeneral(bare));
}

// A deterministic mini-fuzz of the fast path against the general one: documents registrars
// write, with bytes flipped, dropped, duplicated or cut. Wherever the fast path decodes, it
// agrees; it never reads past the end (ASan runs this test too).
TEST(DecodeFastTest, MutatedDocumentsNeverDisagree) {
  std::mt19937 rng(20261202);
  const std::string alphabet = "{}[]\",:.-+eE0123456789 \\/nutfalsr\x1f\x80\xc3\xa9\xed";
  int decoded = 0;
  for (int round = 0; round < 4000; ++round) {
    std::string doc = EncodeInstance(Full(round % 50));
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits && !doc.empty(); ++e) {
      const size_t at = rng() % doc.size();
      switch (rng() % 4) {
        case 0:
          doc[at] = alphabet[rng() % alphabet.size()];
          break;
        case 1:
          doc.erase(at, 1 + rng() % 4);
          break;
        case 2:
          doc.insert(at, 1, alphabet[rng() % alphabet.size()]);
          break;
        default:
          doc.resize(at);
          break;
      }
    }
    std::string copy(doc);  // exactly sized: reads past the end would show under ASan
    decoded += Agrees(copy);
  }
  // A share of the mutations still decode (a changed value, an added space): the test covers
  // accepted documents, not only rejected ones.
  EXPECT_GT(decoded, 200);
}

}  // namespace
}  // namespace discovery
