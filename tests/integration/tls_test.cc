// TLS against a real etcd serving https with a CA made by openssl in the test: the client with
// the CA (and a client certificate, mTLS) works; without the CA, or with plain text, it fails
// fast with kUnavailable instead of hanging.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "child_process.h"
#include "discovery/registrar.h"
#include "etcd/client.h"
#include "etcd_harness.h"

namespace discovery {
namespace {

using testing::ChildProcess;
using testing::TimeScale;
using testing::WaitUntil;
namespace pb = ::etcdserverpb;

absl::Status Shell(const std::string& cmd) {
  int rc = std::system(cmd.c_str());
  return rc == 0 ? absl::OkStatus() : absl::InternalError(absl::StrCat(cmd, " -> ", rc));
}

// CA, server cert for 127.0.0.1, client cert, all signed by the CA.
absl::Status MakeCerts(const std::string& d) {
  std::ofstream(d + "/san.cnf") << "subjectAltName=IP:127.0.0.1,DNS:localhost\n";
  std::string q = " >/dev/null 2>&1";
  for (const std::string& cmd : {
           absl::StrCat(
               "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout ", d,
               "/ca.key -out ", d, "/ca.pem", q),
           absl::StrCat("openssl req -newkey rsa:2048 -nodes -subj /CN=etcd -keyout ", d,
                        "/server.key -out ", d, "/server.csr", q),
           absl::StrCat("openssl x509 -req -in ", d, "/server.csr -CA ", d, "/ca.pem -CAkey ", d,
                        "/ca.key -CAcreateserial -days 2 -extfile ", d, "/san.cnf -out ", d,
                        "/server.pem", q),
           absl::StrCat("openssl req -newkey rsa:2048 -nodes -subj /CN=client -keyout ", d,
                        "/client.key -out ", d, "/client.csr", q),
           absl::StrCat("openssl x509 -req -in ", d, "/client.csr -CA ", d, "/ca.pem -CAkey ", d,
                        "/ca.key -CAcreateserial -days 2 -out ", d, "/client.pem", q),
       }) {
    if (absl::Status s = Shell(cmd); !s.ok()) return s;
  }
  return absl::OkStatus();
}

TEST(TlsTest, MutualTlsWorksAndWrongSetupsFailFast) {
  auto dir = testing::MakeTempDir("discovery-tls");
  ASSERT_TRUE(dir.ok());
  ASSERT_TRUE(MakeCerts(*dir).ok());
  int port = testing::PickFreePort(), peer = testing::PickFreePort();
  std::string url = absl::StrCat("https://127.0.0.1:", port);
  auto etcd = ChildProcess::Spawn({.argv = {"etcd",
                                            "--name",
                                            "tls",
                                            "--data-dir",
                                            *dir + "/data",
                                            "--listen-client-urls",
                                            url,
                                            "--advertise-client-urls",
                                            url,
                                            "--listen-peer-urls",
                                            absl::StrCat("http://127.0.0.1:", peer),
                                            "--initial-advertise-peer-urls",
                                            absl::StrCat("http://127.0.0.1:", peer),
                                            "--initial-cluster",
                                            absl::StrCat("tls=http://127.0.0.1:", peer),
                                            "--cert-file",
                                            *dir + "/server.pem",
                                            "--key-file",
                                            *dir + "/server.key",
                                            "--trusted-ca-file",
                                            *dir + "/ca.pem",
                                            "--client-cert-auth"}});
  ASSERT_TRUE(etcd.ok()) << etcd.status();

  EtcdOptions o;
  o.endpoints = {url};
  o.ca_file = *dir + "/ca.pem";
  o.cert_file = *dir + "/client.pem";
  o.key_file = *dir + "/client.key";
  o.call_timeout = TimeScale(absl::Seconds(2));
  auto conn = Connection::Create(o);
  ASSERT_TRUE(conn.ok()) << conn.status();
  // Wait for etcd to serve, through TLS.
  ASSERT_TRUE(WaitUntil([&] { return (*conn)->Ping().ok(); }, absl::Seconds(20)))
      << (*etcd)->ReadStderr();
  auto registrar = Registrar::Create({.connection = *conn});
  ASSERT_TRUE(registrar.ok());
  Instance in;
  in.type = "world";
  in.group = "tls";
  in.ports["game"] = 1;
  auto reg = (*registrar)->Register(in, {.ttl = absl::Seconds(2)});
  ASSERT_TRUE(reg.ok()) << reg.status();
  EXPECT_TRUE(reg->SetStatus(InstanceStatus::kReady).ok());

  // Without the client certificate (mTLS required): refused, quickly.
  EtcdOptions no_cert = o;
  no_cert.cert_file.clear();
  no_cert.key_file.clear();
  // Without our CA: the server certificate is not trusted.
  EtcdOptions wrong_ca = o;
  wrong_ca.ca_file = "/etc/ssl/certs/ca-certificates.crt";
  // Plain text against a TLS port.
  EtcdOptions plain = o;
  plain.endpoints = {absl::StrCat("http://127.0.0.1:", port)};
  for (const EtcdOptions& bad : {no_cert, wrong_ca, plain}) {
    auto c = Connection::Create(bad);
    ASSERT_TRUE(c.ok()) << c.status();
    absl::Time start = absl::Now();
    absl::Status s = (*c)->Ping();
    EXPECT_TRUE(absl::IsUnavailable(s)) << s;
    EXPECT_LT(absl::Now() - start, TimeScale(absl::Seconds(3)));
  }
  EXPECT_TRUE(reg->Close().ok());
  (void)(*etcd)->Kill();
  (void)Shell(absl::StrCat("rm -rf ", *dir));
}

}  // namespace
}  // namespace discovery
