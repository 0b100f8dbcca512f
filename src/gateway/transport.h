// One client connection of the gateway mode, plain http:// or https:// (Boost.Asio SSL over
// OpenSSL), shared by the REST client (http_client.cc) and the SSE source (sse_source.cc), so
// both dial, verify and time out the same way.
//
//   auto tls = MakeClientTlsContext({.ca_file = "ca.pem"});        // once per Connection
//   GatewayConn conn(url.tls ? *tls : nullptr);
//   absl::Status s = conn.Connect(url, deadline);                  // TCP + TLS handshake
//   conn.With([&](auto& stream) { http::async_write(stream, req, handler); });
//   conn.ExpiresAt(deadline); conn.Run();
//
// https: the server's certificate is verified against ca_file (the system store when empty)
// and must name the URL's host (DNS name or IP address; SNI is sent for names). A failure is
// kUnavailable "gateway URL: TLS handshake: certificate verify failed (...)".
//
// Thread-safety: a GatewayConn is used by one thread at a time, except Cancel() (any thread).
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace discovery::gateway {

struct Url;

struct TlsFiles {
  std::string ca_file{};    // PEM CA(s) the gateways' certificates are checked against
  std::string cert_file{};  // PEM client certificate (mTLS); with key_file
  std::string key_file{};
};

// The client side's TLS context. kInvalidArgument naming the file when one is missing,
// unreadable or invalid, or when only one of cert_file/key_file is given.
absl::StatusOr<std::shared_ptr<boost::asio::ssl::context>> MakeClientTlsContext(
    const TlsFiles& files);

class GatewayConn {
 public:
  // `tls` null: plain TCP.
  explicit GatewayConn(std::shared_ptr<boost::asio::ssl::context> tls);
  ~GatewayConn();
  GatewayConn(const GatewayConn&) = delete;
  GatewayConn& operator=(const GatewayConn&) = delete;

  // Resolves, connects and (https) handshakes before `deadline` (util::MonoNow). kUnavailable
  // naming the URL and the step that failed.
  absl::Status Connect(const Url& url, absl::Time deadline);

  // Calls f(stream) with the stream to read and write HTTP on (tcp_stream or ssl_stream).
  template <class F>
  void With(F&& f) {
    if (tls_.has_value()) {
      f(*tls_);
    } else {
      f(*plain_);
    }
  }
  boost::beast::tcp_stream& lowest();
  // The deadline of the operations started next.
  void ExpiresAt(absl::Time deadline);
  // Runs the context until the started operation completed (or its deadline passed).
  void Run();
  // From any thread: closes the socket, so a running or a later operation ends at once.
  void Cancel();

  boost::beast::flat_buffer buffer;
  bool open = false;

 private:
  boost::asio::io_context ioc_;
  std::shared_ptr<boost::asio::ssl::context> ctx_;
  std::optional<boost::beast::tcp_stream> plain_;
  std::optional<boost::beast::ssl_stream<boost::beast::tcp_stream>> tls_;
};

}  // namespace discovery::gateway
