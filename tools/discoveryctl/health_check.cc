#include "health_check.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "util/clock.h"

namespace discoveryctl {
namespace {

// Closes a file descriptor on scope exit.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

int RemainingMs(absl::Time deadline) {
  absl::Duration left = deadline - discovery::util::MonoNow();
  if (left <= absl::ZeroDuration()) return 0;
  return static_cast<int>(std::max<int64_t>(1, absl::ToInt64Milliseconds(left)));
}

// Waits for `events` on `fd` until `deadline`. False on timeout or error.
bool PollFor(int fd, short events, absl::Time deadline) {
  for (;;) {
    int ms = RemainingMs(deadline);
    if (ms == 0) return false;
    struct pollfd pfd = {fd, events, 0};
    int n = poll(&pfd, 1, ms);
    if (n < 0 && errno == EINTR) continue;
    return n > 0;
  }
}

bool ValidPort(const std::string& port) {
  int p = 0;
  return absl::SimpleAtoi(port, &p) && p >= 1 && p <= 65535;
}

// Splits "host:port" / "[v6]:port" / "host" (port empty).
absl::Status SplitHostPort(absl::string_view s, std::string* host, std::string* port) {
  if (absl::ConsumePrefix(&s, "[")) {
    size_t close = s.find(']');
    if (close == absl::string_view::npos) return absl::InvalidArgumentError("unclosed '['");
    *host = std::string(s.substr(0, close));
    s.remove_prefix(close + 1);
    if (!s.empty() && !absl::ConsumePrefix(&s, ":")) {
      return absl::InvalidArgumentError("expected ':' after ']'");
    }
    *port = std::string(s);
    return absl::OkStatus();
  }
  size_t colon = s.rfind(':');
  if (colon == absl::string_view::npos) {
    *host = std::string(s);
    port->clear();
  } else {
    *host = std::string(s.substr(0, colon));
    *port = std::string(s.substr(colon + 1));
  }
  return absl::OkStatus();
}

// Connects to host:port before `deadline`; returns the connected socket.
absl::StatusOr<int> Connect(const std::string& host, const std::string& port, absl::Time deadline) {
  struct addrinfo hints = {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  struct addrinfo* res = nullptr;
  int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) {
    return absl::UnavailableError(absl::StrCat("resolve ", host, ": ", gai_strerror(rc)));
  }
  std::string last_error = "no address";
  for (struct addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      last_error = std::strerror(errno);
      continue;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
      freeaddrinfo(res);
      return fd;
    }
    if (errno == EINPROGRESS) {
      if (PollFor(fd, POLLOUT, deadline)) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err == 0) {
          freeaddrinfo(res);
          return fd;
        }
        last_error = std::strerror(err);
      } else {
        last_error = "connect timed out";
      }
    } else {
      last_error = std::strerror(errno);
    }
    close(fd);
    if (RemainingMs(deadline) == 0) break;
  }
  freeaddrinfo(res);
  return absl::UnavailableError(absl::StrCat("connect ", host, ":", port, ": ", last_error));
}

}  // namespace

absl::StatusOr<HttpUrl> ParseHttpUrl(const std::string& url) {
  absl::string_view rest = url;
  if (!absl::ConsumePrefix(&rest, "http://")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--check-http \"", url, "\": only plain http://host[:port]/path is supported"));
  }
  size_t slash = rest.find_first_of("/?");
  absl::string_view authority = rest.substr(0, slash);
  HttpUrl out;
  if (slash != absl::string_view::npos) {
    out.path = std::string(rest.substr(slash));
    if (out.path[0] == '?') out.path.insert(0, "/");
  }
  std::string port;
  if (absl::Status s = SplitHostPort(authority, &out.host, &port); !s.ok() || out.host.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--check-http \"", url, "\": bad host"));
  }
  if (!port.empty()) out.port = port;
  if (!ValidPort(out.port)) {
    return absl::InvalidArgumentError(absl::StrCat("--check-http \"", url, "\": bad port"));
  }
  for (char c : out.path) {
    if (c == ' ' || c == '\r' || c == '\n') {
      return absl::InvalidArgumentError(absl::StrCat("--check-http \"", url, "\": bad path"));
    }
  }
  return out;
}

