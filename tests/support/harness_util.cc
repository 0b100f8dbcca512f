#include "harness_util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <set>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "util/clock.h"

namespace discovery::testing {
namespace {

std::string ErrnoText(int err) { return std::strerror(err); }

// Closes a file descriptor on scope exit.
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  ~FdCloser() {
    if (fd_ >= 0) ::close(fd_);
  }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;

 private:
  int fd_;
};

// Milliseconds left until `deadline`, clamped to [0, INT_MAX].
int MillisLeft(absl::Time deadline) {
  const int64_t ms = absl::ToInt64Milliseconds(deadline - util::MonoNow());
  if (ms <= 0) return 0;
  return static_cast<int>(std::min<int64_t>(ms, 1 << 30));
}

// Waits for `events` on `fd` until `deadline`. Returns OK when ready.
absl::Status PollFd(int fd, short events, absl::Time deadline) {  // NOLINT(runtime/int)
  for (;;) {
    pollfd pfd{fd, events, 0};
    const int rc = ::poll(&pfd, 1, MillisLeft(deadline));
    if (rc > 0) return absl::OkStatus();
    if (rc == 0) return absl::DeadlineExceededError("timed out");
    if (errno != EINTR) return absl::InternalError(absl::StrCat("poll: ", ErrnoText(errno)));
  }
}

absl::StatusOr<std::string> DecodeChunked(absl::string_view in) {
  std::string out;
  for (;;) {
    const size_t eol = in.find("\r\n");
    if (eol == absl::string_view::npos) return absl::DataLossError("truncated chunked body");
    absl::string_view size_text = in.substr(0, eol);
    if (const size_t semi = size_text.find(';'); semi != absl::string_view::npos) {
      size_text = size_text.substr(0, semi);
    }
    uint64_t size = 0;
    if (!absl::SimpleHexAtoi(absl::StripAsciiWhitespace(size_text), &size)) {
      return absl::DataLossError("bad chunk size");
    }
    in.remove_prefix(eol + 2);
    if (size == 0) return out;
    if (in.size() < size) return absl::DataLossError("truncated chunk");
    out.append(in.data(), size);
    in.remove_prefix(size);
    if (in.substr(0, 2) == "\r\n") in.remove_prefix(2);
  }
}

}  // namespace

double TimeScaleFactor() {
  static const double factor = [] {
    const char* env = std::getenv("DISCOVERY_TEST_TIME_SCALE");
    double v = 1.0;
    if (env == nullptr || !absl::SimpleAtod(env, &v) || !(v > 0) || v > 1000) return 1.0;
    return v;
  }();
  return factor;
}

absl::Duration TimeScale(absl::Duration d) {
  if (d == absl::InfiniteDuration()) return d;
  return d * TimeScaleFactor();
}

bool WaitUntil(std::function<bool()> pred, absl::Duration timeout, absl::Duration poll) {
  const absl::Time deadline = util::MonoNow() + TimeScale(timeout);
  if (poll <= absl::ZeroDuration()) poll = absl::Milliseconds(1);
  for (;;) {
    if (pred()) return true;
    const absl::Time now = util::MonoNow();
    if (now >= deadline) return false;
    absl::SleepFor(std::min(poll, deadline - now));
    if (util::MonoNow() >= deadline) return pred();
  }
}

int PickFreePort() {
  static std::mutex mu;
  static std::set<int> handed_out;
  for (int attempt = 0; attempt < 1000; ++attempt) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    FdCloser closer(fd);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) continue;
    socklen_t len = sizeof(addr);
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) continue;
    const int port = ntohs(addr.sin_port);
    std::lock_guard<std::mutex> lock(mu);
    if (handed_out.insert(port).second) return port;
  }
  std::abort();  // Not reachable in practice: the ephemeral range has ~28k ports.
}

