// The heap a decoded instance holds (issue 15: the watcher cache's memory per instance).
//
// Decodes N copies of the watcher-scale benchmark's ~450-byte value (bench/discovery_bench/
// watcher_scale.cc: the DESIGN.md example with meta seq/t/pad) the way the watcher caches them
// (make_shared<const Instance>) and measures the heap still allocated per instance with
// mallinfo2(). A change that makes the decoded instance fatter (an empty JSON object held per
// member, a raw value kept beside it, a separate control block) fails the budget.
#include <malloc.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "discovery/instance.h"
#include "gtest/gtest.h"

namespace discovery {
namespace {

// The watcher-scale value of instance i (same fields and sizes as bench/sample_instance.h +
// watcher_scale.cc's ScaleValue).
std::string ScaleValue(int i) {
  Instance in;
  in.instance_id = absl::StrFormat("01JCYFZQ7D4NB4MZ5S6Z%06d", i);
  in.type = "world";
  in.group = absl::StrFormat("g-%05d", i / 100);
  in.hostname = absl::StrCat("game-", i, ".kr.example.com");
  in.public_ip = absl::StrFormat("123.45.%d.%d", (i / 250) % 250, i % 250);
  in.private_ip = absl::StrFormat("10.0.%d.%d", (i / 250) % 250, i % 250);
  in.ports = {{"game", 8001}, {"grpc", 50051}};
  in.status = InstanceStatus::kReady;
  in.version = "1.4.2";
  in.region = "ap-northeast-2";
  in.zone = "a";
  in.performance = {{"tps", 1200}, {"load", (i % 100) / 100.0}};
  in.started_at = absl::FromUnixSeconds(1700000000);
  in.updated_at = absl::FromUnixSeconds(1700000000) + absl::Milliseconds(i);
  in.meta["seq"] = absl::StrCat(i);
  in.meta["t"] = absl::StrCat(int64_t{1700000000123456789} + i);
  std::string v = EncodeInstance(in);
  if (v.size() + 10 < 450) {
    in.meta["pad"] = std::string(450 - 10 - v.size(), 'x');
    v = EncodeInstance(in);
  }
  return v;
}

size_t HeapInUse() { return mallinfo2().uordblks; }

// mallinfo2() reports glibc's heap; a sanitizer's allocator replaces it (nothing to measure).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kGlibcHeap = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool kGlibcHeap = false;
#else
constexpr bool kGlibcHeap = true;
#endif
#else
constexpr bool kGlibcHeap = true;
#endif

TEST(InstanceFootprintTest, DecodedSampleInstanceStaysUnderBudget) {
  if (!kGlibcHeap) GTEST_SKIP() << "sanitizer allocator: mallinfo2() does not see it";
  constexpr int kN = 20000;
  // Budget for the heap one cached instance holds (the Instance, its control block and
  // everything its members allocate). Measured 1,456 B before issue 15, 1,311 B after.
  constexpr double kBudgetBytes = 1350;
  std::vector<std::string> values;
  values.reserve(kN);
  for (int i = 0; i < kN; ++i) values.push_back(ScaleValue(i));
  std::vector<InstancePtr> cached;
  cached.reserve(kN);
  const size_t before = HeapInUse();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kN; ++i) {
    absl::StatusOr<Instance> in = DecodeInstance(values[static_cast<size_t>(i)]);
    ASSERT_TRUE(in.ok()) << in.status();
    cached.push_back(std::make_shared<const Instance>(*std::move(in)));
  }
  const auto t1 = std::chrono::steady_clock::now();
  const size_t after = HeapInUse();
  ASSERT_GE(after, before);
  const double per_instance = static_cast<double>(after - before) / kN;
  const double decode_us = std::chrono::duration<double, std::micro>(t1 - t0).count() / kN;
  std::printf(
      "value %zu B, sizeof(Instance) %zu B, heap per decoded instance %.0f B, decode %.2f us\n",
      values[0].size(), sizeof(Instance), per_instance, decode_us);
  EXPECT_LE(per_instance, kBudgetBytes);
  // And the round trip still holds for what was measured.
  EXPECT_EQ(EncodeInstance(*cached[7]), values[7]);
}

}  // namespace
}  // namespace discovery
