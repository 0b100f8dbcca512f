// Runs the built discoveryctl (DISCOVERYCTL) against one transport: `--endpoints <etcd>`,
// `--gateway <discoveryd>` or `--store redis://...`, for the transport suites
// (discoveryctl_gateway_test, discoveryctl_redis_test). The environment of the child is cleaned
// of ETCD_* and DISCOVERY_* so a developer's shell cannot pick another transport.
#ifndef DISCOVERY_TESTS_DISCOVERYCTL_CTL_RUNNER_H_
#define DISCOVERY_TESTS_DISCOVERYCTL_CTL_RUNNER_H_

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "child_process.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "util/clock.h"

namespace discovery::testing {

struct CtlResult {
  int code = -1;
  std::string out;
  std::string err;
  absl::Duration took;
};

class CtlRunner {
 public:
  // `transport`: e.g. {"--gateway", "http://127.0.0.1:8080"}.
  explicit CtlRunner(std::vector<std::string> transport) : transport_(std::move(transport)) {}

  std::vector<std::string> Argv(const std::vector<std::string>& args) const {
    std::vector<std::string> argv = {DISCOVERYCTL};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.insert(argv.end(), transport_.begin(), transport_.end());
    return argv;
  }
  static ChildProcessOptions Opts(std::vector<std::string> argv, bool pipe) {
    return {.argv = std::move(argv),
            .unset_env_prefixes = {"ETCD", "DISCOVERY_"},
            .stdout_to_pipe = pipe};
  }

  // Runs discoveryctl to completion (at most 20 s).
  CtlResult Run(const std::vector<std::string>& args) const {
    CtlResult r;
    absl::Time start = ::discovery::util::MonoNow();
    auto child = ChildProcess::Spawn(Opts(Argv(args), false));
    if (!child.ok()) {
      r.err = child.status().ToString();
      return r;
    }
    auto code = (*child)->Wait(absl::Seconds(20));
    r.took = ::discovery::util::MonoNow() - start;
    r.code = code.ok() ? *code : -1;
    r.out = (*child)->ReadStdout();
    r.err = (*child)->ReadStderr();
    return r;
  }

  // A long-running discoveryctl (register / watch) with stdout on a pipe.
  std::unique_ptr<ChildProcess> Start(const std::vector<std::string>& args) const {
    auto child = ChildProcess::Spawn(Opts(Argv(args), true));
    EXPECT_TRUE(child.ok()) << child.status();
    return child.ok() ? *std::move(child) : nullptr;
  }

  // `register` of a ready world/kr-1 instance; (process, printed instance id).
  std::pair<std::unique_ptr<ChildProcess>, std::string> Register(const std::string& id,
                                                                 const std::string& group = "kr-1",
                                                                 int ttl = 5) const {
    auto child = Start({"register",
                        "--type",
                        "world",
                        "--group",
                        group,
                        "--host",
                        "game-01",
                        "--private-ip",
                        "10.0.0.5",
                        "--port",
                        "game=7001",
                        "--port",
                        "grpc=50051",
                        "--id",
                        id,
                        "--ttl",
                        std::to_string(ttl),
                        "--server-version",
                        "1.4.2",
                        "--meta",
                        "map=forest"});
    if (child == nullptr) return {nullptr, ""};
    std::optional<std::string> line = child->ReadLine(absl::Seconds(15));
    EXPECT_TRUE(line.has_value()) << child->ReadStderr();
    return {std::move(child), line.value_or("")};
  }

 private:
  std::vector<std::string> transport_;
};

// The next JSON line of a `watch` process (nullopt on timeout).
inline std::optional<nlohmann::json> NextWatchLine(ChildProcess& watch, absl::Duration timeout) {
  std::optional<std::string> line = watch.ReadLine(timeout);
  if (!line.has_value()) return std::nullopt;
  auto j = nlohmann::json::parse(*line, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << *line;
  return j;
}

// The cells of a `list` table row (columns are separated by two or more spaces; no cell of the
// tests' instances contains two spaces).
inline std::vector<std::string> TableCells(const std::string& row) {
  std::vector<std::string> cells;
  for (absl::string_view c : absl::StrSplit(row, "  ", absl::SkipWhitespace())) {
    cells.emplace_back(absl::StripAsciiWhitespace(c));
  }
  return cells;
}

inline std::vector<std::string> TableLines(const std::string& out) {
  return absl::StrSplit(out, '\n', absl::SkipEmpty());
}

}  // namespace discovery::testing

#endif  // DISCOVERY_TESTS_DISCOVERYCTL_CTL_RUNNER_H_
