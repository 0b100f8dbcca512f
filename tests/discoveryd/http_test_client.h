// Small blocking HTTP/1.1 and Server-Sent-Events clients for the discoveryd end-to-end tests
// (loopback only, every call bounded by a timeout scaled with TimeScale()).
#ifndef DISCOVERY_TESTS_DISCOVERYD_HTTP_TEST_CLIENT_H_
#define DISCOVERY_TESTS_DISCOVERYD_HTTP_TEST_CLIENT_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "util/sync.h"

namespace discovery::testing {

using Headers = std::vector<std::pair<std::string, std::string>>;

struct Response {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  nlohmann::json Json() const { return nlohmann::json::parse(body, nullptr, false); }
};

// A connected TCP socket to 127.0.0.1:port with send/receive timeouts. Closed on destruction.
class TestSocket {
 public:
  static absl::StatusOr<std::unique_ptr<TestSocket>> Connect(int port, absl::Duration timeout);
  ~TestSocket();
  absl::Status SendAll(const std::string& data);
  // Up to `max` bytes; "" at EOF; an error on timeout or reset.
  absl::StatusOr<std::string> ReceiveSome(size_t max = 65536);
  // Reads one whole response (head + Content-Length body).
  absl::StatusOr<Response> ReadResponse();
  void ShutdownBoth();
  int fd() const { return fd_; }

 private:
  explicit TestSocket(int fd) : fd_(fd) {}
  int fd_;
  std::string buffered_;
};

// One request with `Connection: close`. `body` is sent with Content-Length when not empty or
// when the method is POST/PATCH.
absl::StatusOr<Response> Http(int port, const std::string& method, const std::string& path,
                              const std::string& body = "", const Headers& headers = {},
                              absl::Duration timeout = absl::Seconds(10));

struct SseEvent {
  std::string id;
  std::string event;
  nlohmann::json data;
};

// Reads an event stream on a background thread.
class SseClient {
 public:
  static absl::StatusOr<std::unique_ptr<SseClient>> Connect(int port, const std::string& path,
                                                            const Headers& headers = {});
  ~SseClient();

  int status() const;   // HTTP status once the head arrived, else 0
  bool closed() const;  // the server closed the stream
  std::vector<SseEvent> Events() const;
  // Waits until `pred(events)` holds.
  bool WaitFor(const std::function<bool(const std::vector<SseEvent>&)>& pred,
               absl::Duration timeout);

 private:
  SseClient() = default;
  void Run();
  void Parse(const std::string& chunk);

  std::unique_ptr<TestSocket> socket_;
  std::thread reader_;
  mutable util::Mutex mu_;
  int status_ = 0;
  bool closed_ = false;
  bool head_done_ = false;
  std::string pending_;
  SseEvent current_;
  std::vector<SseEvent> events_;
};

}  // namespace discovery::testing

#endif  // DISCOVERY_TESTS_DISCOVERYD_HTTP_TEST_CLIENT_H_
