// One connection of HttpServer (http_server.h), plain or TLS: keep-alive requests, their
// responses, and SSE streaming with its backlog rule. The listener is http_server.cc.
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <chrono>
#include <deque>
#include <optional>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "http_codec.h"
#include "http_server.h"
#include "http_server_impl.h"
#include "util/clock.h"
#include "util/logging.h"
#include "util/sync.h"

namespace discoveryd {
namespace {

namespace util = discovery::util;

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

std::chrono::steady_clock::duration ToChrono(absl::Duration d) {
  return absl::ToChronoNanoseconds(d);
}

// At most this many buffers per gather write (IOV_MAX is 1024 on Linux; Asio splits larger
// sequences itself, but a bounded vector keeps a burst's write predictable).
constexpr size_t kMaxGather = 512;

// One TCP connection: reads requests one after another (keep-alive), hands each to the
// handler, writes its response; or, after StartEventStream, becomes a write-only stream.
// `Stream` is beast::tcp_stream (http) or beast::ssl_stream over it (https): the one code
// path for both; only the handshake and the raw-socket steps differ (`if constexpr (kTls)`).
// Every member below is touched only on the connection's strand, except the atomics.
template <class Stream>
class Session : public SessionBase, public std::enable_shared_from_this<Session<Stream>> {
  static constexpr bool kTls = !std::is_same_v<Stream, beast::tcp_stream>;
  using std::enable_shared_from_this<Session<Stream>>::shared_from_this;

 public:
  template <class... StreamArgs>
  Session(HttpServer::Impl* server, StreamArgs&&... stream_args)
      : stream_(std::forward<StreamArgs>(stream_args)...),
        server_(server),
        limits_{server->options.max_body_bytes, server->options.max_header_bytes},
        timer_(stream_.get_executor()) {
    beast::error_code ec;
    auto ep = lowest().socket().remote_endpoint(ec);
    if (!ec) remote_ = absl::StrCat(ep.address().to_string(), ":", ep.port());
  }

  void Start() override {
    if constexpr (kTls) {
      net::dispatch(stream_.get_executor(),
                    beast::bind_front_handler(&Session::Handshake, shared_from_this()));
    } else {
      net::dispatch(stream_.get_executor(),
                    beast::bind_front_handler(&Session::DoRead, shared_from_this()));
    }
  }

  // ---- Exchange ----
  void Reply(HttpResponse response) override {
    if (replied_.exchange(true)) return;
    net::post(stream_.get_executor(),
              [self = shared_from_this(), r = std::move(response)]() mutable {
                self->WriteResponse(std::move(r));
              });
  }

  std::shared_ptr<EventStream> StartEventStream(HeaderList headers,
                                                std::function<void()> on_close) override {
    if (replied_.exchange(true)) return nullptr;
    {
      util::MutexLock lock(&close_mu_);
      on_close_ = std::move(on_close);
    }
    std::string head =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        "X-Accel-Buffering: no\r\nConnection: close\r\n";
    for (const auto& [k, v] : headers) absl::StrAppend(&head, k, ": ", v, "\r\n");
    head += "\r\n";
    net::post(stream_.get_executor(), [self = shared_from_this(), h = std::move(head)]() mutable {
      self->BeginStream(std::move(h));
    });
    return std::shared_ptr<EventStream>(shared_from_this(), static_cast<EventStream*>(this));
  }

  // ---- EventStream ----
  bool Send(std::string data) override {
    std::vector<SharedBytes> one;
    one.push_back(MakeShared(std::move(data)));
    return SendFrames(std::move(one));
  }

