// The gateway mode's SSE parser against the WHATWG "Interpreting an event stream" rules.
#include "gateway/sse_parser.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace discovery::gateway {
namespace {

std::vector<SseParser::Event> ParseAll(const std::vector<std::string>& chunks,
                                       SseParser* parser = nullptr) {
  SseParser local;
  SseParser& p = parser != nullptr ? *parser : local;
  std::vector<SseParser::Event> out;
  for (const std::string& c : chunks) {
    EXPECT_TRUE(p.Feed(c, [&](const SseParser::Event& e) { out.push_back(e); }));
  }
  return out;
}

TEST(SseParserTest, MultiLineDataIdEventAndDefaults) {
  auto ev = ParseAll({"event: update\nid: e1.7\ndata: {\"a\":\ndata: 1}\n\ndata: plain\n\n"});
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[0].type, "update");
  EXPECT_EQ(ev[0].data, "{\"a\":\n1}");
  EXPECT_EQ(ev[0].last_id, "e1.7");
  EXPECT_TRUE(ev[0].has_id);
  EXPECT_EQ(ev[1].type, "message");  // the event type does not persist
  EXPECT_EQ(ev[1].last_id, "e1.7");  // the last event id does
  EXPECT_FALSE(ev[1].has_id);
}

TEST(SseParserTest, LineEndingsCrLfCrAndLfAnySplit) {
  const std::string stream = "data: a\r\ndata: b\rdata: c\n\r\nevent: x\r\rdata: d\n\n";
  // Every split point, including between CR and LF.
  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    auto ev = ParseAll({stream.substr(0, cut), stream.substr(cut)});
    ASSERT_EQ(ev.size(), 2u) << cut;
    EXPECT_EQ(ev[0].data, "a\nb\nc") << cut;
    EXPECT_EQ(ev[1].type, "message") << cut;  // "event: x" was dispatched with empty data
    EXPECT_EQ(ev[1].data, "d") << cut;
  }
}

TEST(SseParserTest, CommentsRetryFieldsWithoutColonAndSpaces) {
  SseParser p;
  auto ev = ParseAll({": keep-alive\nretry: 1500\nretry: 1x\ndata\ndata:  two spaces\n"
                      "unknown: z\n\n"},
                     &p);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].data, "\n two spaces");  // "data" alone: empty value; one space dropped
  EXPECT_EQ(p.comments(), 1u);
  ASSERT_TRUE(p.retry_ms().has_value());
  EXPECT_EQ(*p.retry_ms(), 1500);  // "1x" is ignored
}

// Found by the sse fuzz target in CI: a 54-digit retry overflowed int64_t while being
// parsed (UBSan: signed integer overflow). Too long a value is ignored like any non-number.
TEST(SseParserTest, RetryTooLongToFitIsIgnoredWithoutOverflow) {
  SseParser p;
  auto ev =
      ParseAll({"retry: 1500\nretry:" + std::string(54, '3') + "\nretry: " + std::string(19, '9') +
                "\nretry: 999999999999999999\ndata: x\n\n"},
               &p);
  ASSERT_EQ(ev.size(), 1u);
  ASSERT_TRUE(p.retry_ms().has_value());
  EXPECT_EQ(*p.retry_ms(), 999999999999999999);  // 18 digits still fit
}

TEST(SseParserTest, BomSkippedEvenWhenSplitAndIdWithNulIgnored) {
  auto ev = ParseAll({"\xEF", "\xBB",
                      "\xBF"
                      "data: x\n",
                      std::string("id: a\0b\n\n", 9)});
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].data, "x");
  EXPECT_FALSE(ev[0].has_id);
  EXPECT_EQ(ev[0].last_id, "");
}

TEST(SseParserTest, EmptyIdResetsLastIdAndNoDispatchWithoutData) {
  auto ev = ParseAll({"id: e.1\ndata: a\n\nid\n\nevent: reset\nid: \ndata: {}\n\n"});
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[1].type, "reset");
  EXPECT_EQ(ev[1].last_id, "");
}

TEST(SseParserTest, OverlongLineIsAnErrorNotAnAllocation) {
  SseParser p(/*max_line=*/16, /*max_event=*/64);
  EXPECT_FALSE(p.Feed(std::string(100, 'a'), [](const SseParser::Event&) {}));
  EXPECT_FALSE(p.Feed("data: x\n\n", [](const SseParser::Event&) {}));  // stays failed
  SseParser q(/*max_line=*/32, /*max_event=*/20);
  bool ok = true;
  for (int i = 0; i < 10 && ok; ++i) ok = q.Feed("data: 0123456789\n", [](const auto&) {});
  EXPECT_FALSE(ok);
}

}  // namespace
}  // namespace discovery::gateway
