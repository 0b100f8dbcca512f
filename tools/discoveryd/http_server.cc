#include "http_server.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <deque>
#include <optional>

#include "absl/strings/str_cat.h"
#include "fd_limits.h"
#include "http_codec.h"
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

}  // namespace

class Session;

struct HttpServer::Impl {
  Impl(Options o, HttpHandler h)
      : options(std::move(o)),
        handler(std::move(h)),
        acceptor(net::make_strand(ioc)),
        accept_timer(acceptor.get_executor()) {}

  void Accept();
  void OnAccept(beast::error_code ec, tcp::socket socket);
  void PauseAccepting(const beast::error_code& ec);
  void Reject(tcp::socket socket);
  void Forget(Session* session) {
    util::MutexLock lock(&mu);
    sessions.erase(session);
  }

  Options options;
  HttpHandler handler;
  std::shared_ptr<spdlog::logger> logger;
  net::io_context ioc;
  tcp::acceptor acceptor;
  // Touched only on the acceptor's strand.
  net::steady_timer accept_timer;
  util::Backoff accept_backoff{absl::Milliseconds(100), absl::Seconds(1)};
  absl::Time last_reject_log = absl::InfinitePast();
  size_t max_connections = 0;  // effective cap, set by Create

  std::atomic<uint64_t> rejected{0};
  std::atomic<uint64_t> accept_pauses{0};
  std::atomic<uint64_t> slow_streams{0};
  std::atomic<uint64_t> stream_writes{0};
  std::optional<net::executor_work_guard<net::io_context::executor_type>> guard;
  std::atomic<bool> stopping{false};

  mutable util::Mutex mu;
  std::map<Session*, std::weak_ptr<Session>> sessions ABSL_GUARDED_BY(mu);
};

// One TCP connection: reads requests one after another (keep-alive), hands each to the
// handler, writes its response; or, after StartEventStream, becomes a write-only stream.
// Every member below is touched only on the connection's strand, except the atomics.
class Session : public Exchange, public EventStream, public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, HttpServer::Impl* server)
      : stream_(std::move(socket)),
        server_(server),
        limits_{server->options.max_body_bytes, server->options.max_header_bytes},
        timer_(stream_.get_executor()) {
    beast::error_code ec;
    auto ep = stream_.socket().remote_endpoint(ec);
    if (!ec) remote_ = absl::StrCat(ep.address().to_string(), ":", ep.port());
  }

  void Start() {
    net::dispatch(stream_.get_executor(),
                  beast::bind_front_handler(&Session::DoRead, shared_from_this()));
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

  void DoRead() {
    if (closed_.load()) return;
    NewRequestParser(&parser_, limits_);
    stream_.expires_after(ToChrono(opts().read_timeout));
    http::async_read_header(stream_, buffer_, *parser_,
                            beast::bind_front_handler(&Session::OnHeader, shared_from_this()));
  }

  void OnHeader(beast::error_code ec, size_t) {
    if (ec) return OnReadError(ec);
    if (WantsContinue(*parser_)) {
      auto cont = std::make_shared<std::string>("HTTP/1.1 100 Continue\r\n\r\n");
      stream_.expires_after(ToChrono(opts().write_timeout));
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
    stream_.expires_after(ToChrono(opts().read_timeout));
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
    stream_.expires_never();
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
      stream_.expires_after(ToChrono(opts().write_timeout));
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
    stream_.expires_after(ToChrono(opts().write_timeout));
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
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    stream_.expires_after(std::chrono::seconds(2));
    Discard();
  }

  void Discard() {
    stream_.async_read_some(net::buffer(scratch_),
                            [self = shared_from_this()](beast::error_code ec, size_t) {
                              if (ec) return self->DoClose();
                              self->Discard();
                            });
  }

  // ---- streaming ----
  void BeginStream(std::string head) {
    if (closed_.load()) return;
    stream_.expires_never();
    backlog_.fetch_add(head.size());
    Enqueue({MakeShared(std::move(head))});
    // Anything the client sends now (or its EOF) ends the stream: EventSource never sends.
    stream_.socket().async_read_some(
        net::buffer(scratch_),
        [self = shared_from_this()](beast::error_code, size_t) { self->DoClose(); });
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
    stream_.expires_after(ToChrono(opts().write_timeout));
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
          self->stream_.expires_never();
          self->WriteNext();
        });
  }

  void DoClose() {
    if (closed_.exchange(true)) return;
    beast::error_code ec;
    timer_.cancel();
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.socket().close(ec);
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

  beast::tcp_stream stream_;
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
  std::array<char, 4096> scratch_{};
  std::atomic<bool> closed_{false};
  std::atomic<bool> replied_{false};
  std::atomic<bool> first_send_{true};
  std::atomic<size_t> backlog_{0};
  std::atomic<size_t> first_unsent_{0};  // bytes of the first Send (init) not yet written
  util::Mutex close_mu_;
  std::function<void()> on_close_ ABSL_GUARDED_BY(close_mu_);
};

void HttpServer::Impl::Accept() {
  acceptor.async_accept(net::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
    OnAccept(ec, std::move(socket));
  });
}

