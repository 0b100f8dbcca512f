#include "gateway/transport.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "gateway/http_client.h"
#include "util/clock.h"

namespace discovery::gateway {

namespace beast = boost::beast;
namespace asio = boost::asio;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;

namespace {

absl::Status Readable(const char* what, const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  if (in.is_open()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("gateway TLS ", what, " ", file, ": cannot read: ", std::strerror(errno)));
}

std::chrono::steady_clock::duration Remaining(absl::Time deadline) {
  absl::Duration left = deadline - util::MonoNow();
  if (left < absl::Milliseconds(1)) left = absl::Milliseconds(1);
  return absl::ToChronoMicroseconds(left);
}

// OpenSSL's reason for a failed handshake, plus what the verification found (the CA is not
// the one that signed the gateway's certificate, or the certificate names another host), or
// a hint when the other side does not speak TLS at all.
std::string HandshakeError(const beast::error_code& ec, SSL* ssl) {
  std::string out = ec.message();
  if (ec.category() != asio::error::get_ssl_category()) return out;
  const int reason = ERR_GET_REASON(static_cast<unsigned long>(ec.value()));
  if (reason == SSL_R_CERTIFICATE_VERIFY_FAILED) {
    long v = SSL_get_verify_result(ssl);
    if (v != X509_V_OK) absl::StrAppend(&out, ": ", X509_verify_cert_error_string(v));
  } else if (reason == SSL_R_WRONG_VERSION_NUMBER || reason == SSL_R_PACKET_LENGTH_TOO_LONG) {
    out += " (the gateway does not speak TLS here: plain http?)";
  }
  return out;
}

}  // namespace

absl::StatusOr<std::shared_ptr<ssl::context>> MakeClientTlsContext(const TlsFiles& files) {
  if (files.cert_file.empty() != files.key_file.empty()) {
    return absl::InvalidArgumentError(
        "gateway TLS: cert_file and key_file go together (DISCOVERY_GATEWAY_CERT / _KEY)");
  }
  for (auto [what, file] :
       {std::pair{"ca_file", &files.ca_file}, std::pair{"cert_file", &files.cert_file},
        std::pair{"key_file", &files.key_file}}) {
    if (file->empty()) continue;
    if (absl::Status s = Readable(what, *file); !s.ok()) return s;
  }
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_client);
  SSL_CTX_set_min_proto_version(ctx->native_handle(), TLS1_2_VERSION);
  ctx->set_password_callback(
      [](std::size_t, ssl::context::password_purpose) { return std::string(); });
  boost::system::error_code ec;
  if (files.ca_file.empty()) {
    ctx->set_default_verify_paths(ec);
  } else {
    ctx->load_verify_file(files.ca_file, ec);
    if (ec) {
      return absl::InvalidArgumentError(absl::StrCat("gateway TLS ca_file ", files.ca_file,
                                                     ": not a PEM CA certificate: ", ec.message()));
    }
  }
  ctx->set_verify_mode(ssl::verify_peer);
  if (!files.cert_file.empty()) {
    ctx->use_certificate_chain_file(files.cert_file, ec);
    if (ec) {
      return absl::InvalidArgumentError(absl::StrCat("gateway TLS cert_file ", files.cert_file,
                                                     ": not a PEM certificate: ", ec.message()));
    }
    ctx->use_private_key_file(files.key_file, ssl::context::pem, ec);
    if (ec || SSL_CTX_check_private_key(ctx->native_handle()) != 1) {
      return absl::InvalidArgumentError(absl::StrCat("gateway TLS key_file ", files.key_file,
                                                     ": not an unencrypted PEM key of ",
                                                     files.cert_file));
    }
  }
  return ctx;
}

GatewayConn::GatewayConn(std::shared_ptr<ssl::context> tls) : ctx_(std::move(tls)) {
  if (ctx_ != nullptr) {
    tls_.emplace(ioc_, *ctx_);
  } else {
    plain_.emplace(ioc_);
  }
}

GatewayConn::~GatewayConn() = default;

beast::tcp_stream& GatewayConn::lowest() {
  return tls_.has_value() ? beast::get_lowest_layer(*tls_) : *plain_;
}

void GatewayConn::ExpiresAt(absl::Time deadline) { lowest().expires_after(Remaining(deadline)); }

void GatewayConn::Run() {
  ioc_.restart();
  ioc_.run();
}

void GatewayConn::Cancel() {
  asio::post(ioc_, [this] {
    beast::error_code ec;
    lowest().socket().close(ec);
  });
}

absl::Status GatewayConn::Connect(const Url& url, absl::Time deadline) {
  beast::error_code ec;
  tcp::resolver resolver(ioc_);
  auto endpoints = resolver.resolve(url.host, url.port, ec);
  if (ec) {
    return absl::UnavailableError(absl::StrCat("gateway ", url.text, ": resolve: ", ec.message()));
  }
  ExpiresAt(deadline);
  lowest().async_connect(endpoints, [&ec](beast::error_code e, const tcp::endpoint&) { ec = e; });
  Run();
  if (ec) {
    return absl::UnavailableError(absl::StrCat("gateway ", url.text, ": connect: ", ec.message()));
  }
  if (tls_.has_value()) {
    SSL* ssl = tls_->native_handle();
    // The certificate must name the URL's host: an IP address, or a DNS name (sent as SNI).
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    asio::ip::make_address(url.host, ec);
    const bool is_ip = !ec;
    if (is_ip) {
      X509_VERIFY_PARAM_set1_ip_asc(param, url.host.c_str());
    } else {
      SSL_set_tlsext_host_name(ssl, url.host.c_str());
      X509_VERIFY_PARAM_set1_host(param, url.host.c_str(), url.host.size());
    }
    ec = {};
    ExpiresAt(deadline);
    tls_->async_handshake(ssl::stream_base::client, [&ec](beast::error_code e) { ec = e; });
    Run();
    if (ec) {
      return absl::UnavailableError(
          absl::StrCat("gateway ", url.text, ": TLS handshake: ", HandshakeError(ec, ssl)));
    }
  }
  open = true;
  return absl::OkStatus();
}

}  // namespace discovery::gateway
