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

// The known fields in instance_internal::KnownField's order (FieldOf maps a key to its index);
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
    std::string err;
    if (started && !absl::ParseTime(absl::RFC3339_full, *started, &in.started_at, &err)) {
      return false;
    }
    if (updated && !absl::ParseTime(absl::RFC3339_full, *updated, &in.updated_at, &err)) {
      return false;
    }
    return true;
  }

 private:
  static bool IsNullOrEmpty(const Json& j) { return j.is_null() || (j.is_object() && j.empty()); }

  static Field FieldOf(std::string_view k) {
    for (int i = 0; i < kUnknown; ++i) {
      if (KnownField(i) == k) return static_cast<Field>(i);
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
  uint32_t seen_ = 0;  // known fields read (bit per Field)
  bool in_ports_ = false, in_meta_ = false;
  std::string key_;  // the key of the value being read (unknown field, port, meta, nested)
  Json* capture_root_ = nullptr;
  std::vector<Json*> capture_;  // open containers of a captured value
};

}  // namespace

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