absl::StatusOr<std::pair<std::string, std::string>> ParseHostPort(const std::string& host_port) {
  std::string host, port;
  absl::Status s = SplitHostPort(host_port, &host, &port);
  if (!s.ok() || host.empty() || !ValidPort(port)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--check-tcp \"", host_port, "\": expected HOST:PORT"));
  }
  return std::make_pair(host, port);
}

absl::StatusOr<std::unique_ptr<HealthCheck>> HealthCheck::Http(const std::string& url) {
  absl::StatusOr<HttpUrl> parsed = ParseHttpUrl(url);
  if (!parsed.ok()) return parsed.status();
  std::unique_ptr<HealthCheck> check(new HealthCheck());
  check->http_ = true;
  check->host_ = parsed->host;
  check->port_ = parsed->port;
  check->path_ = parsed->path;
  check->description_ = url;
  return check;
}

absl::StatusOr<std::unique_ptr<HealthCheck>> HealthCheck::Tcp(const std::string& host_port) {
  auto parsed = ParseHostPort(host_port);
  if (!parsed.ok()) return parsed.status();
  std::unique_ptr<HealthCheck> check(new HealthCheck());
  check->host_ = parsed->first;
  check->port_ = parsed->second;
  check->description_ = absl::StrCat("tcp://", host_port);
  return check;
}

absl::Status HealthCheck::Run(absl::Duration timeout) const {
  const absl::Time deadline = discovery::util::MonoNow() + timeout;
  absl::StatusOr<int> connected = Connect(host_, port_, deadline);
  if (!connected.ok()) return connected.status();
  Fd fd(*connected);
  if (!http_) return absl::OkStatus();

  const bool v6 = absl::StrContains(host_, ':');
  std::string request =
      absl::StrCat("GET ", path_, " HTTP/1.1\r\nHost: ", v6 ? "[" : "", host_, v6 ? "]" : "", ":",
                   port_, "\r\nUser-Agent: discoveryctl\r\nConnection: close\r\n\r\n");
  size_t sent = 0;
  while (sent < request.size()) {
    ssize_t n = send(fd.get(), request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (!PollFor(fd.get(), POLLOUT, deadline)) {
        return absl::UnavailableError("HTTP check: send timed out");
      }
    } else {
      return absl::UnavailableError(absl::StrCat("HTTP check: send: ", std::strerror(errno)));
    }
  }
  // Only the status line matters.
  std::string response;
  while (response.find("\r\n") == std::string::npos && response.size() < 4096) {
    char buf[1024];
    ssize_t n = recv(fd.get(), buf, sizeof(buf), 0);
    if (n > 0) {
      response.append(buf, static_cast<size_t>(n));
    } else if (n == 0) {
      break;
    } else if (errno == EAGAIN || errno == EINTR) {
      if (!PollFor(fd.get(), POLLIN, deadline)) {
        return absl::UnavailableError("HTTP check: no response within the timeout");
      }
    } else {
      return absl::UnavailableError(absl::StrCat("HTTP check: recv: ", std::strerror(errno)));
    }
  }
  if (response.empty()) return absl::UnavailableError("HTTP check: connection closed");
  // "HTTP/1.1 200 OK"
  absl::string_view line(response);
  line = line.substr(0, line.find("\r\n"));
  int code = 0;
  size_t space = line.find(' ');
  if (!absl::StartsWith(line, "HTTP/") || space == absl::string_view::npos ||
      !absl::SimpleAtoi(line.substr(space + 1, 3), &code)) {
    return absl::UnavailableError("HTTP check: malformed status line");
  }
  if (code >= 200 && code < 400) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat("HTTP check: status ", code));
}

std::optional<discovery::InstanceStatus> HealthTracker::Record(bool passed) {
  using discovery::InstanceStatus;
  InstanceStatus next = status_;
  if (passed) {
    failures_ = 0;
    ++passes_;
    if (status_ == InstanceStatus::kInitializing ||
        (status_ == InstanceStatus::kError && passes_ >= kPassesToRecover)) {
      next = InstanceStatus::kReady;
    }
  } else {
    passes_ = 0;
    ++failures_;
    if (status_ != InstanceStatus::kError && failures_ >= kFailuresToError) {
      next = InstanceStatus::kError;
    }
  }
  if (next == status_) return std::nullopt;
  status_ = next;
  return next;
}

}  // namespace discoveryctl
