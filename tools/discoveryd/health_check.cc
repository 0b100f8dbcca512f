#include "health_check.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "util/clock.h"

namespace discoveryd {
namespace {

// Starts a non-blocking connect; returns the fd (or -1 when it failed at once) and sets
// *done/*up when the outcome is already known.
int StartConnect(const std::string& host, int port, bool* done, bool* up) {
  *done = true;
  *up = false;
  if (host.empty() || port <= 0 || port > 65535) return -1;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0 ||
      res == nullptr) {
    return -1;
  }
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    freeaddrinfo(res);
    return -1;
  }
  int rc = connect(fd, res->ai_addr, res->ai_addrlen);
  freeaddrinfo(res);
  if (rc == 0) {
    *up = true;
    close(fd);
    return -1;
  }
  if (errno != EINPROGRESS) {
    close(fd);
    return -1;
  }
  *done = false;
  return fd;
}

}  // namespace

std::vector<bool> TcpHealthChecker::Check(const std::vector<Target>& targets) {
  std::vector<bool> result(targets.size(), false);
  std::vector<size_t> todo;
  absl::Time now = discovery::util::MonoNow();
  {
    discovery::util::MutexLock lock(&mu_);
    for (size_t i = 0; i < targets.size(); ++i) {
      auto it = cache_.find(targets[i]);
      if (it != cache_.end() && it->second.expires > now) {
        result[i] = it->second.up;
      } else {
        todo.push_back(i);
      }
    }
  }
  if (todo.empty()) return result;

  std::vector<pollfd> fds;
  std::vector<size_t> owner;  // index into targets for each pollfd
  for (size_t i : todo) {
    bool done = false, up = false;
    int fd = StartConnect(targets[i].first, targets[i].second, &done, &up);
    if (done) {
      result[i] = up;
      continue;
    }
    fds.push_back({fd, POLLOUT, 0});
    owner.push_back(i);
  }
  absl::Time deadline = discovery::util::MonoNow() + options_.timeout;
  size_t pending = fds.size();
  while (pending > 0) {
    int wait_ms =
        static_cast<int>(absl::ToInt64Milliseconds(deadline - discovery::util::MonoNow()));
    if (wait_ms <= 0) break;
    int n = poll(fds.data(), fds.size(), wait_ms);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    for (size_t k = 0; k < fds.size(); ++k) {
      if (fds[k].fd < 0 || fds[k].revents == 0) continue;
      int err = 0;
      socklen_t len = sizeof(err);
      getsockopt(fds[k].fd, SOL_SOCKET, SO_ERROR, &err, &len);
      result[owner[k]] = err == 0 && (fds[k].revents & POLLOUT) != 0;
      close(fds[k].fd);
      fds[k].fd = -1;  // poll ignores negative fds
      --pending;
    }
  }
  for (pollfd& p : fds) {
    if (p.fd >= 0) close(p.fd);
  }
  absl::Time expires = discovery::util::MonoNow() + options_.cache_ttl;
  discovery::util::MutexLock lock(&mu_);
  for (size_t i : todo) cache_[targets[i]] = {result[i], expires};
  // Bound the cache: drop expired entries now and then.
  if (cache_.size() > 4096) {
    for (auto it = cache_.begin(); it != cache_.end();) {
      it = it->second.expires <= now ? cache_.erase(it) : std::next(it);
    }
  }
  return result;
}

}  // namespace discoveryd
