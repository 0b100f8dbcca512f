// Small test utilities shared by the real-etcd harness and integration tests:
// time scaling for slow (sanitizer) builds, deadline-bounded polling, free ports
// and a minimal blocking HTTP/1.1 client (GET, POST).
//
// Every timeout accepted by the support library is multiplied by TimeScaleFactor(),
// so tests write their deadlines for a normal build and sanitizer CI (which sets
// DISCOVERY_TEST_TIME_SCALE=3) automatically gets more headroom.

#ifndef DISCOVERY_TESTS_SUPPORT_HARNESS_UTIL_H_
#define DISCOVERY_TESTS_SUPPORT_HARNESS_UTIL_H_

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace discovery::testing {

// Factor read once from env DISCOVERY_TEST_TIME_SCALE (a positive number; default 1,
// invalid or non-positive values fall back to 1).
double TimeScaleFactor();

// `d` multiplied by TimeScaleFactor(). InfiniteDuration() stays infinite.
absl::Duration TimeScale(absl::Duration d);

// Polls `pred` every `poll` until it returns true or TimeScale(timeout) has elapsed.
// Returns true as soon as `pred` is true; `pred` is always evaluated at least once and
// once more at the deadline, so a condition that becomes true just in time is seen.
// This is how tests synchronise with asynchronous behaviour: never use bare sleeps.
bool WaitUntil(std::function<bool()> pred, absl::Duration timeout,
               absl::Duration poll = absl::Milliseconds(20));

// Returns a TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read the
// port, close). Never returns the same port twice within one process. There is an
// inherent race with other processes; callers that bind it must tolerate EADDRINUSE.
int PickFreePort();

struct HttpResponse {
  int status = 0;    // e.g. 200
  std::string body;  // de-chunked body
};

// Blocking HTTP/1.1 GET of http://127.0.0.1:<port><path> with `Connection: close`.
// The whole exchange (connect, send, receive) is bounded by TimeScale(timeout).
absl::StatusOr<HttpResponse> HttpGet(int port, const std::string& path, absl::Duration timeout);

// Same for a POST of `body` (Content-Length is added; pass e.g.
// {"Content-Type", "application/json"} in `headers`).
absl::StatusOr<HttpResponse> HttpPost(
    int port, const std::string& path, const std::string& body,
    const std::vector<std::pair<std::string, std::string>>& headers, absl::Duration timeout);

// Last `max_bytes` bytes of the file at `path` (starting at a line boundary when
// possible); empty if the file cannot be read.
std::string TailFile(const std::string& path, size_t max_bytes = 4096);

// Creates a fresh directory `<base>/<prefix>XXXXXX` (mkdtemp). If `base` is empty the
// base is $TMPDIR, or /tmp when unset.
absl::StatusOr<std::string> MakeTempDir(const std::string& prefix, const std::string& base = "");

}  // namespace discovery::testing

#endif  // DISCOVERY_TESTS_SUPPORT_HARNESS_UTIL_H_
