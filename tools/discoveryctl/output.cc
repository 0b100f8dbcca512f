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

// Decodes one UTF-8 sequence at s[*i] (advancing *i); -1 when it is invalid (then *i moves
// one byte).
int32_t NextCodePoint(std::string_view s, size_t* i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(*i);
  int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
  if (len == 0 || *i + len > s.size()) {
    ++*i;
    return -1;
  }
  int32_t cp = len == 1 ? c : c & (0xFF >> (len + 1));
  for (int k = 1; k < len; ++k) {
    if ((b(*i + k) & 0xC0) != 0x80) {
      ++*i;
      return -1;
    }
    cp = (cp << 6) | (b(*i + k) & 0x3F);
  }
  static constexpr int32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
    ++*i;
    return -1;
  }
  *i += len;
  return cp;
}

int Columns(int32_t cp) {
  if ((cp >= 0x300 && cp <= 0x36F) || (cp >= 0x1160 && cp <= 0x11FF) || cp == 0x200B ||
      (cp >= 0xFE00 && cp <= 0xFE0F)) {
    return 0;  // combining marks, Hangul medial/final jamo, zero width, variation selectors
  }
  if ((cp >= 0x1100 && cp <= 0x115F) || (cp >= 0x2E80 && cp <= 0x303E) ||
      (cp >= 0x3041 && cp <= 0x33FF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
      (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0xA000 && cp <= 0xA4CF) ||
      (cp >= 0xAC00 && cp <= 0xD7A3) || (cp >= 0xF900 && cp <= 0xFAFF) ||
      (cp >= 0xFE30 && cp <= 0xFE4F) || (cp >= 0xFF00 && cp <= 0xFF60) ||
      (cp >= 0xFFE0 && cp <= 0xFFE6) || (cp >= 0x1F300 && cp <= 0x1F64F) ||
      (cp >= 0x1F900 && cp <= 0x1F9FF) || (cp >= 0x20000 && cp <= 0x3FFFD)) {
    return 2;
  }
  return 1;
}

}  // namespace

std::string Printable(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const size_t start = i;
    const int32_t cp = NextCodePoint(s, &i);
    if (cp < 0) {
      out += "\xEF\xBF\xBD";  // U+FFFD
    } else if (cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp < 0xA0)) {
      out += absl::StrFormat("\\x%02X", cp);
    } else {
      out.append(s.substr(start, i - start));
    }
  }
  return out;
}

size_t DisplayWidth(std::string_view s) {
  size_t width = 0;
  for (size_t i = 0; i < s.size();) {
    const int32_t cp = NextCodePoint(s, &i);
    width += cp < 0 ? 1 : static_cast<size_t>(Columns(cp));
  }
  return width;
}

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
  for (Row& row : rows) {
    for (size_t c = 0; c < kColumns; ++c) {
      row[c] = Printable(row[c]);
      width[c] = std::max(width[c], DisplayWidth(row[c]));
    }
  }
  std::string out;
  for (const Row& row : rows) {
    for (size_t c = 0; c < kColumns; ++c) {
      out += row[c];
      if (c + 1 < kColumns) out.append(width[c] - DisplayWidth(row[c]) + 2, ' ');
    }
    out += '\n';
  }
  return out;
}

nlohmann::json InstanceWithLease(const StoredInstance& in) {
  nlohmann::json out = in.raw;
  if (in.lease_id != 0) {
    out["leaseId"] = absl::StrFormat("%x", in.lease_id);
    // Unknown (a store without lease TTLs: Redis, the gateway) is null, never a wrong number.
    out["leaseTtlSeconds"] =
        in.ttl_left.has_value() ? nlohmann::json(*in.ttl_left) : nlohmann::json(nullptr);
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