  bool SendFrames(std::vector<SharedBytes> frames) override {
    if (closed_.load()) return false;
    size_t size = 0;
    for (const SharedBytes& f : frames) size += f->size();
    // The rule is documented in http_server.h: the first Send, or one into an empty queue, is
    // taken whole; any other only within the backlog bound. Check and add in one step, so
    // concurrent Sends cannot both pass.
    const bool first = first_send_.exchange(false);
    if (first) first_unsent_.store(size);
    // The rest of the init not yet taken by the socket is allowed on top of the backlog.
    const size_t limit = server_->options.max_stream_backlog_bytes + first_unsent_.load();
    size_t queued = backlog_.load();
    do {
      if (!first && queued != 0 && queued + size > limit) {
        server_->slow_streams.fetch_add(1);
        SPDLOG_LOGGER_WARN(server_->logger,
                           "stream client {} too slow ({} bytes behind, {} more would pass the "
                           "{} byte backlog): closing",
                           remote_, queued, size, limit);
        Close();
        return false;
      }
    } while (!backlog_.compare_exchange_weak(queued, queued + size));
    net::post(stream_.get_executor(), [self = shared_from_this(), f = std::move(frames)]() mutable {
      self->Enqueue(std::move(f));
    });
    return true;
  }

  void Close() override {
    net::post(stream_.get_executor(), [self = shared_from_this()] { self->DoClose(); });
  }

  bool closed() const override { return closed_.load(); }

 private:
  const HttpServer::Options& opts() const { return server_->options; }
  beast::tcp_stream& lowest() { return beast::get_lowest_layer(stream_); }

  // ---- TLS ----
  // The handshake has the idle deadline of a request: a stranger that connects and sends
  // nothing holds a connection (counted in the cap) for read_timeout at most.
  void Handshake() {
    if constexpr (kTls) {
      lowest().expires_after(ToChrono(opts().read_timeout));
      stream_.async_handshake(net::ssl::stream_base::server,
                              [self = shared_from_this()](beast::error_code ec) {
                                if (ec) return self->OnHandshakeError(ec);
                                self->DoRead();
                              });
    }
  }

  void OnHandshakeError(beast::error_code ec) {
    server_->tls_handshake_failures.fetch_add(1);
    const int64_t now = absl::ToUnixNanos(util::MonoNow());
    int64_t last = server_->last_handshake_log_ns.load();
    if (now - last > absl::ToInt64Nanoseconds(absl::Seconds(10)) &&
        server_->last_handshake_log_ns.compare_exchange_strong(last, now)) {
      SPDLOG_LOGGER_WARN(server_->logger, "TLS handshake with {} failed: {} ({} so far)", remote_,
                         ec.message(), server_->tls_handshake_failures.load());
    } else {
      SPDLOG_LOGGER_DEBUG(server_->logger, "TLS handshake with {} failed: {}", remote_,
                          ec.message());
    }
    // A plain HTTP request at the https port: say so in plain HTTP (the client can read it),
    // then close.
    if (ec.category() == net::error::get_ssl_category() &&
        ERR_GET_REASON(static_cast<unsigned long>(ec.value())) == SSL_R_HTTP_REQUEST) {
      static const std::string kAnswer =
          "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 39\r\n"
          "Connection: close\r\n\r\nthis port speaks https, not plain http\n";
      lowest().expires_after(ToChrono(opts().write_timeout));
      net::async_write(
          lowest(), net::buffer(kAnswer),
          [self = shared_from_this()](beast::error_code, size_t) { self->LingeringClose(); });
      return;
    }
    DoClose();
  }

  void DoRead() {
    if (closed_.load()) return;
    NewRequestParser(&parser_, limits_);
    lowest().expires_after(ToChrono(opts().read_timeout));
    http::async_read_header(stream_, buffer_, *parser_,
                            beast::bind_front_handler(&Session::OnHeader, shared_from_this()));
  }

  void OnHeader(beast::error_code ec, size_t) {
    if (ec) return OnReadError(ec);
    if (WantsContinue(*parser_)) {
      auto cont = std::make_shared<std::string>("HTTP/1.1 100 Continue\r\n\r\n");
      lowest().expires_after(ToChrono(opts().write_timeout));
      net::async_write(stream_, net::buffer(*cont),
                       [self = shared_from_this(), cont](beast::error_code wec, size_t) {
                         if (wec) return self->DoClose();
                         self->ReadBody();
                       });
      return;
    }
    ReadBody();
  }

