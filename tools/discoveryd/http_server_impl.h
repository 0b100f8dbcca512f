// File: tools/discoveryd/http_server_impl.h
//
// The inside of HttpServer, shared by its two halves:
//   http_server.cc   the listener: bind, accept, the connection cap, EMFILE pauses, Start/Stop
//   http_session.cc  one connection (plain TCP or TLS): requests, responses, SSE streaming
// Not for use outside those two files.
#pragma once

#include <atomic>
#include <boost/asio.hpp>
#include <boost/asio/ssl/context.hpp>
#include <map>
#include <memory>
#include <optional>

#include "http_server.h"
#include "util/logging.h"
#include "util/sync.h"

namespace discoveryd {

// One accepted connection, whatever its transport (http_session.cc). Exchange + EventStream
// for the handler; Start() begins the TLS handshake (https) or the first read.
class SessionBase : public Exchange, public EventStream {
 public:
  virtual void Start() = 0;
};

struct HttpServer::Impl {
  using tcp = boost::asio::ip::tcp;

  Impl(Options o, HttpHandler h)
      : options(std::move(o)),
        handler(std::move(h)),
        acceptor(boost::asio::make_strand(ioc)),
        accept_timer(acceptor.get_executor()) {}

  void Accept();
  void OnAccept(boost::system::error_code ec, tcp::socket socket);
  void PauseAccepting(const boost::system::error_code& ec);
  void Reject(tcp::socket socket);
  void Forget(SessionBase* session) {
    discovery::util::MutexLock lock(&mu);
    sessions.erase(session);
  }

  Options options;
  HttpHandler handler;
  std::shared_ptr<spdlog::logger> logger;
  // Set when the server speaks https (Options::tls): every session handshakes first.
  std::shared_ptr<boost::asio::ssl::context> tls;
  boost::asio::io_context ioc;
  tcp::acceptor acceptor;
  // Touched only on the acceptor's strand.
  boost::asio::steady_timer accept_timer;
  discovery::util::Backoff accept_backoff{absl::Milliseconds(100), absl::Seconds(1)};
  absl::Time last_reject_log = absl::InfinitePast();
  size_t max_connections = 0;  // effective cap, set by Create

  std::atomic<uint64_t> rejected{0};
  std::atomic<uint64_t> accept_pauses{0};
  std::atomic<uint64_t> slow_streams{0};
  std::atomic<uint64_t> stream_writes{0};
  std::atomic<uint64_t> tls_handshake_failures{0};
  std::atomic<int64_t> last_handshake_log_ns{0};  // MonoNow of the last warning, rate limit
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> guard;
  std::atomic<bool> stopping{false};

  mutable discovery::util::Mutex mu;
  std::map<SessionBase*, std::weak_ptr<SessionBase>> sessions ABSL_GUARDED_BY(mu);
};

// A session for a freshly accepted socket: plain HTTP, or TLS when impl->tls is set
// (http_session.cc). Not started yet.
std::shared_ptr<SessionBase> NewSession(boost::asio::ip::tcp::socket socket,
                                        HttpServer::Impl* impl);

// Loads the server's certificate chain and key, and the client CA when set (mTLS: a client
// without a certificate signed by it fails the handshake). kInvalidArgument naming the file
// for a missing, unreadable or invalid one, or a key that does not match the certificate.
absl::StatusOr<std::shared_ptr<boost::asio::ssl::context>> MakeServerTlsContext(
    const HttpServer::Tls& tls);

}  // namespace discoveryd
