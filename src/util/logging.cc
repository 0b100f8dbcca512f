#include "util/logging.h"

#include <cstdlib>
#include <mutex>

#include "absl/random/random.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

namespace discovery::util {

std::shared_ptr<spdlog::logger> ComponentLogger(const std::shared_ptr<spdlog::logger>& given,
                                                const std::string& name) {
  if (given != nullptr) return given;
  static std::shared_ptr<spdlog::sinks::stderr_sink_mt> sink =
      std::make_shared<spdlog::sinks::stderr_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>(name, sink);
  const char* level = std::getenv("DISCOVERY_LOG_LEVEL");
  logger->set_level(level != nullptr ? spdlog::level::from_str(level) : spdlog::level::info);
  return logger;
}

absl::Duration Backoff::Next() {
  thread_local absl::InsecureBitGen gen;
  absl::Duration d = initial_;
  for (int i = 0; i < attempt_ && d < max_; ++i) d *= 2;
  if (d > max_) d = max_;
  ++attempt_;
  return d * absl::Uniform(gen, 0.8, 1.2);
}

}  // namespace discovery::util
