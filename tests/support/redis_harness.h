// A real redis-server for tests: 127.0.0.1 on a free port, data directory on tmpfs, no
// persistence by default (`--save ""`, no AOF) or AOF (appendfsync everysec) when asked.
// Stopped by PID (SIGKILL in the destructor); Stop/Restart/Pause(SIGSTOP)/Resume(SIGCONT) and
// redis-cli helpers for the chaos and hostile tests.
//
//   auto r = RedisServer::Start({});
//   ASSERT_TRUE(r.ok()) << r.status();
//   std::string url = (*r)->Url();   // redis://127.0.0.1:<port>
#ifndef DISCOVERY_TESTS_SUPPORT_REDIS_HARNESS_H_
#define DISCOVERY_TESTS_SUPPORT_REDIS_HARNESS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "child_process.h"

namespace discovery::testing {

struct RedisServerOptions {
  bool aof = false;    // appendonly yes, appendfsync everysec
  int replica_of = 0;  // a replica of 127.0.0.1:<replica_of>
  int monitor = 0;     // a sentinel (redis-server --sentinel) monitoring 127.0.0.1:<monitor>
  std::string master_name = "mymaster";  // (sentinel)
  bool cluster = false;                  // --cluster-enabled yes (nodes.conf in the data directory)
};

class RedisServer {
 public:
  static absl::StatusOr<std::unique_ptr<RedisServer>> Start(RedisServerOptions options);
  ~RedisServer();

  int port() const { return port_; }
  std::string Url() const;
  // The data directory (the dump.rdb / appendonlydir of the server).
  const std::string& dir() const { return dir_; }
  // SIGKILL (no shutdown save), wait for the exit.
  absl::Status Stop();
  // Starts again on the same port and data directory; waits until it answers PING.
  absl::Status Restart();
  // Starts a stopped server again (after Stop(), e.g. once its data files were replaced).
  absl::Status StartAgain() { return Launch(); }
  absl::Status Pause();   // SIGSTOP
  absl::Status Resume();  // SIGCONT
  // redis-cli -p <port> <args...>; its stdout (trimmed), or an error with its stderr.
  absl::StatusOr<std::string> Cli(const std::vector<std::string>& args);
  absl::Status FlushAll() { return Cli({"FLUSHALL"}).status(); }

 private:
  RedisServer() = default;
  absl::Status Launch();

  RedisServerOptions options_;
  int port_ = 0;
  std::string dir_;
  std::unique_ptr<ChildProcess> child_;
};

}  // namespace discovery::testing

#endif  // DISCOVERY_TESTS_SUPPORT_REDIS_HARNESS_H_
