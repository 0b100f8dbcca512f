// The instance decoder's fast path: JSON text -> Instance in one pass (a strict scanner feeding a
// SAX-style handler), without the document tree that DecodeInstance's general path builds with
// nlohmann's parser and then takes apart.
//
// Why: on the watch path every event is decoded on the watch thread before its callback runs.
// nlohmann's lexer (byte at a time, each token grown one push_back at a time) and the tree (a
// std::map node and a string per field, built, moved from and destroyed) made the decode the
// largest part of the library's own per-event CPU (bench/README.md, "Watch path: per-event CPU").
//
// It accepts only what it decodes to exactly the instance the general path gives: valid JSON
// without \u escapes, integers that fit 64 bits, nesting within kMaxInstanceNesting, every known
// field of the right JSON type and given once, required fields present, times and lease ids that
// parse, string meta values. On anything else it gives up (nullopt) and DecodeInstance runs the
// general path, which gives the same instance or the precise error. The unit test
// (instance_fast_paths_test) and the fuzz target (instance_fuzz) check the two against each other.
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "discovery/instance.h"
#include "instance_internal.h"
#include "json_text.h"

namespace discovery::instance_internal {
namespace {

using Json = nlohmann::json;

// The known fields in instance_internal::kKnownFields order (FieldOf maps a key to its index);
// a field out of order would be decoded into the wrong member, which the unit test's
// comparison with the general path catches on the first full instance.
enum Field : int {
  kInstanceId,
  kType,
  kGroup,
  kHostname,
  kPublicIp,
  kPrivateIp,
  kPorts,
  kStatus,
  kCustomState,
  kVersion,
  kRegion,
  kZone,
  kWeight,
  kMeta,
  kSystemInfo,
  kPerformance,
  kStartedAt,
  kUpdatedAt,
  kLeaseId,
  kUnknown,
};

class Handler {
 public:
  using number_integer_t = Json::number_integer_t;
  using number_unsigned_t = Json::number_unsigned_t;
  using number_float_t = Json::number_float_t;
  using string_t = Json::string_t;
  using binary_t = Json::binary_t;

  explicit Handler(Instance* out) : in(*out) {}

  Instance& in;  // the caller's (default-constructed) instance, filled in place
  std::string status;
  std::optional<std::string> started, updated;  // set when given as a string
  Json system_info, performance;

  bool null() { return Scalar(Json()); }
  bool boolean(bool v) { return Scalar(Json(v)); }
  bool number_integer(number_integer_t v) { return Scalar(Json(v)); }
  bool number_unsigned(number_unsigned_t v) { return Scalar(Json(v)); }
  bool number_float(number_float_t v, const string_t&) { return Scalar(Json(v)); }
  bool binary(binary_t&) { return false; }
  bool string(string_t& v) {
    if (Capturing()) return Scalar(Json(std::move(v)));
    if (in_ports_) return false;
    if (in_meta_) {
      in.meta[std::move(key_)] = std::move(v);
      return true;
    }
    if (depth_ != 1) return false;
    if (std::string* slot = StringSlot(field_)) {
      *slot = std::move(v);
      return true;
    }
    switch (field_) {
      case kStartedAt:
        started = std::move(v);
        return true;
      case kUpdatedAt:
        updated = std::move(v);
        return true;
      case kLeaseId:
        return ParseLeaseHex(v, &in.lease_id);
      case kUnknown:
      case kSystemInfo:
      case kPerformance:
        return Scalar(Json(std::move(v)));
      default:
        return false;  // ports, weight, meta: not a string
    }
  }
  bool start_object(std::size_t) {
    if (Capturing()) return Open(Json::object());
    if (depth_ == 0) {
      depth_ = 1;
      return true;
    }
    if (depth_ != 1) return false;
    if (field_ == kPorts) {
      in_ports_ = true;
    } else if (field_ == kMeta) {
      in_meta_ = true;
    } else if (!StartCapture()) {
      return false;
    } else {
      return Open(Json::object());
    }
    depth_ = 2;
    return true;
  }
  bool start_array(std::size_t) {
    if (Capturing()) return Open(Json::array());
    if (depth_ == 1 && StartCapture()) return Open(Json::array());
    return false;
  }
  bool key(string_t& k) {
    if (!capture_.empty()) {
      key_ = std::move(k);
      return true;
    }
    if (in_ports_ || in_meta_) {
      key_ = std::move(k);
      return true;
    }
    field_ = FieldOf(k);
    if (field_ == kUnknown) {
      key_ = std::move(k);
      return true;
    }
    if (seen_ & (1u << field_)) return false;  // a known field twice: the general path decides
    seen_ |= 1u << field_;
    return true;
  }
  bool end_object() { return Close(); }
  bool end_array() { return Close(); }

