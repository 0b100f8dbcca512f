// HttpServer's listener half: bind, accept, the connection cap, pauses when accept() fails,
// Start/Stop. One connection's life is http_session.cc (plain or TLS).
#include "http_server.h"

#include <spdlog/spdlog.h>

#include <boost/asio.hpp>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "fd_limits.h"
#include "http_server_impl.h"
#include "util/clock.h"
#include "util/logging.h"
#include "util/sync.h"

namespace discoveryd {
namespace {

namespace util = discovery::util;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using error_code = boost::system::error_code;

std::chrono::steady_clock::duration ToChrono(absl::Duration d) {
  return absl::ToChronoNanoseconds(d);
}

}  // namespace

void HttpServer::Impl::Accept() {
  acceptor.async_accept(net::make_strand(ioc), [this](error_code ec, tcp::socket socket) {
    OnAccept(ec, std::move(socket));
  });
}

void HttpServer::Impl::OnAccept(error_code ec, tcp::socket socket) {
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
  error_code nd;
  socket.set_option(tcp::no_delay(true), nd);
  std::shared_ptr<SessionBase> session = NewSession(std::move(socket), this);
  {
    util::MutexLock lock(&mu);
    sessions[session.get()] = session;
  }
  session->Start();
  Accept();
}

void HttpServer::Impl::PauseAccepting(const error_code& ec) {
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
  accept_timer.async_wait([this](error_code wec) {
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
  error_code ec;
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
  error_code ec;
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
  if (!options.tls.cert_file.empty() || !options.tls.key_file.empty() ||
      !options.tls.client_ca_file.empty()) {
    auto ctx = MakeServerTlsContext(options.tls);
    if (!ctx.ok()) return ctx.status();
    impl.tls = *std::move(ctx);
  }
  server->port_ = impl.acceptor.local_endpoint(ec).port();
  impl.max_connections =
      options.max_connections > 0 ? options.max_connections : DefaultMaxConnections();
  return server;
}

absl::Status HttpServer::CheckTls(const Tls& tls) {
  if (tls.cert_file.empty() && tls.key_file.empty() && tls.client_ca_file.empty()) {
    return absl::OkStatus();
  }
  return MakeServerTlsContext(tls).status();
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
      error_code ec;
      impl->ioc.run(ec);
    });
  }
}

void HttpServer::Stop() {
  if (stopped_.exchange(true)) return;
  impl_->stopping.store(true);
  net::post(impl_->acceptor.get_executor(), [impl = impl_.get()] {
    error_code ec;
    impl->acceptor.close(ec);
    impl->accept_timer.cancel();
  });
  std::vector<std::shared_ptr<SessionBase>> open;
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
  s.tls_handshake_failures = impl_->tls_handshake_failures.load();
  return s;
}

size_t HttpServer::open_connections() const {
  util::MutexLock lock(&impl_->mu);
  return impl_->sessions.size();
}

}  // namespace discoveryd
