// discoveryd's TLS context (--tls-cert/--tls-key/--tls-client-ca): loaded once at start-up,
// every failure a clear kInvalidArgument naming the flag and the file.
#include <openssl/ssl.h>

#include <boost/asio/ssl.hpp>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "http_server_impl.h"

namespace discoveryd {
namespace {

namespace ssl = boost::asio::ssl;

absl::Status Readable(const char* flag, const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in.is_open()) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " ", file, ": cannot read: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status Invalid(const char* flag, const std::string& file, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(flag, " ", file, ": ", what));
}

}  // namespace

absl::StatusOr<std::shared_ptr<ssl::context>> MakeServerTlsContext(const HttpServer::Tls& tls) {
  if (tls.cert_file.empty() != tls.key_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls-cert and --tls-key go together: give both (https) or neither (http)");
  }
  if (tls.cert_file.empty()) {
    return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
  }
  for (auto [flag, file] :
       {std::pair{"--tls-cert", &tls.cert_file}, std::pair{"--tls-key", &tls.key_file},
        std::pair{"--tls-client-ca", &tls.client_ca_file}}) {
    if (file->empty()) continue;
    if (absl::Status s = Readable(flag, *file); !s.ok()) return s;
  }
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
  ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                   ssl::context::no_sslv3 | ssl::context::single_dh_use);
  SSL_CTX_set_min_proto_version(ctx->native_handle(), TLS1_2_VERSION);
  // An encrypted key must not make OpenSSL prompt on the terminal: no passphrase, it fails.
  ctx->set_password_callback(
      [](std::size_t, ssl::context::password_purpose) { return std::string(); });
  boost::system::error_code ec;
  ctx->use_certificate_chain_file(tls.cert_file, ec);
  if (ec) return Invalid("--tls-cert", tls.cert_file, "not a PEM certificate: " + ec.message());
  ctx->use_private_key_file(tls.key_file, ssl::context::pem, ec);
  if (ec && absl::StrContains(ec.message(), "mismatch")) {
    return Invalid("--tls-key", tls.key_file,
                   absl::StrCat("does not match the certificate in ", tls.cert_file));
  }
  if (ec) {
    return Invalid("--tls-key", tls.key_file,
                   "not an unencrypted PEM private key: " + ec.message());
  }
  if (SSL_CTX_check_private_key(ctx->native_handle()) != 1) {
    return Invalid("--tls-key", tls.key_file,
                   absl::StrCat("does not match the certificate in ", tls.cert_file));
  }
  if (!tls.client_ca_file.empty()) {
    ctx->load_verify_file(tls.client_ca_file, ec);
    if (ec) {
      return Invalid("--tls-client-ca", tls.client_ca_file,
                     "not a PEM CA certificate: " + ec.message());
    }
    // Tell clients which CA we accept, and refuse a handshake without a certificate by it.
    if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(tls.client_ca_file.c_str())) {
      SSL_CTX_set_client_CA_list(ctx->native_handle(), names);
    }
    ctx->set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
  }
  return ctx;
}

}  // namespace discoveryd