  // After a complete parse: the checks the general path makes, or false (it decides).
  bool Finish() {
    if (in.instance_id.empty() || in.type.empty()) return false;
    if (!status.empty()) {
      absl::StatusOr<InstanceStatus> s = ParseInstanceStatus(status);
      if (!s.ok()) return false;
      in.status = *s;
    }
    if (!IsNullOrEmpty(system_info)) in.system_info = std::move(system_info);
    if (!IsNullOrEmpty(performance)) {
      if (!performance.is_object()) return false;
      in.performance = std::move(performance);
    }
    return (!started || ParseTime(*started, &in.started_at)) &&
           (!updated || ParseTime(*updated, &in.updated_at));
  }

 private:
  static bool IsNullOrEmpty(const Json& j) { return j.is_null() || (j.is_object() && j.empty()); }

  static bool ParseTime(const std::string& s, absl::Time* out) {
    std::string err;
    return ParseTimestampFast(s, out) || absl::ParseTime(absl::RFC3339_full, s, out, &err);
  }

  // The encoder writes the known fields in kKnownFields order (those it omits skipped), so
  // the search starts at the field after the last one found: one or two comparisons per key
  // instead of up to 19 (a linear search from the start was ~20 % of a decode).
  Field FieldOf(std::string_view k) {
    for (int n = 0, i = next_field_; n < kUnknown; ++n, i = i + 1 == kUnknown ? 0 : i + 1) {
      if (kKnownFields[i] == k) {
        next_field_ = i + 1 == kUnknown ? 0 : i + 1;
        return static_cast<Field>(i);
      }
    }
    return kUnknown;
  }

  std::string* StringSlot(Field f) {
    switch (f) {
      case kInstanceId:
        return &in.instance_id;
      case kType:
        return &in.type;
      case kGroup:
        return &in.group;
      case kHostname:
        return &in.hostname;
      case kPublicIp:
        return &in.public_ip;
      case kPrivateIp:
        return &in.private_ip;
      case kStatus:
        return &status;
      case kCustomState:
        return &in.custom_state;
      case kVersion:
        return &in.version;
      case kRegion:
        return &in.region;
      case kZone:
        return &in.zone;
      default:
        return nullptr;
    }
  }

  bool Capturing() const { return !capture_.empty(); }

  // A top-level value that is kept as JSON: systemInfo, performance, an unknown field.
  bool StartCapture() {
    if (field_ == kSystemInfo) {
      capture_root_ = &system_info;
    } else if (field_ == kPerformance) {
      capture_root_ = &performance;
    } else if (field_ == kUnknown) {
      capture_root_ = &in.extra[std::move(key_)];
    } else {
      return false;
    }
    return true;
  }

  // Places `v` where the value being read goes; containers stay open (capture_).
  Json* Place(Json v) {
    if (capture_.empty()) {
      *capture_root_ = std::move(v);
      return capture_root_;
    }
    Json& parent = *capture_.back();
    if (parent.is_array()) {
      parent.push_back(std::move(v));
      return &parent.back();
    }
    Json& slot = parent[std::move(key_)];
    slot = std::move(v);
    return &slot;
  }
  bool Open(Json container) {
    capture_.push_back(Place(std::move(container)));
    return true;
  }
  bool Close() {
    if (!capture_.empty()) {
      capture_.pop_back();
      if (capture_.empty()) capture_root_ = nullptr;
      return true;
    }
    if (in_ports_ || in_meta_) {
      in_ports_ = in_meta_ = false;
      depth_ = 1;
      return true;
    }
    depth_ = 0;  // the instance's own object
    return true;
  }