  void ReadBody() {
    lowest().expires_after(ToChrono(opts().read_timeout));
    http::async_read(stream_, buffer_, *parser_,
                     beast::bind_front_handler(&Session::OnRead, shared_from_this()));
  }

  void OnReadError(beast::error_code ec) {
    std::optional<HttpResponse> r = ReadErrorResponse(ec, limits_);
    // EOF, reset, timeout of a slow or idle client: just close.
    if (!r.has_value()) return DoClose();
    if (opts().on_protocol_error) {
      std::string method = parser_.has_value() ? std::string(parser_->get().method_string()) : "";
      opts().on_protocol_error(method, r->status);
    }
    replied_.store(true);
    WriteResponse(*std::move(r));
  }

  void OnRead(beast::error_code ec, size_t) {
    if (ec) return OnReadError(ec);
    lowest().expires_never();
    BeastRequest msg = parser_->release();
    parser_.reset();
    keep_alive_ = msg.keep_alive();
    HttpRequest req = ToHttpRequest(std::move(msg), remote_);
    replied_.store(false);
    server_->handler(std::move(req), shared_from_this());
  }

  void WriteResponse(HttpResponse r) {
    if (closed_.load()) return;
    bool close = r.close || !keep_alive_ || server_->stopping.load();
    if (r.shared_body != nullptr) {
      // A cached body: its head, then the shared buffer itself (no copy), in one gather write.
      auto head = std::make_shared<std::string>(SharedBodyHead(r, !close));
      std::array<net::const_buffer, 2> bufs{
          net::buffer(*head), net::buffer(r.shared_body->data(), r.shared_body->size())};
      lowest().expires_after(ToChrono(opts().write_timeout));
      net::async_write(stream_, bufs,
                       [self = shared_from_this(), head, body = std::move(r.shared_body), close](
                           beast::error_code ec, size_t) {
                         if (ec) return self->DoClose();
                         if (close) return self->LingeringClose();
                         self->DoRead();
                       });
      return;
    }
    auto res = std::make_shared<BeastResponse>(ToBeastResponse(std::move(r), !close));
    lowest().expires_after(ToChrono(opts().write_timeout));
    http::async_write(stream_, *res,
                      [self = shared_from_this(), res, close](beast::error_code ec, size_t) {
                        if (ec) return self->DoClose();
                        if (close) return self->LingeringClose();
                        self->DoRead();
                      });
  }

  // Half-closes and discards what the client still sends (e.g. the rest of an oversized body)
  // for a moment, so it reads our response instead of a connection reset.
  void LingeringClose() {
    beast::error_code ec;
    lowest().socket().shutdown(tcp::socket::shutdown_send, ec);
    lowest().expires_after(std::chrono::seconds(2));
    Discard();
  }

  // Reads the raw bytes under TLS too: nothing is decrypted any more, they are dropped.
  void Discard() {
    lowest().async_read_some(net::buffer(scratch_),
                             [self = shared_from_this()](beast::error_code ec, size_t) {
                               if (ec) return self->DoClose();
                               self->Discard();
                             });
  }

  // ---- streaming ----
  void BeginStream(std::string head) {
    if (closed_.load()) return;
    lowest().expires_never();
    backlog_.fetch_add(head.size());
    Enqueue({MakeShared(std::move(head))});
    // Anything the client sends now (or its EOF) ends the stream: EventSource never sends.
    // Plain: on the raw socket (no stream timer). TLS: through the SSL stream (a record or a
    // close_notify); its one lower-layer read stays pending, so the write deadlines below
    // never touch it.
    auto on_read = [self = shared_from_this()](beast::error_code, size_t) { self->DoClose(); };
    if constexpr (kTls) {
      stream_.async_read_some(net::buffer(scratch_), std::move(on_read));
    } else {
      lowest().socket().async_read_some(net::buffer(scratch_), std::move(on_read));
    }
    ArmKeepalive();
  }

