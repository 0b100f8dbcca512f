#include "fd_limits.h"

#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"

namespace discoveryd {

size_t DefaultMaxConnections() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return 1 << 20;
  size_t soft = static_cast<size_t>(rl.rlim_cur);
  size_t reserve = std::min(kFdReserve, soft / 2);
  return std::max<size_t>(1, soft - reserve);
}

void RaiseFdLimit(const std::shared_ptr<spdlog::logger>& logger) {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
    SPDLOG_LOGGER_WARN(logger, "getrlimit(RLIMIT_NOFILE): {}", std::strerror(errno));
    return;
  }
  // RLIM_INFINITY is not a valid fd limit on Linux: take fs.nr_open then.
  rlim_t target = rl.rlim_max;
  if (target == RLIM_INFINITY) {
    unsigned long nr_open = 1 << 20;
    std::ifstream("/proc/sys/fs/nr_open") >> nr_open;
    target = static_cast<rlim_t>(nr_open);
  }
  if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur >= target) {
    SPDLOG_LOGGER_INFO(logger, "RLIMIT_NOFILE {} (already the hard limit)", rl.rlim_cur);
    return;
  }
  rlim_t old = rl.rlim_cur;
  rl.rlim_cur = target;
  if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
    SPDLOG_LOGGER_WARN(logger, "raising RLIMIT_NOFILE from {} to {}: {}", old, target,
                       std::strerror(errno));
    return;
  }
  SPDLOG_LOGGER_INFO(logger, "raised RLIMIT_NOFILE from {} to {}", old, target);
}

void RefuseConnection(int fd) {
  static const std::string kResponse = [] {
    std::string body =
        R"({"error":{"code":"unavailable","message":"too many connections, retry later"}})";
    return absl::StrCat(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        "Retry-After: 1\r\nConnection: close\r\nContent-Length: ",
        body.size(), "\r\n\r\n", body);
  }();
  (void)::send(fd, kResponse.data(), kResponse.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  ::shutdown(fd, SHUT_WR);
  std::array<char, 4096> drain{};
  for (int i = 0; i < 4; ++i) {
    if (::recv(fd, drain.data(), drain.size(), MSG_DONTWAIT) <= 0) break;
  }
}

}  // namespace discoveryd
