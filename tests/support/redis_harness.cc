#include "redis_harness.h"

#include <csignal>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "harness_util.h"

namespace discovery::testing {
namespace {

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

absl::StatusOr<std::unique_ptr<RedisServer>> RedisServer::Start(RedisServerOptions options) {
  std::unique_ptr<RedisServer> s(new RedisServer());
  s->options_ = options;
  auto dir = MakeTempDir("redis-", "/dev/shm");
  if (!dir.ok()) return dir.status();
  s->dir_ = *dir;
  absl::Status last;
  for (int attempt = 0; attempt < 3; ++attempt) {  // PickFreePort races with other processes
    s->port_ = PickFreePort();
    last = s->Launch();
    if (last.ok()) return s;
  }
  return last;
}

RedisServer::~RedisServer() {
  child_.reset();
  std::error_code ec;
  if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
}

std::string RedisServer::Url() const { return absl::StrCat("redis://127.0.0.1:", port_); }

absl::Status RedisServer::Launch() {
  ChildProcessOptions o;
  if (options_.monitor != 0) {
    // A sentinel rewrites its config file: one per sentinel, in its own directory.
    const std::string conf = dir_ + "/sentinel.conf";
    if (!std::filesystem::exists(conf)) {
      std::ofstream out(conf);
      const std::string& m = options_.master_name;
      out << "sentinel monitor " << m << " 127.0.0.1 " << options_.monitor << " 2\n"
          << "sentinel down-after-milliseconds " << m << " 1000\n"
          << "sentinel failover-timeout " << m << " 10000\n"
          << "sentinel parallel-syncs " << m << " 1\n";
      if (!out) return absl::InternalError("cannot write " + conf);
    }
    o.argv = {"redis-server",
              conf,
              "--sentinel",
              "--bind",
              "127.0.0.1",
              "--port",
              absl::StrCat(port_),
              "--dir",
              dir_,
              "--daemonize",
              "no",
              "--protected-mode",
              "no"};
  } else {
    o.argv = {"redis-server",
              "--bind",
              "127.0.0.1",
              "--port",
              absl::StrCat(port_),
              "--dir",
              dir_,
              "--save",
              "",
              "--daemonize",
              "no",
              "--protected-mode",
              "no",
              "--appendonly",
              options_.aof ? "yes" : "no",
              "--appendfsync",
              "everysec"};
    if (options_.cluster) {
      o.argv.insert(o.argv.end(),
                    {"--cluster-enabled", "yes", "--cluster-config-file", dir_ + "/nodes.conf"});
    }
    if (options_.replica_of != 0) {
      o.argv.insert(o.argv.end(), {"--replicaof", "127.0.0.1", absl::StrCat(options_.replica_of)});
    }
  }
  o.stdout_path = dir_ + "/redis.log";
  o.stderr_path = dir_ + "/redis.log";
  auto child = ChildProcess::Spawn(o);
  if (!child.ok()) return child.status();
  child_ = *std::move(child);
  std::string pong;
  const bool up = WaitUntil(
      [&] {
        if (!child_->Running()) return true;
        auto r = Cli({"PING"});
        pong = r.ok() ? *r : "";
        return pong == "PONG";
      },
      absl::Seconds(10), absl::Milliseconds(50));
  if (!up || pong != "PONG") {
    child_.reset();
    return absl::UnavailableError(absl::StrCat(
        "redis-server on port ", port_, " did not answer PING: ", TailFile(dir_ + "/redis.log")));
  }
  return absl::OkStatus();
}

absl::Status RedisServer::Stop() {
  if (child_ == nullptr) return absl::OkStatus();
  auto r = child_->Kill();
  child_.reset();
  return r.status();
}

absl::Status RedisServer::Restart() {
  if (absl::Status s = Stop(); !s.ok()) return s;
  return Launch();
}

absl::Status RedisServer::Pause() {
  if (child_ == nullptr) return absl::FailedPreconditionError("redis-server not running");
  return child_->Signal(SIGSTOP);
}

absl::Status RedisServer::Resume() {
  if (child_ == nullptr) return absl::FailedPreconditionError("redis-server not running");
  return child_->Signal(SIGCONT);
}

absl::StatusOr<std::string> RedisServer::Cli(const std::vector<std::string>& args) {
  ChildProcessOptions o;
  o.argv = {"redis-cli", "-h", "127.0.0.1", "-p", absl::StrCat(port_)};
  o.argv.insert(o.argv.end(), args.begin(), args.end());
  const std::string out = dir_ + "/cli.out";
  const std::string err = dir_ + "/cli.err";
  std::error_code ec;
  std::filesystem::remove(out, ec);
  std::filesystem::remove(err, ec);
  o.stdout_path = out;
  o.stderr_path = err;
  auto child = ChildProcess::Spawn(o);
  if (!child.ok()) return child.status();
  auto code = (*child)->Wait(absl::Seconds(10));
  if (!code.ok()) return code.status();
  std::string text(absl::StripAsciiWhitespace(ReadAll(out)));
  if (*code != 0 || absl::StartsWith(text, "ERR") || absl::StartsWith(text, "Could not connect")) {
    return absl::UnavailableError(
        absl::StrCat("redis-cli ", args.empty() ? "" : args[0], ": ", text, " ", ReadAll(err)));
  }
  return text;
}

}  // namespace discovery::testing
