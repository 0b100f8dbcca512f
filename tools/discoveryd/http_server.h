// File: tools/discoveryd/http_server.h
//
// A small event-driven HTTP/1.1 server (Boost.Beast + Asio) for discoveryd: a fixed number of
// io threads serve every connection with async reads and writes, so thousands of idle
// Server-Sent-Events clients cost memory, not threads.
//
//   HttpServer::Options o;
//   o.host = "127.0.0.1"; o.port = 0;  // 0 = any free port
//   auto server = HttpServer::Create(o, [](HttpRequest req, std::shared_ptr<Exchange> ex) {
//     ex->Reply({.status = 200, .body = "{}"});  // from any thread, exactly once
//   });
//   (*server)->Start();
//   ... (*server)->port() ...
//   (*server)->Stop();
//
// What the server enforces by itself (the handler never sees these requests): bodies over
// `max_body_bytes` (413, connection closed), headers over `max_header_bytes` (431, closed),
// unparsable requests (400, closed), clients that send nothing for `read_timeout` while a
// request is expected (connection closed). Keep-alive follows the request's HTTP version and
// `Connection` header. Parsing, the answers to bad requests and the HttpRequest/HttpResponse
// conversions are the socket-free functions of http_codec.h.
//
// Thread-safety: HttpServer is thread-safe. The handler runs on an io thread and must not
// block: hand blocking work to another executor and call Exchange::Reply from there.
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "http_message.h"

namespace spdlog {
class logger;
}

namespace discoveryd {

// The body of a streamed (Server-Sent Events) response. Thread-safe.
class EventStream {
 public:
  virtual ~EventStream() = default;
  // Queues `data` for the client. Returns false when the stream is closed. When the bytes
  // still waiting for the client exceed the server's `max_stream_backlog_bytes` at the time
  // of the call, the client is too slow: the stream is closed and false returned.
  virtual bool Send(std::string data) = 0;
  virtual void Close() = 0;
  virtual bool closed() const = 0;
};

// One request's way back to the client. Thread-safe; use exactly one of Reply() or
// StartEventStream(), once.
class Exchange {
 public:
  virtual ~Exchange() = default;
  virtual void Reply(HttpResponse response) = 0;
  // Answers 200 with `Content-Type: text/event-stream` plus `headers`, then streams whatever
  // is Send() on the returned stream until either side closes it. Sends a comment line every
  // `stream_keepalive`. `on_close` runs exactly once, on an io thread, when the stream ends.
  virtual std::shared_ptr<EventStream> StartEventStream(HeaderList headers,
                                                        std::function<void()> on_close) = 0;
};

using HttpHandler = std::function<void(HttpRequest request, std::shared_ptr<Exchange> exchange)>;

class HttpServer {
 public:
  struct Options {
    std::string host = "127.0.0.1";
    int port = 8080;  // 0 = pick a free port (see port())
    int io_threads = 2;
    size_t max_body_bytes = kDefaultMaxBodyBytes;
    size_t max_header_bytes = kDefaultMaxHeaderBytes;
    // Time a client may take to send a whole request (also the idle time of a keep-alive
    // connection between requests).
    absl::Duration read_timeout = absl::Seconds(10);
    // Time one write may take before the client is considered gone.
    absl::Duration write_timeout = absl::Seconds(10);
    size_t max_stream_backlog_bytes = 1024 * 1024;
    absl::Duration stream_keepalive = absl::Seconds(15);
    // Called for every response the server makes up by itself (413, 400), for metrics.
    std::function<void(const std::string& method, int status)> on_protocol_error{};
    std::shared_ptr<spdlog::logger> logger{};
  };

  // Binds and listens (kInvalidArgument for a bad host, kUnavailable when the address is
  // taken). Nothing is served before Start().
  static absl::StatusOr<std::unique_ptr<HttpServer>> Create(Options options, HttpHandler handler);
  ~HttpServer();

  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  void Start();
  // Stops accepting, closes every connection (streams get their on_close) and joins the io
  // threads. Idempotent.
  void Stop();

  // The bound port (the real one when Options::port was 0).
  int port() const { return port_; }
  const std::string& host() const { return options_.host; }
  size_t open_connections() const;

  struct Impl;

 private:
  HttpServer(Options options, HttpHandler handler);

  Options options_;
  int port_ = 0;
  std::shared_ptr<Impl> impl_;
  std::vector<std::thread> threads_;
  std::atomic<bool> started_{false};
  std::atomic<bool> stopped_{false};
};

}  // namespace discoveryd
