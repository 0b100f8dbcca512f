// EncodeInstance: Instance -> the canonical JSON text, written straight into one string.
//
// The same bytes as the general path (instance_internal::EncodeInstanceGeneral: one nlohmann
// value per field, each dumped), which it replaced because registering, every status or
// performance update and discoveryd's answers each encode an instance: ~20 us there, a few
// here (bench/micro_bench.cc BM_EncodeInstance). Strings that are not well-formed UTF-8 and
// the free-form JSON fields (systemInfo, performance, unknown fields) still go through
// nlohmann's dump, so what is written never differs. The unit test and the fuzz target compare
// the two paths.
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "discovery/instance.h"
#include "instance_internal.h"
#include "json_text.h"

namespace discovery {

namespace {

using Json = nlohmann::json;
using namespace instance_internal;  // NOLINT(build/namespaces): the codec's shared helpers

void String(std::string* out, std::string_view s) {
  if (!json_text::AppendString(out, s)) *out += Dump(Json(std::string(s)));  // (replaces)
}

// ,"name": (the known field names are plain ASCII: written as they are)
void Key(std::string* out, std::string_view name) {
  *out += ",\"";
  out->append(name);
  *out += "\":";
}

void Field(std::string* out, std::string_view name, std::string_view value) {
  Key(out, name);
  String(out, value);
}

}  // namespace

std::string EncodeInstance(const Instance& in) {
  std::string out;
  out.reserve(256 + in.hostname.size() + in.custom_state.size());
  out += "{\"instanceId\":";
  String(&out, in.instance_id);
  Field(&out, "type", in.type);
  Field(&out, "group", in.group);
  Field(&out, "hostname", in.hostname);
  Field(&out, "publicIp", in.public_ip);
  Field(&out, "privateIp", in.private_ip);
  Key(&out, "ports");
  out += '{';
  for (const auto& [name, port] : in.ports) {
    if (out.back() != '{') out += ',';
    String(&out, name);
    absl::StrAppend(&out, ":", port);
  }
  out += '}';
  Field(&out, "status", ToString(in.status));
  Field(&out, "customState", in.custom_state);
  Field(&out, "version", in.version);
  Field(&out, "region", in.region);
  Field(&out, "zone", in.zone);
  Key(&out, "weight");
  absl::StrAppend(&out, in.weight);
  Key(&out, "meta");
  out += '{';
  for (const auto& [key, value] : in.meta) {
    if (out.back() != '{') out += ',';
    String(&out, key);
    out += ':';
    String(&out, value);
  }
  out += '}';
  // Null (the default) reads as empty, as in the general path.
  Key(&out, "systemInfo");
  out += in.system_info.is_null() ? "{}" : Dump(in.system_info);
  Key(&out, "performance");
  out += in.performance.is_object() ? Dump(in.performance) : "{}";
  if (!IsUnsetTime(in.started_at)) Field(&out, "startedAt", FormatTimestamp(in.started_at));
  if (!IsUnsetTime(in.updated_at)) Field(&out, "updatedAt", FormatTimestamp(in.updated_at));
  if (in.lease_id != 0) Field(&out, "leaseId", FormatLeaseId(in.lease_id));
  if (const auto* extra = in.extra.get_ptr<const Json::object_t*>()) {
    for (const auto& [key, value] : *extra) {
      if (IsKnownField(key)) continue;
      out += ',';
      String(&out, key);
      out += ':';
      out += Dump(value);
    }
  }
  out += '}';
  return out;
}

}  // namespace discovery