  bool Scalar(Json v) {
    if (Capturing()) {
      Place(std::move(v));
      return true;
    }
    if (in_meta_) return false;  // a non-string meta value: the general path dumps it
    if (in_ports_) {
      int64_t port = 0;
      if (!GetIntInRange(v, kMinPort, kMaxPort, &port)) return false;
      in.ports[std::move(key_)] = static_cast<int>(port);
      return true;
    }
    if (depth_ != 1) return false;
    if (v.is_null()) {
      // Null keeps the default, except for unknown fields (kept as null, as the general path
      // does) and the required ones (the general path says "missing").
      if (field_ == kUnknown) {
        in.extra[std::move(key_)] = nullptr;
        return true;
      }
      return field_ != kInstanceId && field_ != kType;
    }
    switch (field_) {
      case kWeight: {
        int64_t w = 0;
        if (!GetIntInRange(v, kMinWeight, kMaxWeight, &w)) return false;
        in.weight = static_cast<int>(w);
        return true;
      }
      case kLeaseId:
        if (const auto* u = v.get_ptr<const Json::number_unsigned_t*>()) {
          in.lease_id = static_cast<int64_t>(*u);
          return true;
        }
        if (const auto* i = v.get_ptr<const Json::number_integer_t*>()) {
          in.lease_id = *i;
          return true;
        }
        return false;
      case kSystemInfo:
        system_info = std::move(v);
        return true;
      case kPerformance:
        return false;  // not an object: the general path gives the error
      case kUnknown:
        in.extra[std::move(key_)] = std::move(v);
        return true;
      default:
        return false;  // a number or bool where a string, ports or meta belong
    }
  }

  int depth_ = 0;  // 0 before/after the instance object, 1 inside it, 2 inside ports or meta
  Field field_ = kUnknown;
  uint32_t seen_ = 0;   // known fields read (bit per Field)
  int next_field_ = 0;  // where FieldOf starts looking
  bool in_ports_ = false, in_meta_ = false;
  std::string key_;  // the key of the value being read (unknown field, port, meta, nested)
  Json* capture_root_ = nullptr;
  std::vector<Json*> capture_;  // open containers of a captured value
};

// Two digits at s[i] as 0..99, or -1.
int TwoDigits(std::string_view s, size_t i) {
  const auto d = [&](size_t j) { return s[j] >= '0' && s[j] <= '9' ? s[j] - '0' : -100; };
  const int v = d(i) * 10 + d(i + 1);
  return v < 0 ? -1 : v;
}

// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
int64_t DaysFromCivil(int64_t y, int m, int d) {
  y -= m <= 2 ? 1 : 0;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const int64_t yoe = y - era * 400;
  const int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

}  // namespace

bool ParseTimestampFast(std::string_view s, absl::Time* out) {
  // 0123456789012345678
  // YYYY-MM-DDTHH:MM:SS[.fffffffff]Z
  if (s.size() < 20 || s.size() > 30 || s[4] != '-' || s[7] != '-' || s[10] != 'T' ||
      s[13] != ':' || s[16] != ':' || s.back() != 'Z') {
    return false;
  }
  const int century = TwoDigits(s, 0), year2 = TwoDigits(s, 2), month = TwoDigits(s, 5),
            day = TwoDigits(s, 8), hour = TwoDigits(s, 11), minute = TwoDigits(s, 14),
            second = TwoDigits(s, 17);
  if (century < 0 || year2 < 0 || month < 1 || month > 12 || day < 1 || hour < 0 || hour > 23 ||
      minute < 0 || minute > 59 || second < 0 || second > 59) {
    return false;
  }
  const int year = century * 100 + year2;
  const bool leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
  constexpr int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (day > kDays[month - 1] + (month == 2 && leap ? 1 : 0)) return false;
  int64_t nanos = 0;
  if (s.size() > 20) {  // '.' and 1..9 digits before the 'Z'
    if (s[19] != '.' || s.size() == 21) return false;
    int64_t scale = 1000000000;
    for (size_t i = 20; i + 1 < s.size(); ++i) {
      if (s[i] < '0' || s[i] > '9') return false;
      scale /= 10;
      nanos += (s[i] - '0') * scale;
    }
  }
  const int64_t seconds =
      DaysFromCivil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second;
  *out = absl::FromUnixSeconds(seconds) + absl::Nanoseconds(nanos);
  return true;
}

bool DecodeInstanceFastInto(std::string_view json, Instance* out) {
  Handler h(out);
  return json_text::JsonScanner<Handler>(json, &h, kMaxInstanceNesting).Document() && h.Finish();
}

std::optional<Instance> DecodeInstanceFast(std::string_view json) {
  Instance in;
  if (!DecodeInstanceFastInto(json, &in)) return std::nullopt;
  return in;
}

}  // namespace discovery::instance_internal
