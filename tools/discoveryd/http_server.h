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
// Strangers at the port (anyone who can reach it, token or not):
//   - Connections: at most `max_connections` are open at once (0 = DefaultMaxConnections(),
//     sized from the fd limit). One more is answered a fixed `503` with `Retry-After: 1` (one
//     non-blocking write into the fresh socket's empty send buffer) and closed at once; a
//     client that had already sent bytes may see a reset instead. Counted in
//     Stats::rejected_connections.
//   - accept() failing (EMFILE/ENFILE when fds run out, ENOBUFS/ENOMEM) pauses accepting:
//     100 ms, doubling (jittered, util::Backoff) up to 1 s while it keeps failing, back to
//     normal after the first success; never a busy loop. Counted in Stats::accept_pauses.
//     Connections waiting in the listen backlog meanwhile are served (or refused) later.
//   - SSE backlog (`max_stream_backlog_bytes`, B): bytes Send() on a stream and not yet taken
//     by the client's socket. The first Send of a stream (the init or resume burst, size I) is
//     taken whatever its size, and so is a Send into an empty queue; any other Send is taken
//     only when queued + its size <= B + the part of I not yet taken, else the client is too
//     slow: the stream is closed (counted in Stats::slow_streams_closed) and Send returns
//     false. So the init counts against the backlog, and a client still reading a large init
//     may fall B behind on top of it, never more: a stream holds at most I + B (or its largest
//     single message) — a 50 MB init to a client that does not read is held once and the
//     client is cut once B more has queued, and at the latest when one write has not
//     completed for `write_timeout`. Keep-alive
//     comments are only queued on an idle stream, and a drained buffer is released (the last
//     client to write a shared frame frees it). Writes coalesce: whatever is queued when the
//     previous write completes goes out as ONE gather write (a burst of frames, one syscall).
//
// TLS (Options::tls with a cert_file): every connection is an SSL stream (Boost.Asio over
// OpenSSL) and handshakes first, within `read_timeout` (a stranger that connects and sends
// nothing is dropped like an idle plain connection); it counts against `max_connections` from
// accept on. Everything above (keep-alive, pipelining, SSE and its backlog rule, the cap,
// EMFILE pauses) is the same code over either stream (http_session.cc). A failed handshake
// is counted in Stats::tls_handshake_failures; a plain HTTP request to the TLS port gets a
// plain `400` saying the port speaks https. With `client_ca_file` (mTLS) a client without a
// certificate signed by that CA fails the handshake.
//
// Thread-safety: HttpServer is thread-safe. The handler runs on an io thread and must not
// block: hand blocking work to another executor and call Exchange::Reply from there.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "fanout.h"
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
  // The exact rule (first Send, empty queue) is in the server comment above.
  virtual bool Send(std::string data) = 0;
  // Queues shared, immutable buffers (one frame serialised once for every client that gets
  // it: no per-client copy); one message for the backlog rule, of the buffers' total size.
  virtual bool SendFrames(std::vector<SharedBytes> frames) = 0;
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
  struct Tls {
    std::string cert_file{};       // PEM chain; empty = plain HTTP
    std::string key_file{};        // PEM private key of cert_file
    std::string client_ca_file{};  // PEM CA(s); set = mTLS (client certificates required)
  };

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
    // Connections open at once; past it a connection gets a 503 and is closed. 0 =
    // DefaultMaxConnections() (fd_limits.h: the fd soft limit minus a reserve).
    size_t max_connections = 0;
    // Called for every response the server makes up by itself (413, 400), for metrics.
    std::function<void(const std::string& method, int status)> on_protocol_error{};
    std::shared_ptr<spdlog::logger> logger{};
    Tls tls{};
  };

  // Binds and listens (kInvalidArgument for a bad host or TLS files that are missing,
  // unreadable or invalid, or only one of cert/key; kUnavailable when the address is taken).
  // Nothing is served before Start().
  static absl::StatusOr<std::unique_ptr<HttpServer>> Create(Options options, HttpHandler handler);
  ~HttpServer();
  // Loads `tls` as Create would (OK when no TLS is asked for): bad TLS flags are found before
  // anything else starts.
  static absl::Status CheckTls(const Tls& tls);

  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  void Start();
  // Stops accepting, closes every connection (streams get their on_close) and joins the io
  // threads. Idempotent.
  void Stop();

  // The bound port (the real one when Options::port was 0).
  int port() const { return port_; }
  const std::string& host() const { return options_.host; }
  bool tls() const { return !options_.tls.cert_file.empty(); }
  size_t open_connections() const;

  // Counters for /metrics (monotonic since Create, except open_connections).
  struct Stats {
    size_t open_connections = 0;
    size_t max_connections = 0;  // the effective cap
    uint64_t rejected_connections = 0;
    uint64_t accept_pauses = 0;
    uint64_t slow_streams_closed = 0;
    uint64_t stream_writes = 0;           // gather writes to SSE sockets (a burst of frames is one)
    uint64_t tls_handshake_failures = 0;  // failed or timed-out TLS handshakes (https only)
  };
  Stats stats() const;

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