void HttpServer::Impl::OnAccept(beast::error_code ec, tcp::socket socket) {
  if (stopping.load() || !acceptor.is_open()) return;
  if (ec) {
    // A connection that went away while queued costs nothing to skip; anything else (out of
    // fds, out of memory) would fail again at once: pause instead of spinning.
    if (ec != net::error::connection_aborted) return PauseAccepting(ec);
    return Accept();
  }
  accept_backoff.Reset();
  bool full = false;
  {
    util::MutexLock lock(&mu);
    full = sessions.size() >= max_connections;
  }
  if (full) {
    Reject(std::move(socket));
    return Accept();
  }
  beast::error_code nd;
  socket.set_option(tcp::no_delay(true), nd);
  auto session = std::make_shared<Session>(std::move(socket), this);
  {
    util::MutexLock lock(&mu);
    sessions[session.get()] = session;
  }
  session->Start();
  Accept();
}

void HttpServer::Impl::PauseAccepting(const beast::error_code& ec) {
  accept_pauses.fetch_add(1);
  absl::Duration pause = accept_backoff.Next();
  if (accept_backoff.attempt() == 1) {
    SPDLOG_LOGGER_WARN(logger, "accept: {}; pausing accepts ({} ms, up to 1 s while it fails)",
                       ec.message(), absl::ToInt64Milliseconds(pause));
  } else {
    SPDLOG_LOGGER_DEBUG(logger, "accept: {} again; pausing {} ms", ec.message(),
                        absl::ToInt64Milliseconds(pause));
  }
  accept_timer.expires_after(ToChrono(pause));
  accept_timer.async_wait([this](beast::error_code wec) {
    if (wec || stopping.load() || !acceptor.is_open()) return;
    Accept();
  });
}

void HttpServer::Impl::Reject(tcp::socket socket) {
  uint64_t n = rejected.fetch_add(1) + 1;
  absl::Time now = util::MonoNow();
  if (now - last_reject_log > absl::Seconds(10)) {
    last_reject_log = now;
    SPDLOG_LOGGER_WARN(logger, "{} connections open (--max-connections): refusing more ({} so far)",
                       max_connections, n);
  }
  RefuseConnection(socket.native_handle());
  beast::error_code ec;
  socket.close(ec);
}

HttpServer::HttpServer(Options options, HttpHandler handler)
    : options_(std::move(options)), impl_(std::make_shared<Impl>(options_, std::move(handler))) {
  impl_->logger = discovery::util::ComponentLogger(options_.logger, "discoveryd.http");
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Create(Options options,
                                                               HttpHandler handler) {
  if (options.port < 0 || options.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("listen port out of range: ", options.port));
  }
  if (options.io_threads < 1) options.io_threads = 1;
  std::unique_ptr<HttpServer> server(new HttpServer(options, std::move(handler)));
  Impl& impl = *server->impl_;
  beast::error_code ec;
  net::ip::address addr = net::ip::make_address(options.host, ec);
  if (ec) {
    // A host name: resolve it once.
    tcp::resolver resolver(impl.ioc);
    auto results = resolver.resolve(options.host, std::to_string(options.port), ec);
    if (ec || results.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot resolve listen host \"", options.host, "\": ", ec.message()));
    }
    addr = results.begin()->endpoint().address();
  }
  tcp::endpoint endpoint(addr, static_cast<uint16_t>(options.port));
  impl.acceptor.open(endpoint.protocol(), ec);
  if (!ec) impl.acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) impl.acceptor.bind(endpoint, ec);
  if (!ec) impl.acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options.host, ":", options.port, ": ", ec.message()));
  }
  server->port_ = impl.acceptor.local_endpoint(ec).port();
  impl.max_connections =
      options.max_connections > 0 ? options.max_connections : DefaultMaxConnections();
  return server;
}

HttpServer::~HttpServer() {
  Stop();
  // Destroying the io_context destroys pending handlers (and the sessions they hold).
  impl_.reset();
}

void HttpServer::Start() {
  if (started_.exchange(true)) return;
  impl_->guard.emplace(impl_->ioc.get_executor());
  net::dispatch(impl_->acceptor.get_executor(), [impl = impl_.get()] { impl->Accept(); });
  for (int i = 0; i < options_.io_threads; ++i) {
    threads_.emplace_back([impl = impl_.get()] {
      beast::error_code ec;
      impl->ioc.run(ec);
    });
  }
}

void HttpServer::Stop() {
  if (stopped_.exchange(true)) return;
  impl_->stopping.store(true);
  net::post(impl_->acceptor.get_executor(), [impl = impl_.get()] {
    beast::error_code ec;
    impl->acceptor.close(ec);
    impl->accept_timer.cancel();
  });
  std::vector<std::shared_ptr<Session>> open;
  {
    util::MutexLock lock(&impl_->mu);
    for (auto& [ptr, weak] : impl_->sessions) {
      if (auto s = weak.lock()) open.push_back(std::move(s));
    }
  }
  for (auto& s : open) s->Close();
  open.clear();
  if (impl_->guard.has_value()) impl_->guard->reset();
  // Sessions finish their close on the io threads; give them a moment, then stop hard.
  absl::Time deadline = discovery::util::MonoNow() + absl::Seconds(2);
  while (open_connections() > 0 && discovery::util::MonoNow() < deadline && started_.load()) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  impl_->ioc.stop();
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

HttpServer::Stats HttpServer::stats() const {
  Stats s;
  s.open_connections = open_connections();
  s.max_connections = impl_->max_connections;
  s.rejected_connections = impl_->rejected.load();
  s.accept_pauses = impl_->accept_pauses.load();
  s.slow_streams_closed = impl_->slow_streams.load();
  s.stream_writes = impl_->stream_writes.load();
  return s;
}

size_t HttpServer::open_connections() const {
  util::MutexLock lock(&impl_->mu);
  return impl_->sessions.size();
}

}  // namespace discoveryd