  void ArmKeepalive() {
    timer_.expires_after(ToChrono(opts().stream_keepalive));
    timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (ec || self->closed_.load()) return;
      // Only an idle stream needs a ping: bytes already on their way keep it alive, and a
      // client that reads nothing must not grow its queue by pings.
      if (!self->writing_ && self->queue_.empty()) {
        static const SharedBytes kPing = MakeShared(": keep-alive\n\n");
        self->backlog_.fetch_add(kPing->size());
        self->Enqueue({kPing});
      }
      self->ArmKeepalive();
    });
  }

  void Enqueue(std::vector<SharedBytes> frames) {
    if (closed_.load()) return;
    for (SharedBytes& f : frames) {
      if (!f->empty()) queue_.push_back(std::move(f));
    }
    if (!writing_) WriteNext();
  }

  void WriteNext() {
    // Everything queued goes out in one gather write: the buffers are shared (the same frame
    // object for every client), never copied here.
    inflight_.clear();
    buffers_.clear();
    while (!queue_.empty() && inflight_.size() < kMaxGather) {
      inflight_.push_back(std::move(queue_.front()));
      queue_.pop_front();
      buffers_.emplace_back(inflight_.back()->data(), inflight_.back()->size());
    }
    if (inflight_.empty()) {
      writing_ = false;
      if (queue_.empty()) std::deque<SharedBytes>().swap(queue_);
      return;
    }
    writing_ = true;
    server_->stream_writes.fetch_add(1);
    lowest().expires_after(ToChrono(opts().write_timeout));
    net::async_write(
        stream_, buffers_, [self = shared_from_this()](beast::error_code ec, size_t n) {
          self->backlog_.fetch_sub(std::min(n, self->backlog_.load()));
          // Bytes go out in Send order: the init's first (roughly: the response
          // head precedes it, which only shortens the allowance by its size).
          size_t unsent = self->first_unsent_.load();
          while (unsent > 0 &&
                 !self->first_unsent_.compare_exchange_weak(unsent, unsent - std::min(n, unsent))) {
          }
          // Release our references now (a drained init must not stay allocated).
          self->inflight_.clear();
          self->buffers_.clear();
          if (ec) return self->DoClose();
          self->lowest().expires_never();
          self->WriteNext();
        });
  }

  void DoClose() {
    if (closed_.exchange(true)) return;
    beast::error_code ec;
    timer_.cancel();
    lowest().socket().shutdown(tcp::socket::shutdown_both, ec);
    lowest().socket().close(ec);
    queue_.clear();
    std::function<void()> on_close;
    {
      util::MutexLock lock(&close_mu_);
      on_close = std::move(on_close_);
      on_close_ = nullptr;
    }
    if (on_close) on_close();
    server_->Forget(this);
  }

  Stream stream_;
  HttpServer::Impl* server_;
  const ParserLimits limits_;
  net::steady_timer timer_;
  beast::flat_buffer buffer_;
  std::optional<RequestParser> parser_;
  std::string remote_;
  bool keep_alive_ = true;
  bool writing_ = false;
  std::deque<SharedBytes> queue_;
  std::vector<SharedBytes> inflight_;       // the buffers of the write in flight
  std::vector<net::const_buffer> buffers_;  // their views, for the gather write
  // Where bytes nobody reads go: a lingering close's leftovers, anything a client sends on an
  // SSE stream (which ends it). Small: every idle subscriber holds one.
  std::array<char, 256> scratch_{};
  std::atomic<bool> closed_{false};
  std::atomic<bool> replied_{false};
  std::atomic<bool> first_send_{true};
  std::atomic<size_t> backlog_{0};
  std::atomic<size_t> first_unsent_{0};  // bytes of the first Send (init) not yet written
  util::Mutex close_mu_;
  std::function<void()> on_close_ ABSL_GUARDED_BY(close_mu_);
};

}  // namespace

std::shared_ptr<SessionBase> NewSession(tcp::socket socket, HttpServer::Impl* impl) {
  if (impl->tls != nullptr) {
    return std::make_shared<Session<beast::ssl_stream<beast::tcp_stream>>>(impl, std::move(socket),
                                                                           *impl->tls);
  }
  return std::make_shared<Session<beast::tcp_stream>>(impl, std::move(socket));
}

}  // namespace discoveryd
