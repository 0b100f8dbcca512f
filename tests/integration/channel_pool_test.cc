// ChannelPool follows the watcher (real etcd, real gRPC servers), and the optional active
// health checks (TCP, HTTP, gRPC health service) tell live from dead endpoints.
#include "discovery/channel_pool.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "discovery/health_check.h"
#include "discovery/registrar.h"
#include "discovery/watcher.h"
#include "etcd_harness.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace discovery {
namespace {

using testing::EtcdCluster;
using testing::TimeScale;
using testing::WaitUntil;

// Reports SERVING for every service name.
class HealthService : public grpc::health::v1::Health::Service {
  grpc::Status Check(grpc::ServerContext*, const grpc::health::v1::HealthCheckRequest*,
                     grpc::health::v1::HealthCheckResponse* resp) override {
    resp->set_status(grpc::health::v1::HealthCheckResponse::SERVING);
    return grpc::Status::OK;
  }
};

// A gRPC server with only the health service, on a free loopback port.
struct GrpcServer {
  GrpcServer() {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(&health);
    server = b.BuildAndStart();
  }
  ~GrpcServer() { Stop(); }
  void Stop() {
    if (server) server->Shutdown(std::chrono::system_clock::now());
    server.reset();
  }
  HealthService health;
  int port = 0;
  std::unique_ptr<grpc::Server> server;
};

// Answers every connection with a fixed HTTP status line until stopped.
struct HttpStub {
  explicit HttpStub(int status) : status(status) {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    socklen_t len = sizeof(a);
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
    listen(fd, 16);
    thread = std::thread([this] {
      for (;;) {
        int c = accept(fd, nullptr, nullptr);
        if (c < 0) return;
        char buf[1024];
        (void)recv(c, buf, sizeof(buf), 0);
        std::string resp = "HTTP/1.1 " + std::to_string(this->status) +
                           " X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        (void)send(c, resp.data(), resp.size(), MSG_NOSIGNAL);
        close(c);
      }
    });
  }
  ~HttpStub() {
    shutdown(fd, SHUT_RDWR);
    close(fd);
    thread.join();
  }
  int status;
  int fd = -1;
  int port = 0;
  std::thread thread;
};

Instance At(const std::string& id, int port) {
  Instance in;
  in.instance_id = id;
  in.type = "world";
  in.group = "g";
  in.private_ip = "127.0.0.1";
  in.ports = {{"grpc", port}, {"game", port}};
  return in;
}

bool HealthCheckCall(const std::shared_ptr<grpc::Channel>& ch) {
  auto stub = grpc::health::v1::Health::NewStub(ch);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  return stub->Check(&ctx, req, &resp).ok() &&
         resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
}

TEST(ChannelPoolTest, FollowsAddsAndRemoves) {
  auto cluster = EtcdCluster::Start({});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  EtcdOptions o;
  o.endpoints = (*cluster)->ClientEndpoints();
  auto conn = Connection::Create(o);
  ASSERT_TRUE(conn.ok());
  auto watcher = Watcher::Create({.connection = *conn});
  ASSERT_TRUE(watcher.ok());
  ASSERT_TRUE((*watcher)->WaitForSync(TimeScale(absl::Seconds(5))).ok());
  auto pool = ChannelPool::Create(**watcher, {.type = "world", .port_name = "grpc"});
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ((*pool)->Pick().channel, nullptr);

  GrpcServer s1, s2;
  auto registrar = Registrar::Create({.connection = *conn});
  ASSERT_TRUE(registrar.ok());
  auto r1 = (*registrar)->Register(At("one", s1.port));
  auto r2 = (*registrar)->Register(At("two", s2.port));
  ASSERT_TRUE(r1.ok() && r2.ok());
  ASSERT_TRUE(WaitUntil([&] { return (*pool)->size() == 2; }, absl::Seconds(5)));
  // Channels exist for both, but nothing is ready yet.
  EXPECT_EQ((*pool)->Pick().channel, nullptr);
  ASSERT_TRUE(r1->SetStatus(InstanceStatus::kReady).ok());
  ASSERT_TRUE(r2->SetStatus(InstanceStatus::kReady).ok());
  std::set<std::string> picked;
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto t = (*pool)->Pick();
        if (t.channel != nullptr) picked.insert(t.instance->instance_id);
        return picked.size() == 2;
      },
      absl::Seconds(5)));
  auto t = (*pool)->Pick();
  ASSERT_NE(t.channel, nullptr);
  EXPECT_TRUE(HealthCheckCall(t.channel));              // the channel really reaches the instance
  EXPECT_EQ((*pool)->Get("one"), (*pool)->Get("one"));  // one channel per instance

  ASSERT_TRUE(r1->Close().ok());
  ASSERT_TRUE(WaitUntil([&] { return (*pool)->size() == 1; }, absl::Seconds(5)));
  EXPECT_EQ((*pool)->Get("one"), nullptr);
  for (int i = 0; i < 5; ++i) EXPECT_EQ((*pool)->Pick().instance->instance_id, "two");
}

TEST(HealthCheckTest, TcpHttpAndGrpcChecks) {
  GrpcServer live;
  int dead_port = testing::PickFreePort();
  Instance up = At("up", live.port), down = At("down", dead_port);

  HealthChecker tcp({.kind = HealthCheckKind::kTcp, .port_name = "game"});
  EXPECT_TRUE(tcp.Probe(up));
  EXPECT_FALSE(tcp.Probe(down));

  HealthChecker grpc(
      {.kind = HealthCheckKind::kGrpc, .port_name = "grpc", .cache_ttl = absl::ZeroDuration()});
  EXPECT_TRUE(grpc.IsHealthy(up));
  EXPECT_FALSE(grpc.IsHealthy(down));

  HttpStub ok(200), broken(503);
  HealthChecker http({.kind = HealthCheckKind::kHttp, .port_name = "game"});
  EXPECT_TRUE(http.Probe(At("ok", ok.port)));
  EXPECT_FALSE(http.Probe(At("broken", broken.port)));
  EXPECT_FALSE(http.Probe(down));

  // Filter keeps order and drops the dead; the verdict is cached until cache_ttl passes.
  auto a = std::make_shared<const Instance>(up);
  auto b = std::make_shared<const Instance>(down);
  HealthChecker cached(
      {.kind = HealthCheckKind::kTcp, .port_name = "game", .cache_ttl = absl::Seconds(60)});
  auto healthy = cached.Filter({a, b, a});
  ASSERT_EQ(healthy.size(), 2u);
  EXPECT_EQ(healthy[0], a);
  live.Stop();
  EXPECT_TRUE(cached.IsHealthy(up));  // cached
  EXPECT_FALSE(tcp.Probe(up));        // a fresh probe sees it gone
}

}  // namespace
}  // namespace discovery
