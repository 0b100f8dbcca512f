#include "discovery/instance.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "instance_internal.h"
#include "util/sync.h"

namespace discovery {
namespace {

using Json = nlohmann::json;
using namespace instance_internal;  // NOLINT(build/namespaces): this file's own helpers

bool IsNameChar(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

bool IsValidName(std::string_view name) {
  if (name.empty() || name.size() > static_cast<size_t>(kMaxNameLength)) return false;
  for (char c : name) {
    if (!IsNameChar(c)) return false;
  }
  return true;
}

// ---- ULID ----

constexpr char kCrockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
constexpr uint64_t kMaxUlidMillis = (uint64_t{1} << 48) - 1;

struct UlidState {
  util::Mutex mu;
  absl::BitGen gen ABSL_GUARDED_BY(mu);
  uint64_t last_ms ABSL_GUARDED_BY(mu) = 0;
  uint16_t rand_hi ABSL_GUARDED_BY(mu) = 0;  // top 16 of the 80 random bits
  uint64_t rand_lo ABSL_GUARDED_BY(mu) = 0;  // low 64 of the 80 random bits
};

UlidState& GetUlidState() {
  static UlidState* state = new UlidState();
  return *state;
}

std::string EncodeUlid(uint64_t ms, uint16_t rand_hi, uint64_t rand_lo) {
  // 128 bits = 48-bit time | 80-bit randomness, written as 26 base32 digits (top 2 bits 0).
  uint64_t hi = (ms << 16) | rand_hi;
  uint64_t lo = rand_lo;
  std::string out(26, '0');
  for (int i = 25; i >= 0; --i) {
    out[static_cast<size_t>(i)] = kCrockford[lo & 31];
    lo = (lo >> 5) | (hi << 59);
    hi >>= 5;
  }
  return out;
}
}  // namespace

// ---- status ----

std::string_view ToString(InstanceStatus status) {
  switch (status) {
    case InstanceStatus::kInitializing:
      return "initializing";
    case InstanceStatus::kReady:
      return "ready";
    case InstanceStatus::kShuttingDown:
      return "shutting_down";
    case InstanceStatus::kError:
      return "error";
  }
  return "unknown";
}

absl::StatusOr<InstanceStatus> ParseInstanceStatus(std::string_view name) {
  for (InstanceStatus s : {InstanceStatus::kInitializing, InstanceStatus::kReady,
                           InstanceStatus::kShuttingDown, InstanceStatus::kError}) {
    if (ToString(s) == name) return s;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "status ", Quote(name), ": must be one of initializing, ready, shutting_down, error"));
}

bool IsValidTransition(InstanceStatus from, InstanceStatus to) {
  if (from == to) return true;
  if (to == InstanceStatus::kError) return true;
  switch (from) {
    case InstanceStatus::kInitializing:
      return to == InstanceStatus::kReady || to == InstanceStatus::kShuttingDown;
    case InstanceStatus::kReady:
      return to == InstanceStatus::kShuttingDown;
    case InstanceStatus::kShuttingDown:
      return false;
    case InstanceStatus::kError:
      return to == InstanceStatus::kReady || to == InstanceStatus::kShuttingDown;
  }
  return false;
}

// ---- Instance accessors ----

const std::string& Instance::Address() const {
  if (!public_ip.empty()) return public_ip;
  if (!private_ip.empty()) return private_ip;
  return hostname;
}

int Instance::Port(std::string_view name) const {
  auto it = ports.find(std::string(name));
  return it == ports.end() ? 0 : it->second;
}

double Instance::PerformanceNumber(std::string_view field, double fallback) const {
  const auto* obj = performance.get_ptr<const Json::object_t*>();
  if (obj == nullptr) return fallback;
  auto it = obj->find(std::string(field));
  if (it == obj->end()) return fallback;
  const Json& v = it->second;
  if (const auto* f = v.get_ptr<const Json::number_float_t*>()) return *f;
  // Unsigned before signed: get_ptr<number_integer_t> also matches unsigned values.
  if (const auto* u = v.get_ptr<const Json::number_unsigned_t*>()) return static_cast<double>(*u);
  if (const auto* i = v.get_ptr<const Json::number_integer_t*>()) return static_cast<double>(*i);
  return fallback;
}

// ---- validation ----

absl::Status ValidateName(std::string_view what, std::string_view name) {
  if (IsValidName(name)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(AV(what), " ", Quote(name), ": must match [A-Za-z0-9._-]{1,64}"));
}

absl::Status ValidateInstance(const Instance& instance) {
  // ULIDs (Crockford base32) are a subset of the name charset; ids from other writers may
  // use any name character.
  if (!instance.instance_id.empty() && !IsValidName(instance.instance_id)) {
    return absl::InvalidArgumentError(absl::StrCat("instanceId ", Quote(instance.instance_id),
                                                   ": must match [A-Za-z0-9._-]{1,64}"));
  }
  if (absl::Status st = ValidateName("type", instance.type); !st.ok()) return st;
  if (absl::Status st = ValidateName("group", instance.group); !st.ok()) return st;
  for (const auto& [name, port] : instance.ports) {
    if (!IsValidName(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("ports name ", Quote(name), ": must match [A-Za-z0-9._-]{1,64}"));
    }
    if (port < kMinPort || port > kMaxPort) {
      return absl::InvalidArgumentError(
          absl::StrCat("ports.", name, " ", port, ": must be in 1..65535"));
    }
  }
  if (instance.weight < kMinWeight || instance.weight > kMaxWeight) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight ", instance.weight, ": must be in 0..10000"));
  }
  return absl::OkStatus();
}

// ---- ULID ----

std::string NewUlid() {
  UlidState& s = GetUlidState();
  uint64_t now = static_cast<uint64_t>(std::max<int64_t>(0, absl::ToUnixMillis(absl::Now())));
  if (now > kMaxUlidMillis) now = kMaxUlidMillis;
  util::MutexLock lock(&s.mu);
  if (now > s.last_ms) {
    s.last_ms = now;
    s.rand_hi = absl::Uniform<uint16_t>(s.gen);
    s.rand_lo = absl::Uniform<uint64_t>(s.gen);
  } else {
    // Same millisecond (or the clock stepped back): keep the time, increment the randomness.
    if (++s.rand_lo == 0 && ++s.rand_hi == 0) {
      // 80-bit overflow: borrow the next millisecond with fresh randomness.
      if (s.last_ms < kMaxUlidMillis) ++s.last_ms;
      s.rand_hi = absl::Uniform<uint16_t>(s.gen);
      s.rand_lo = absl::Uniform<uint64_t>(s.gen);
    }
  }
  return EncodeUlid(s.last_ms, s.rand_hi, s.rand_lo);
}

}  // namespace discovery
