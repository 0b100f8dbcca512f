// The JSON codec of discovery::Instance (EncodeInstance, DecodeInstance and their helpers).
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
#include "discovery/instance.h"
#include "instance_internal.h"
#include "util/sync.h"

namespace discovery {
namespace {

using Json = nlohmann::json;
using namespace instance_internal;  // NOLINT(build/namespaces): this file's own helpers

}  // namespace

// Shared with the fast encoder (instance_encode.cc): declared in instance_internal.h.
namespace instance_internal {

bool IsKnownField(std::string_view key) {
  for (std::string_view known : kKnownFields) {
    if (known == key) return true;
  }
  return false;
}

// Dumps compactly; invalid UTF-8 is replaced instead of throwing.
std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

// ---- time ----

constexpr char kTimeFormat[] = "%Y-%m-%d%ET%H:%M:%E3SZ";

std::string FormatTimestamp(absl::Time t) {
  return absl::FormatTime(kTimeFormat, t, absl::UTCTimeZone());
}

bool IsUnsetTime(absl::Time t) { return t == absl::InfinitePast() || t == absl::InfiniteFuture(); }

// ---- lease id ----

std::string FormatLeaseId(int64_t id) { return absl::StrCat(absl::Hex(static_cast<uint64_t>(id))); }

}  // namespace instance_internal

bool instance_internal::ParseLeaseHex(std::string_view s, int64_t* out) {
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

namespace {

// ---- decoding helpers ----

absl::Status FieldError(std::string_view field, std::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat("field \"", AV(field), "\": ", AV(problem)));
}

absl::string_view TypeName(const Json& j) { return j.type_name(); }

}  // namespace

bool instance_internal::GetIntInRange(const Json& j, int64_t lo, int64_t hi, int64_t* out) {
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

namespace {

bool IsNullOrEmptyObject(const Json& j) { return j.is_null() || (j.is_object() && j.empty()); }

// Copies `from` into `*to`, or moves it when `owned`: DecodeInstance parsed the JSON itself and
// drops it afterwards, so what the instance keeps is taken, not copied (no second allocation).
template <class T>
void Take(const T& from, T* to, bool owned) {
  if (owned) {
    *to = std::move(const_cast<T&>(from));  // NOLINT: non-const where owned (see above)
  } else {
    *to = from;
  }
}

// Optional string field: absent or null keeps `*out`.
absl::Status ReadString(const Json::object_t& obj, std::string_view field, std::string* out,
                        bool owned) {
  auto it = obj.find(std::string(field));
  if (it == obj.end() || it->second.is_null()) return absl::OkStatus();
  const auto* s = it->second.get_ptr<const Json::string_t*>();
  if (s == nullptr) {
    return FieldError(field, absl::StrCat("expected string, got ", TypeName(it->second)));
  }
  Take(*s, out, owned);
  return absl::OkStatus();
}

absl::Status ReadRequiredString(const Json::object_t& obj, std::string_view field, std::string* out,
                                bool owned) {
  auto it = obj.find(std::string(field));
  if (it == obj.end() || it->second.is_null()) return FieldError(field, "missing");
  const auto* s = it->second.get_ptr<const Json::string_t*>();
  if (s == nullptr) {
    return FieldError(field, absl::StrCat("expected string, got ", TypeName(it->second)));
  }
  if (s->empty()) return FieldError(field, "must not be empty");
  Take(*s, out, owned);
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

absl::Status ReadMeta(const Json::object_t& obj, std::map<std::string, std::string>* out,
                      bool owned) {
  auto it = obj.find("meta");
  if (it == obj.end() || it->second.is_null()) return absl::OkStatus();
  const auto* meta = it->second.get_ptr<const Json::object_t*>();
  if (meta == nullptr) {
    return FieldError("meta", absl::StrCat("expected object, got ", TypeName(it->second)));
  }
  for (const auto& [key, value] : *meta) {
    if (const auto* s = value.get_ptr<const Json::string_t*>()) {
      Take(*s, &(*out)[key], owned);
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
  // Null (the default) reads as empty: written as {} as before the default was an object.
  f.emplace_back("systemInfo", in.system_info.is_null() ? Json::object() : in.system_info);
  f.emplace_back("performance", in.performance.is_object() ? in.performance : Json::object());
  if (!IsUnsetTime(in.started_at)) f.emplace_back("startedAt", FormatTimestamp(in.started_at));
  if (!IsUnsetTime(in.updated_at)) f.emplace_back("updatedAt", FormatTimestamp(in.updated_at));
  if (in.lease_id != 0) f.emplace_back("leaseId", FormatLeaseId(in.lease_id));
  return f;
}

}  // namespace

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

std::string instance_internal::EncodeInstanceGeneral(const Instance& instance) {
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

namespace {

// `owned`: `json` is DecodeInstance's own parse, taken apart here (see Take).
absl::StatusOr<Instance> FromJson(const Json& json, bool owned) {
  const auto* obj = json.get_ptr<const Json::object_t*>();
  if (obj == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("instance JSON: expected an object, got ", TypeName(json)));
  }
  Instance in;
  absl::Status st;
  if (!(st = ReadRequiredString(*obj, "instanceId", &in.instance_id, owned)).ok()) return st;
  if (!(st = ReadRequiredString(*obj, "type", &in.type, owned)).ok()) return st;
  if (!(st = ReadString(*obj, "group", &in.group, owned)).ok()) return st;
  if (!(st = ReadString(*obj, "hostname", &in.hostname, owned)).ok()) return st;
  if (!(st = ReadString(*obj, "publicIp", &in.public_ip, owned)).ok()) return st;
  if (!(st = ReadString(*obj, "privateIp", &in.private_ip, owned)).ok()) return st;
  if (!(st = ReadPorts(*obj, &in.ports)).ok()) return st;

  std::string status_name;
  if (!(st = ReadString(*obj, "status", &status_name, owned)).ok()) return st;
  if (!status_name.empty()) {
    absl::StatusOr<InstanceStatus> status = ParseInstanceStatus(status_name);
    if (!status.ok()) {
      return FieldError("status", absl::StrCat("expected one of initializing, ready, "
                                               "shutting_down, error; got ",
                                               Quote(status_name)));
    }
    in.status = *status;
  }

  if (!(st = ReadString(*obj, "customState", &in.custom_state, owned)).ok()) return st;
  if (!(st = ReadString(*obj, "version", &in.version, owned)).ok()) return st;
  if (!(st = ReadString(*obj, "region", &in.region, owned)).ok()) return st;
  if (!(st = ReadString(*obj, "zone", &in.zone, owned)).ok()) return st;

  if (auto it = obj->find("weight"); it != obj->end() && !it->second.is_null()) {
    int64_t weight = 0;
    if (!GetIntInRange(it->second, kMinWeight, kMaxWeight, &weight)) {
      return FieldError("weight", "expected integer 0..10000");
    }
    in.weight = static_cast<int>(weight);
  }

  if (!(st = ReadMeta(*obj, &in.meta, owned)).ok()) return st;

  // An empty object stays the null default (see Instance): every registrar writes
  // "systemInfo":{}, and holding it decoded would cost an allocation per cached instance.
  if (auto it = obj->find("systemInfo"); it != obj->end() && !IsNullOrEmptyObject(it->second)) {
    Take(it->second, &in.system_info, owned);
  }
  if (auto it = obj->find("performance"); it != obj->end() && !IsNullOrEmptyObject(it->second)) {
    if (!it->second.is_object()) {
      return FieldError("performance", absl::StrCat("expected object, got ", TypeName(it->second)));
    }
    Take(it->second, &in.performance, owned);
  }

  if (!(st = ReadTime(*obj, "startedAt", &in.started_at)).ok()) return st;
  if (!(st = ReadTime(*obj, "updatedAt", &in.updated_at)).ok()) return st;
  if (!(st = ReadLeaseId(*obj, &in.lease_id)).ok()) return st;

  for (const auto& [key, value] : *obj) {
    if (!IsKnownField(key)) Take(value, &in.extra[key], owned);
  }
  return in;
}

}  // namespace

absl::StatusOr<Instance> InstanceFromJson(const nlohmann::json& json) {
  return FromJson(json, /*owned=*/false);
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
  Instance in;
  if (absl::Status s = instance_internal::DecodeInstanceInto(json, max_bytes, &in); !s.ok()) {
    return s;
  }
  return in;
}

absl::Status instance_internal::DecodeInstanceInto(std::string_view json, size_t max_bytes,
                                                   Instance* out) {
  if (json.size() > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("instance JSON: ", json.size(), " bytes exceeds the limit of ", max_bytes));
  }
  // (The fast path bounds its own nesting; the general one recurses, so it is checked first.)
  if (DecodeInstanceFastInto(json, out)) return absl::OkStatus();
  if (!JsonNestingWithin(json)) {
    return absl::InvalidArgumentError(
        absl::StrCat("instance JSON: nesting deeper than ", kMaxInstanceNesting));
  }
  absl::StatusOr<Instance> general = DecodeInstanceGeneral(json);
  if (!general.ok()) return general.status();
  *out = *std::move(general);  // (replaces whatever the fast path had filled in)
  return absl::OkStatus();
}

absl::StatusOr<Instance> instance_internal::DecodeInstanceGeneral(std::string_view json) {
  Json parsed = Json::parse(json.begin(), json.end(), /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    return absl::InvalidArgumentError("instance JSON: not valid JSON");
  }
  return FromJson(parsed, /*owned=*/true);
}

}  // namespace discovery
