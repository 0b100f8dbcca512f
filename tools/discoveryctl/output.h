// discoveryctl: how instances and events are printed — the `list` table, the JSON of `get`,
// and the JSON lines of `watch`. Pure functions over values; thread-compatible.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "discovery/watcher.h"
#include "nlohmann/json.hpp"
#include "store.h"

namespace discoveryctl {

// A fixed-width table, one row per instance, columns
// TYPE GROUP ID ADDRESS PORTS STATUS CUSTOM-STATE VERSION TTL AGE (empty fields print "-").
// Cells go through Printable() and are aligned by DisplayWidth(). Always ends with a newline;
// only the header when `instances` is empty.
std::string FormatTable(const std::vector<StoredInstance>& instances, absl::Time now);

// `s` as a terminal may safely show it: control characters (ESC sequences could recolour the
// operator's terminal or move its cursor, CR/LF would break the table) become \xNN, invalid
// UTF-8 becomes U+FFFD; valid UTF-8 (names in Korean, emoji) is kept.
std::string Printable(std::string_view s);

// Terminal columns a valid UTF-8 string takes: East Asian wide and fullwidth characters
// (Hangul, CJK, fullwidth forms, most emoji) count 2, combining marks 0, others 1.
size_t DisplayWidth(std::string_view s);

// "game=8001,grpc=50051", or "-" when there are none.
std::string FormatPorts(const std::map<std::string, int>& ports);

// A compact age: "45s", "3m12s", "2h5m", "4d3h"; "-" for a negative or infinite duration.
std::string FormatAge(absl::Duration age);

// The stored JSON object, with "leaseId" set to the key's actual lease (hex, as etcdctl prints
// it) and "leaseTtlSeconds": seconds left, -1 when the lease has expired, null without a lease
// or when the store does not know it (Redis, the gateway).
nlohmann::json InstanceWithLease(const StoredInstance& instance);

// One `watch` line: {"event":"added","revision":N,"instance":{...}} (no trailing newline).
std::string WatchLine(const discovery::ChangeEvent& event);

}  // namespace discoveryctl