namespace {

absl::StatusOr<HttpResponse> HttpRequest(
    absl::string_view method, int port, const std::string& path, const std::string& request_body,
    const std::vector<std::pair<std::string, std::string>>& request_headers,
    absl::Duration timeout) {
  const absl::Time deadline = util::MonoNow() + TimeScale(timeout);
  const std::string where = absl::StrCat("http://127.0.0.1:", port, path);
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", ErrnoText(errno)));
  FdCloser closer(fd);

  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    if (errno != EINPROGRESS) {
      return absl::UnavailableError(absl::StrCat("connect ", where, ": ", ErrnoText(errno)));
    }
    if (absl::Status s = PollFd(fd, POLLOUT, deadline); !s.ok()) {
      return absl::DeadlineExceededError(absl::StrCat("connect ", where, ": ", s.message()));
    }
    int err = 0;
    socklen_t len = sizeof(err);
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      return absl::UnavailableError(absl::StrCat("connect ", where, ": ", ErrnoText(err)));
    }
  }

  std::string request = absl::StrCat(method, " ", path, " HTTP/1.1\r\nHost: 127.0.0.1:", port,
                                     "\r\nUser-Agent: discovery-test-harness\r\n"
                                     "Accept: */*\r\nConnection: close\r\n");
  for (const auto& [name, value] : request_headers) {
    absl::StrAppend(&request, name, ": ", value, "\r\n");
  }
  if (method != "GET") absl::StrAppend(&request, "Content-Length: ", request_body.size(), "\r\n");
  absl::StrAppend(&request, "\r\n", request_body);
  size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (absl::Status s = PollFd(fd, POLLOUT, deadline); !s.ok()) {
        return absl::DeadlineExceededError(absl::StrCat("send ", where, ": ", s.message()));
      }
    } else {
      return absl::UnavailableError(absl::StrCat("send ", where, ": ", ErrnoText(errno)));
    }
  }

  std::string raw;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n > 0) {
      raw.append(buf, static_cast<size_t>(n));
      if (raw.size() > (64u << 20)) return absl::ResourceExhaustedError("response too large");
    } else if (n == 0) {
      break;
    } else if (errno == EAGAIN || errno == EINTR) {
      if (absl::Status s = PollFd(fd, POLLIN, deadline); !s.ok()) {
        return absl::DeadlineExceededError(absl::StrCat("recv ", where, ": ", s.message()));
      }
    } else {
      return absl::UnavailableError(absl::StrCat("recv ", where, ": ", ErrnoText(errno)));
    }
  }

  const size_t header_end = raw.find("\r\n\r\n");
  if (header_end == std::string::npos) {
    return absl::DataLossError(absl::StrCat(method, " ", where, ": malformed response"));
  }
  const absl::string_view headers = absl::string_view(raw).substr(0, header_end);
  HttpResponse resp;
  // Status line: HTTP/1.1 200 OK
  const size_t sp = headers.find(' ');
  if (sp == absl::string_view::npos || !absl::SimpleAtoi(headers.substr(sp + 1, 3), &resp.status)) {
    return absl::DataLossError(absl::StrCat(method, " ", where, ": bad status line"));
  }
  absl::string_view body = absl::string_view(raw).substr(header_end + 4);
  if (absl::StrContains(absl::AsciiStrToLower(headers), "transfer-encoding: chunked")) {
    absl::StatusOr<std::string> decoded = DecodeChunked(body);
    if (!decoded.ok()) return decoded.status();
    resp.body = *std::move(decoded);
  } else {
    resp.body = std::string(body);
  }
  return resp;
}

}  // namespace

absl::StatusOr<HttpResponse> HttpGet(int port, const std::string& path, absl::Duration timeout) {
  return HttpRequest("GET", port, path, "", {}, timeout);
}

absl::StatusOr<HttpResponse> HttpPost(
    int port, const std::string& path, const std::string& body,
    const std::vector<std::pair<std::string, std::string>>& headers, absl::Duration timeout) {
  return HttpRequest("POST", port, path, body, headers, timeout);
}

std::string TailFile(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  if (size <= 0) return "";
  const std::streamoff start = size > static_cast<std::streamoff>(max_bytes)
                                   ? size - static_cast<std::streamoff>(max_bytes)
                                   : 0;
  in.seekg(start);
  std::string data(static_cast<size_t>(size - start), '\0');
  in.read(data.data(), static_cast<std::streamsize>(data.size()));
  data.resize(static_cast<size_t>(in.gcount()));
  if (start > 0) {
    if (const size_t nl = data.find('\n'); nl != std::string::npos && nl + 1 < data.size()) {
      data.erase(0, nl + 1);
    }
  }
  return data;
}

absl::StatusOr<std::string> MakeTempDir(const std::string& prefix, const std::string& base) {
  std::string dir = base;
  if (dir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    dir = (tmp != nullptr && *tmp != '\0') ? tmp : "/tmp";
  }
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  std::string templ = absl::StrCat(dir, "/", prefix, "XXXXXX");
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp ", templ, ": ", ErrnoText(errno)));
  }
  return std::string(buf.data());
}

}  // namespace discovery::testing
