#include "http_test_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "harness_util.h"

namespace discovery::testing {
namespace {

// Parses "HTTP/1.1 200 OK\r\nA: b\r\n" (without the blank line).
bool ParseHead(const std::string& head, Response* r) {
  std::vector<std::string> lines = absl::StrSplit(head, "\r\n");
  if (lines.empty()) return false;
  std::vector<std::string> first = absl::StrSplit(lines[0], absl::MaxSplits(' ', 2));
  if (first.size() < 2 || !absl::SimpleAtoi(first[1], &r->status)) return false;
  for (size_t i = 1; i < lines.size(); ++i) {
    size_t colon = lines[i].find(':');
    if (colon == std::string::npos) continue;
    r->headers[absl::AsciiStrToLower(lines[i].substr(0, colon))] =
        std::string(absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
  }
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TestSocket>> TestSocket::Connect(int port, absl::Duration timeout) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  timeval tv = absl::ToTimeval(TimeScale(timeout));
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("connect :", port, ": ", std::strerror(err)));
  }
  return std::unique_ptr<TestSocket>(new TestSocket(fd));
}

TestSocket::~TestSocket() { ::close(fd_); }

void TestSocket::ShutdownBoth() { ::shutdown(fd_, SHUT_RDWR); }

absl::Status TestSocket::SendAll(const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    ssize_t n = ::send(fd_, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      return absl::UnavailableError(absl::StrCat("send: ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> TestSocket::ReceiveSome(size_t max) {
  if (!buffered_.empty()) {
    std::string out = std::move(buffered_);
    buffered_.clear();
    return out;
  }
  std::string buf(max, '\0');
  for (;;) {
    ssize_t n = ::recv(fd_, buf.data(), buf.size(), 0);
    if (n >= 0) {
      buf.resize(static_cast<size_t>(n));
      return buf;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return absl::DeadlineExceededError("recv timeout");
    return absl::UnavailableError(absl::StrCat("recv: ", std::strerror(errno)));
  }
}

absl::StatusOr<Response> TestSocket::ReadResponse() {
  std::string raw = std::move(buffered_);
  buffered_.clear();
  size_t head_end;
  while ((head_end = raw.find("\r\n\r\n")) == std::string::npos) {
    auto chunk = ReceiveSome();
    if (!chunk.ok()) return chunk.status();
    if (chunk->empty()) return absl::UnavailableError("connection closed before a response");
    raw += *chunk;
  }
  Response r;
  if (!ParseHead(raw.substr(0, head_end), &r)) {
    return absl::InternalError(absl::StrCat("bad response head: ", raw.substr(0, head_end)));
  }
  std::string rest = raw.substr(head_end + 4);
  size_t length = 0;
  bool has_length = r.headers.count("content-length") > 0 &&
                    absl::SimpleAtoi(r.headers["content-length"], &length);
  for (;;) {
    if (has_length && rest.size() >= length) break;
    auto chunk = ReceiveSome();
    if (!chunk.ok()) return chunk.status();
    if (chunk->empty()) break;
    rest += *chunk;
  }
  if (has_length && rest.size() > length) {
    buffered_ = rest.substr(length);
    rest.resize(length);
  }
  r.body = std::move(rest);
  return r;
}

absl::StatusOr<Response> Http(int port, const std::string& method, const std::string& path,
                              const std::string& body, const Headers& headers,
                              absl::Duration timeout) {
  auto sock = TestSocket::Connect(port, timeout);
  if (!sock.ok()) return sock.status();
  std::string req = absl::StrCat(method, " ", path, " HTTP/1.1\r\nHost: 127.0.0.1:", port,
                                 "\r\nConnection: close\r\n");
  for (const auto& [k, v] : headers) absl::StrAppend(&req, k, ": ", v, "\r\n");
  if (!body.empty() || method == "POST" || method == "PATCH" || method == "PUT") {
    absl::StrAppend(&req, "Content-Type: application/json\r\nContent-Length: ", body.size(),
                    "\r\n");
  }
  absl::StrAppend(&req, "\r\n", body);
  if (absl::Status s = (*sock)->SendAll(req); !s.ok()) return s;
  return (*sock)->ReadResponse();
}

absl::StatusOr<std::unique_ptr<SseClient>> SseClient::Connect(int port, const std::string& path,
                                                              const Headers& headers) {
  // Receives block for at most 1 s at a time so the reader notices shutdown promptly.
  auto sock = TestSocket::Connect(port, absl::Seconds(1));
  if (!sock.ok()) return sock.status();
  std::string req = absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: 127.0.0.1:", port,
                                 "\r\nAccept: text/event-stream\r\n");
  for (const auto& [k, v] : headers) absl::StrAppend(&req, k, ": ", v, "\r\n");
  req += "\r\n";
  if (absl::Status s = (*sock)->SendAll(req); !s.ok()) return s;
  std::unique_ptr<SseClient> c(new SseClient());
  c->socket_ = *std::move(sock);
  c->reader_ = std::thread([raw = c.get()] { raw->Run(); });
  return c;
}

SseClient::~SseClient() {
  {
    util::MutexLock lock(&mu_);
    closed_ = true;
  }
  socket_->ShutdownBoth();
  if (reader_.joinable()) reader_.join();
}

void SseClient::Run() {
  for (;;) {
    {
      util::MutexLock lock(&mu_);
      if (closed_) return;
    }
    auto chunk = socket_->ReceiveSome();
    if (!chunk.ok()) {
      if (absl::IsDeadlineExceeded(chunk.status())) continue;
      break;
    }
    if (chunk->empty()) break;
    util::MutexLock lock(&mu_);
    Parse(*chunk);
  }
  util::MutexLock lock(&mu_);
  closed_ = true;
}

void SseClient::Parse(const std::string& chunk) {
  pending_ += chunk;
  if (!head_done_) {
    size_t end = pending_.find("\r\n\r\n");
    if (end == std::string::npos) return;
    Response r;
    ParseHead(pending_.substr(0, end), &r);
    status_ = r.status;
    head_done_ = true;
    pending_ = pending_.substr(end + 4);
  }
  size_t nl;
  while ((nl = pending_.find('\n')) != std::string::npos) {
    std::string line = pending_.substr(0, nl);
    pending_ = pending_.substr(nl + 1);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) {
      if (!current_.event.empty()) events_.push_back(std::move(current_));
      current_ = SseEvent();
      continue;
    }
    if (line[0] == ':') continue;
    size_t colon = line.find(':');
    std::string field = line.substr(0, colon);
    std::string value = colon == std::string::npos ? "" : line.substr(colon + 1);
    if (!value.empty() && value[0] == ' ') value = value.substr(1);
    if (field == "id") {
      current_.id = value;
    } else if (field == "event") {
      current_.event = value;
    } else if (field == "data") {
      current_.data = nlohmann::json::parse(value, nullptr, false);
    }
  }
}

int SseClient::status() const {
  util::MutexLock lock(&mu_);
  return status_;
}

bool SseClient::closed() const {
  util::MutexLock lock(&mu_);
  return closed_;
}

std::vector<SseEvent> SseClient::Events() const {
  util::MutexLock lock(&mu_);
  return events_;
}

bool SseClient::WaitFor(const std::function<bool(const std::vector<SseEvent>&)>& pred,
                        absl::Duration timeout) {
  return WaitUntil([&] { return pred(Events()); }, timeout);
}

}  // namespace discovery::testing
