#include "output.h"

#include <algorithm>
#include <array>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace discoveryctl {
namespace {

constexpr size_t kColumns = 10;
using Row = std::array<std::string, kColumns>;

std::string OrDash(std::string s) { return s.empty() ? std::string("-") : s; }

std::string FormatTtl(const StoredInstance& in) {
  if (in.lease_id == 0 || !in.ttl_left.has_value()) return "-";
  if (*in.ttl_left < 0) return "expired";
  return absl::StrCat(*in.ttl_left, "s");
}

std::string Dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

std::string FormatPorts(const std::map<std::string, int>& ports) {
  if (ports.empty()) return "-";
  return absl::StrJoin(ports, ",", [](std::string* out, const auto& port) {
    absl::StrAppend(out, port.first, "=", port.second);
  });
}

std::string FormatAge(absl::Duration age) {
  if (age < absl::ZeroDuration() || age == absl::InfiniteDuration()) return "-";
  int64_t s = absl::ToInt64Seconds(age);
  if (s < 60) return absl::StrCat(s, "s");
  if (s < 3600) return absl::StrCat(s / 60, "m", s % 60, "s");
  if (s < 86400) return absl::StrCat(s / 3600, "h", (s % 3600) / 60, "m");
  return absl::StrCat(s / 86400, "d", (s % 86400) / 3600, "h");
}

std::string FormatTable(const std::vector<StoredInstance>& instances, absl::Time now) {
  std::vector<Row> rows;
  rows.reserve(instances.size() + 1);
  rows.push_back({"TYPE", "GROUP", "ID", "ADDRESS", "PORTS", "STATUS", "CUSTOM-STATE", "VERSION",
                  "TTL", "AGE"});
  for (const StoredInstance& s : instances) {
    const discovery::Instance& in = s.instance;
    std::string age = in.started_at == absl::InfinitePast() ? "-" : FormatAge(now - in.started_at);
    rows.push_back({OrDash(in.type), OrDash(in.group), OrDash(in.instance_id), OrDash(in.Address()),
                    FormatPorts(in.ports), std::string(discovery::ToString(in.status)),
                    OrDash(in.custom_state), OrDash(in.version), FormatTtl(s), age});
  }
  std::array<size_t, kColumns> width{};
  for (const Row& row : rows) {
    for (size_t c = 0; c < kColumns; ++c) width[c] = std::max(width[c], row[c].size());
  }
  std::string out;
  for (const Row& row : rows) {
    for (size_t c = 0; c < kColumns; ++c) {
      out += row[c];
      if (c + 1 < kColumns) out.append(width[c] - row[c].size() + 2, ' ');
    }
    out += '\n';
  }
  return out;
}

nlohmann::json InstanceWithLease(const StoredInstance& in) {
  nlohmann::json out = in.raw;
  if (in.lease_id != 0) {
    out["leaseId"] = absl::StrFormat("%x", in.lease_id);
    out["leaseTtlSeconds"] = in.ttl_left.value_or(-1);
  } else {
    out["leaseTtlSeconds"] = nullptr;
  }
  return out;
}

std::string WatchLine(const discovery::ChangeEvent& event) {
  nlohmann::json line = nlohmann::json::object();
  line["event"] = std::string(discovery::ToString(event.type));
  line["revision"] = event.revision;
  line["instance"] = event.instance != nullptr ? discovery::InstanceToJson(*event.instance)
                                               : nlohmann::json::object();
  // nlohmann orders object keys alphabetically: event, instance, revision. Build the line by
  // hand to keep the documented order.
  return absl::StrCat("{\"event\":", Dump(line["event"]), ",\"revision\":", event.revision,
                      ",\"instance\":", Dump(line["instance"]), "}");
}

}  // namespace discoveryctl
