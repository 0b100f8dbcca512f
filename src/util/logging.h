// Logging and retry helpers shared by the library's components.
#pragma once

#include <memory>
#include <string>

#include "absl/time/time.h"

namespace spdlog {
class logger;
}

namespace discovery::util {

// `given` when non-null, else a logger named `name` writing to stderr. The logger is not
// registered in spdlog's global registry (we never touch spdlog's global settings). Level
// from DISCOVERY_LOG_LEVEL (trace|debug|info|warn|error|off), default info.
std::shared_ptr<spdlog::logger> ComponentLogger(const std::shared_ptr<spdlog::logger>& given,
                                                const std::string& name);

// Jittered exponential backoff: Next() returns initial, then ×2 per call up to max, each
// multiplied by a random factor in [0.8, 1.2]. Reset() after the first good message.
class Backoff {
 public:
  Backoff(absl::Duration initial, absl::Duration max) : initial_(initial), max_(max) {}
  absl::Duration Next();
  void Reset() { attempt_ = 0; }
  int attempt() const { return attempt_; }

 private:
  absl::Duration initial_;
  absl::Duration max_;
  int attempt_ = 0;
};

}  // namespace discovery::util
