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
#include "util/sync.h"

namespace discovery {
namespace {

using Json = nlohmann::json;

constexpr int kMaxNameLength = 64;
constexpr int kMinPort = 1;
constexpr int kMaxPort = 65535;
constexpr int kMinWeight = 0;
constexpr int kMaxWeight = 10000;

// Known top-level fields, in the order EncodeInstance writes them.
constexpr std::array<std::string_view, 19> kKnownFields = {
    "instanceId", "type",        "group",     "hostname",  "publicIp", "privateIp", "ports",
    "status",     "customState", "version",   "region",    "zone",     "weight",    "meta",
    "systemInfo", "performance", "startedAt", "updatedAt", "leaseId"};

bool IsKnownField(std::string_view key) {
  for (std::string_view known : kKnownFields) {
    if (known == key) return true;
  }
  return false;
}

// Debian's abseil is built with its own absl::string_view (not std::string_view).
absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// A printable, bounded rendering of a user-supplied string for error messages.
std::string Quote(std::string_view s) {
  constexpr size_t kMaxShown = 80;
  std::string out = "\"";
  if (s.size() > kMaxShown) {
    absl::StrAppend(&out, absl::CHexEscape(AV(s.substr(0, kMaxShown))), "...");
  } else {
    absl::StrAppend(&out, absl::CHexEscape(AV(s)));
  }
  out += '"';
  return out;
}

// Dumps compactly; invalid UTF-8 is replaced instead of throwing.
std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

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

// ---- time ----

constexpr char kTimeFormat[] = "%Y-%m-%d%ET%H:%M:%E3SZ";

std::string FormatTimestamp(absl::Time t) {
  return absl::FormatTime(kTimeFormat, t, absl::UTCTimeZone());
}

bool IsUnsetTime(absl::Time t) { return t == absl::InfinitePast() || t == absl::InfiniteFuture(); }

// ---- lease id ----

std::string FormatLeaseId(int64_t id) { return absl::StrCat(absl::Hex(static_cast<uint64_t>(id))); }

// Parses 1..16 hex digits (either case, optional 0x prefix) as the bit pattern of an int64.
bool ParseLeaseHex(std::string_view s, int64_t* out) {
  if (s.size() >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) s.remove_prefix(2);
  if (s.empty() || s.size() > 16) return false;
  uint64_t v = 0;
  for (char c : s) {
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else {
      return false;
    }
    v = (v << 4) | static_cast<uint64_t>(d);
  }
  *out = static_cast<int64_t>(v);
  return true;
}

// ---- decoding helpers ----

absl::Status FieldError(std::string_view field, std::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat("field \"", AV(field), "\": ", AV(problem)));
}

absl::string_view TypeName(const Json& j) { return j.type_name(); }

// Reads an integral JSON number (integers, or floats with an integral value) in [lo, hi].
bool GetIntInRange(const Json& j, int64_t lo, int64_t hi, int64_t* out) {
  // Unsigned first: nlohmann's is_number_integer() (and so get_ptr<number_integer_t>) is
  // also true for unsigned values.
  if (const auto* u = j.get_ptr<const Json::number_unsigned_t*>()) {
    if (hi < 0 || *u > static_cast<uint64_t>(hi) || (lo > 0 && *u < static_cast<uint64_t>(lo))) {
      return false;
    }
    *out = static_cast<int64_t>(*u);
    return true;
  }
  if (const auto* i = j.get_ptr<const Json::number_integer_t*>()) {
    if (*i < lo || *i > hi) return false;
    *out = *i;
    return true;
  }
  if (const auto* f = j.get_ptr<const Json::number_float_t*>()) {
    double d = *f;
    if (!std::isfinite(d) || d != std::floor(d)) return false;
    if (d < static_cast<double>(lo) || d > static_cast<double>(hi)) return false;
    *out = static_cast<int64_t>(d);
    return true;
  }
  return false;
}

// Optional string field: absent or null keeps `*out`.
absl::Status ReadString(const Json::object_t& obj, std::string_view field, std::string* out) {
  auto it = obj.find(std::string(field));
  if (it == obj.end() || it->second.is_null()) return absl::OkStatus();
  const auto* s = it->second.get_ptr<const Json::string_t*>();
  if (s == nullptr) {
    return FieldError(field, absl::StrCat("expected string, got ", TypeName(it->second)));
  }
  *out = *s;
  return absl::OkStatus();
}

absl::Status ReadRequiredString(const Json::object_t& obj, std::string_view field,
                                std::string* out) {
  auto it = obj.find(std::string(field));
  if (it == obj.end() || it->second.is_null()) return FieldError(field, "missing");
  const auto* s = it->second.get_ptr<const Json::string_t*>();
  if (s == nullptr) {
    return FieldError(field, absl::StrCat("expected string, got ", TypeName(it->second)));
  }
  if (s->empty()) return FieldError(field, "must not be empty");
  *out = *s;
  return absl::OkStatus();
}

absl::Status ReadTime(const Json::object_t& obj, std::string_view field, absl::Time* out) {
  auto it = obj.find(std::string(field));
  if (it == obj.end() || it->second.is_null()) return absl::OkStatus();
  const auto* s = it->second.get_ptr<const Json::string_t*>();
  if (s == nullptr) {
    return FieldError(field,
                      absl::StrCat("expected RFC3339 time string, got ", TypeName(it->second)));
  }
  absl::Time t;
  std::string err;
  if (!absl::ParseTime(absl::RFC3339_full, *s, &t, &err)) {
    return FieldError(field, absl::StrCat("expected RFC3339 time, got ", Quote(*s)));
  }
  *out = t;
  return absl::OkStatus();
}

absl::Status ReadLeaseId(const Json::object_t& obj, int64_t* out) {
  constexpr std::string_view kField = "leaseId";
  auto it = obj.find(std::string(kField));
  if (it == obj.end() || it->second.is_null()) return absl::OkStatus();
  const Json& v = it->second;
  if (const auto* s = v.get_ptr<const Json::string_t*>()) {
    if (!ParseLeaseHex(*s, out)) {
      return FieldError(kField,
                        absl::StrCat("expected hex string of 1..16 digits, got ", Quote(*s)));
    }
    return absl::OkStatus();
  }
  if (const auto* u = v.get_ptr<const Json::number_unsigned_t*>()) {
    *out = static_cast<int64_t>(*u);  // bit pattern, as for hex strings
    return absl::OkStatus();
  }
  if (const auto* i = v.get_ptr<const Json::number_integer_t*>()) {
    *out = *i;
    return absl::OkStatus();
  }
  return FieldError(kField, absl::StrCat("expected hex string or integer, got ", TypeName(v)));
}

absl::Status ReadPorts(const Json::object_t& obj, std::map<std::string, int>* out) {
  auto it = obj.find("ports");
  if (it == obj.end() || it->second.is_null()) return absl::OkStatus();
  const auto* ports = it->second.get_ptr<const Json::object_t*>();
  if (ports == nullptr) {
    return FieldError("ports", absl::StrCat("expected object, got ", TypeName(it->second)));
  }
  for (const auto& [name, value] : *ports) {
    int64_t port = 0;
    if (!GetIntInRange(value, kMinPort, kMaxPort, &port)) {
      return FieldError(absl::StrCat("ports.", absl::CHexEscape(name)),
                        "expected integer 1..65535");
    }
    (*out)[name] = static_cast<int>(port);
  }
  return absl::OkStatus();
}

absl::Status ReadMeta(const Json::object_t& obj, std::map<std::string, std::string>* out) {
  auto it = obj.find("meta");
  if (it == obj.end() || it->second.is_null()) return absl::OkStatus();
  const auto* meta = it->second.get_ptr<const Json::object_t*>();
  if (meta == nullptr) {
    return FieldError("meta", absl::StrCat("expected object, got ", TypeName(it->second)));
  }
  for (const auto& [key, value] : *meta) {
    if (const auto* s = value.get_ptr<const Json::string_t*>()) {
      (*out)[key] = *s;
    } else {
      (*out)[key] = Dump(value);
    }
  }
  return absl::OkStatus();
}

// Known fields in encoding order, with their JSON values (omitted fields are skipped).
std::vector<std::pair<std::string_view, Json>> KnownFields(const Instance& in) {
  std::vector<std::pair<std::string_view, Json>> f;
  f.reserve(kKnownFields.size());
  f.emplace_back("instanceId", in.instance_id);
  f.emplace_back("type", in.type);
  f.emplace_back("group", in.group);
  f.emplace_back("hostname", in.hostname);
  f.emplace_back("publicIp", in.public_ip);
  f.emplace_back("privateIp", in.private_ip);
  Json ports = Json::object();
  for (const auto& [name, port] : in.ports) ports[name] = port;
  f.emplace_back("ports", std::move(ports));
  f.emplace_back("status", std::string(ToString(in.status)));
  f.emplace_back("customState", in.custom_state);
  f.emplace_back("version", in.version);
  f.emplace_back("region", in.region);
  f.emplace_back("zone", in.zone);
  f.emplace_back("weight", in.weight);
  Json meta = Json::object();
  for (const auto& [key, value] : in.meta) meta[key] = value;
  f.emplace_back("meta", std::move(meta));
  f.emplace_back("systemInfo", in.system_info);
  f.emplace_back("performance", in.performance.is_object() ? in.performance : Json::object());
  if (!IsUnsetTime(in.started_at)) f.emplace_back("startedAt", FormatTimestamp(in.started_at));
  if (!IsUnsetTime(in.updated_at)) f.emplace_back("updatedAt", FormatTimestamp(in.updated_at));
  if (in.lease_id != 0) f.emplace_back("leaseId", FormatLeaseId(in.lease_id));
  return f;
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

// ---- codec ----

nlohmann::json InstanceToJson(const Instance& instance) {
  Json out = Json::object();
  if (const auto* extra = instance.extra.get_ptr<const Json::object_t*>()) {
    for (const auto& [key, value] : *extra) {
      if (!IsKnownField(key)) out[key] = value;
    }
  }
  for (auto& [key, value] : KnownFields(instance)) out[std::string(key)] = std::move(value);
  return out;
}

std::string EncodeInstance(const Instance& instance) {
  std::string out = "{";
  bool first = true;
  auto append = [&](std::string_view key, const Json& value) {
    if (!first) out += ',';
    first = false;
    out += Dump(Json(std::string(key)));
    out += ':';
    out += Dump(value);
  };
  for (const auto& [key, value] : KnownFields(instance)) append(key, value);
  if (const auto* extra = instance.extra.get_ptr<const Json::object_t*>()) {
    for (const auto& [key, value] : *extra) {
      if (!IsKnownField(key)) append(key, value);
    }
  }
  out += '}';
  return out;
}

absl::StatusOr<Instance> InstanceFromJson(const nlohmann::json& json) {
  const auto* obj = json.get_ptr<const Json::object_t*>();
  if (obj == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("instance JSON: expected an object, got ", TypeName(json)));
  }
  Instance in;
  absl::Status st;
  if (!(st = ReadRequiredString(*obj, "instanceId", &in.instance_id)).ok()) return st;
  if (!(st = ReadRequiredString(*obj, "type", &in.type)).ok()) return st;
  if (!(st = ReadString(*obj, "group", &in.group)).ok()) return st;
  if (!(st = ReadString(*obj, "hostname", &in.hostname)).ok()) return st;
  if (!(st = ReadString(*obj, "publicIp", &in.public_ip)).ok()) return st;
  if (!(st = ReadString(*obj, "privateIp", &in.private_ip)).ok()) return st;
  if (!(st = ReadPorts(*obj, &in.ports)).ok()) return st;

  std::string status_name;
  if (!(st = ReadString(*obj, "status", &status_name)).ok()) return st;
  if (!status_name.empty()) {
    absl::StatusOr<InstanceStatus> status = ParseInstanceStatus(status_name);
    if (!status.ok()) {
      return FieldError("status", absl::StrCat("expected one of initializing, ready, "
                                               "shutting_down, error; got ",
                                               Quote(status_name)));
    }
    in.status = *status;
  }

  if (!(st = ReadString(*obj, "customState", &in.custom_state)).ok()) return st;
  if (!(st = ReadString(*obj, "version", &in.version)).ok()) return st;
  if (!(st = ReadString(*obj, "region", &in.region)).ok()) return st;
  if (!(st = ReadString(*obj, "zone", &in.zone)).ok()) return st;

  if (auto it = obj->find("weight"); it != obj->end() && !it->second.is_null()) {
    int64_t weight = 0;
    if (!GetIntInRange(it->second, kMinWeight, kMaxWeight, &weight)) {
      return FieldError("weight", "expected integer 0..10000");
    }
    in.weight = static_cast<int>(weight);
  }

  if (!(st = ReadMeta(*obj, &in.meta)).ok()) return st;

  if (auto it = obj->find("systemInfo"); it != obj->end() && !it->second.is_null()) {
    in.system_info = it->second;
  }
  if (auto it = obj->find("performance"); it != obj->end() && !it->second.is_null()) {
    if (!it->second.is_object()) {
      return FieldError("performance", absl::StrCat("expected object, got ", TypeName(it->second)));
    }
    in.performance = it->second;
  }

  if (!(st = ReadTime(*obj, "startedAt", &in.started_at)).ok()) return st;
  if (!(st = ReadTime(*obj, "updatedAt", &in.updated_at)).ok()) return st;
  if (!(st = ReadLeaseId(*obj, &in.lease_id)).ok()) return st;

  for (const auto& [key, value] : *obj) {
    if (!IsKnownField(key)) in.extra[key] = value;
  }
  return in;
}

bool JsonNestingWithin(std::string_view s, int limit) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // skip the escaped character
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    switch (c) {
      case '"':
        in_string = true;
        break;
      case '[':
      case '{':
        if (++depth > limit) return false;
        break;
      case ']':
      case '}':
        if (depth > 0) --depth;
        break;
      default:
        break;
    }
  }
  return true;
}

absl::StatusOr<Instance> DecodeInstance(std::string_view json, size_t max_bytes) {
  if (json.size() > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("instance JSON: ", json.size(), " bytes exceeds the limit of ", max_bytes));
  }
  if (!JsonNestingWithin(json)) {
    return absl::InvalidArgumentError(
        absl::StrCat("instance JSON: nesting deeper than ", kMaxInstanceNesting));
  }
  Json parsed = Json::parse(json.begin(), json.end(), /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    return absl::InvalidArgumentError("instance JSON: not valid JSON");
  }
  return InstanceFromJson(parsed);
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
