// discovery-ladder: the fan-out load ladder (issue 15). Measures discoveryd from outside: one
// etcd on /dev/shm (or --etcd), N instances of type `world` in groups of 100 loaded straight
// into etcd, R discoveryd replicas, S SSE subscribers each filtered to one group, then a paced
// churn per rate. One JSON line per rung (size @ rate) on stdout; progress on stderr.
//
//   discovery-ladder --rungs S1,S2          # S1 10k/1k/1, S2 50k/5k/1, S3 100k/10k/2
//   discovery-ladder --rungs S1@200,S3      # one rate for S1, every --churn rate for S3
//   discovery-ladder --rungs S3 --restart-storm   # + replica 0 restarted, its subscribers
//                                                 #   reconnecting at once (storm.cc)
//   discovery-ladder --quick                # 500 instances, 50 subscribers, 2 replicas,
//                                           # 100/s for 3 s
//   discovery-ladder --smoke                # --quick + a 3 s restart storm, and exit 1
//                                           # unless 0 missed, 0 disconnected, every key in
//                                           # the JSON line, every storm subscriber back
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "ladder.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

#ifndef DISCOVERY_LADDER_DISCOVERYD
#define DISCOVERY_LADDER_DISCOVERYD "discoveryd"
#endif

namespace {

using ladder::Config;
using ladder::Size;

void OnSignal(int) { ladder::g_abort.store(true); }

absl::StatusOr<std::vector<Size>> ParseRungs(const std::string& spec) {
  std::vector<Size> out;
  for (absl::string_view tok : absl::StrSplit(spec, ',', absl::SkipWhitespace())) {
    std::vector<std::string> parts = absl::StrSplit(tok, '@');
    Size s;
    if (parts[0] == "S1") {
      s = {"S1", 10000, 1000, 1, {}};
    } else if (parts[0] == "S2") {
      s = {"S2", 50000, 5000, 1, {}};
    } else if (parts[0] == "S3") {
      s = {"S3", 100000, 10000, 2, {}};
    } else if (parts[0] == "Q") {
      s = {"Q", 500, 50, 2, {100}};
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown rung \"", parts[0], "\" (S1, S2, S3 or Q, optionally @RATE)"));
    }
    if (parts.size() == 2) {
      int rate = 0;
      if (!absl::SimpleAtoi(parts[1], &rate) || rate <= 0 || rate > 100000) {
        return absl::InvalidArgumentError(absl::StrCat("bad rate in \"", tok, "\""));
      }
      s.churn = {rate};
    } else if (parts.size() > 2) {
      return absl::InvalidArgumentError(absl::StrCat("bad rung \"", tok, "\""));
    }
    out.push_back(s);
  }
  if (out.empty()) return absl::InvalidArgumentError("--rungs is empty");
  return out;
}

// A smoke line must be complete and lossless; the storm line: every subscriber of the
// restarted replica synced again, the other replica's lost nothing.
std::vector<std::string> SmokeProblems(const ladder::Json& line, int subscribers) {
  std::vector<std::string> bad;
  if (absl::EndsWith(line["rung"].get<std::string>(), "@storm")) {
    if (line["storm_resynced"] != line["storm_subscribers"]) {
      bad.push_back(absl::StrCat("storm: ", line["storm_resynced"].dump(), " of ",
                                 line["storm_subscribers"].dump(), " synced again"));
    }
    for (const char* k : {"storm_failed", "others_missed"}) {
      if (line[k].get<int64_t>() != 0) bad.push_back(absl::StrCat(k, " = ", line[k].dump()));
    }
    if (line["others_delivered"].get<int64_t>() <= 0) bad.push_back("storm: nothing delivered");
    return bad;
  }
  for (const std::string& k : ladder::RequiredKeys()) {
    if (!line.contains(k) || line[k].is_null()) bad.push_back(absl::StrCat("missing key ", k));
  }
  if (!bad.empty()) return bad;
  for (const char* k : {"missed", "disconnected", "failed", "resets", "unexpected"}) {
    if (line[k].get<int64_t>() != 0) bad.push_back(absl::StrCat(k, " = ", line[k].dump()));
  }
  if (line["attached"].get<int>() != subscribers) bad.push_back("not every subscriber attached");
  if (line["delivered"].get<int64_t>() <= 0) bad.push_back("nothing delivered");
  if (line["puts_acked"].get<int64_t>() <= 0) bad.push_back("no put acknowledged");
  if (line["discover_status"].get<int>() != 200) bad.push_back("discover did not answer 200");
  return bad;
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  cfg.discoveryd = DISCOVERY_LADDER_DISCOVERYD;
  std::string rungs = "S1,S2";
  std::string churn = "200,1000,2000";
  bool quick = false, smoke = false, keep = false;
  double run_timeout = 3600;

  CLI::App app{"discovery-ladder: discoveryd as a fan-out tier, measured from outside"};
  app.add_option("--rungs", rungs,
                 "S1 (10k inst, 1k subs, 1 replica), S2 (50k/5k/1), "
                 "S3 (100k/10k/2), Q (500/50/1); NAME@RATE for one rate")
      ->capture_default_str();
  app.add_option("--churn", churn, "updates/s, one churn per rate per rung")->capture_default_str();
  app.add_option("--seconds", cfg.seconds, "seconds of churn per rate")
      ->capture_default_str()
      ->check(CLI::Range(0.5, 3600.0));
  app.add_option("--drain", cfg.drain_s, "seconds after the last ack for deliveries to arrive")
      ->capture_default_str()
      ->check(CLI::Range(0.1, 600.0));
  app.add_option("--attach-timeout", cfg.attach_timeout_s, "seconds for every subscriber to sync")
      ->capture_default_str();
  app.add_option("--etcd", cfg.etcd_url,
                 "use this etcd (http://127.0.0.1:PORT) under a private prefix instead of "
                 "starting one per rung");
  app.add_option("--discoveryd", cfg.discoveryd, "discoveryd binary")->capture_default_str();
  app.add_option("--sub-threads", cfg.sub_threads, "epoll threads for the SSE subscribers")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  app.add_option("--connect-inflight", cfg.connect_inflight,
                 "subscribers connecting (not yet synced) at once")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  app.add_flag("--restart-storm", cfg.restart_storm,
               "after the churn rates: restart replica 0 under churn, all its subscribers "
               "reconnect at once (one more JSON line, <size>@storm)");
  app.add_option("--storm-inflight", cfg.storm_inflight,
                 "restart storm: subscribers reconnecting (not yet synced) at once")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  app.add_option("--storm-rate", cfg.storm_rate, "restart storm: churn updates/s meanwhile")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  app.add_option("--storm-seconds", cfg.storm_seconds,
                 "restart storm: churn seconds (0: the first sync time + 20 s)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 3600.0));
  app.add_option("--writer-inflight", cfg.writer_inflight, "churn puts outstanding at once")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  app.add_option("--group-size", cfg.group_size, "instances per group")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000000));
  app.add_option("--run-timeout", run_timeout, "whole run bound in seconds (then abort)")
      ->capture_default_str()
      ->check(CLI::Range(5.0, 86400.0));
  app.add_flag("--quick", quick,
               "one tiny rung: 500 instances, 50 subscribers, 2 replicas, 100/s for 3 s");
  app.add_flag("--smoke", smoke, "--quick and assert 0 missed / 0 disconnected / complete JSON");
  app.add_flag("--keep", keep, "keep the work dir (discoveryd logs) under /dev/shm");
  CLI11_PARSE(app, argc, argv);
  // stdout carries only the JSON lines: library and harness logs go to stderr.
  spdlog::set_default_logger(spdlog::stderr_logger_mt("ladder"));

  cfg.churn.clear();
  for (absl::string_view r : absl::StrSplit(churn, ',', absl::SkipWhitespace())) {
    int v = 0;
    if (!absl::SimpleAtoi(r, &v) || v <= 0 || v > 100000) {
      std::fprintf(stderr, "discovery-ladder: bad --churn rate \"%s\"\n", std::string(r).c_str());
      return 2;
    }
    cfg.churn.push_back(v);
  }
  if (smoke) {
    cfg.restart_storm = true;
    cfg.storm_seconds = 3;
  }
  if (quick || smoke) {
    rungs = "Q";
    cfg.seconds = std::min(cfg.seconds, 3.0);
    cfg.drain_s = std::min(cfg.drain_s, 5.0);
    cfg.attach_timeout_s = std::min(cfg.attach_timeout_s, 20.0);
    cfg.sync_timeout_s = 20;
  }
  auto sizes = ParseRungs(rungs);
  if (!sizes.ok()) {
    std::fprintf(stderr, "discovery-ladder: %s\n", std::string(sizes.status().message()).c_str());
    return 2;
  }
  if (cfg.discoveryd.find('/') != std::string::npos && access(cfg.discoveryd.c_str(), X_OK) != 0) {
    std::fprintf(stderr, "discovery-ladder: discoveryd binary %s is not executable\n",
                 cfg.discoveryd.c_str());
    return 2;
  }

  // Every subscriber is a socket: soft limit up to the hard one (children inherit it).
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  getrlimit(RLIMIT_NOFILE, &rl);
  cfg.nofile_soft = static_cast<int64_t>(rl.rlim_cur);
  cfg.nofile_hard = static_cast<int64_t>(rl.rlim_max);
  for (const Size& s : *sizes) {
    // Subscriber sockets + gRPC + headroom.
    if (s.subscribers + 256 > cfg.nofile_soft) {
      std::fprintf(stderr,
                   "discovery-ladder: rung %s needs %d fds, RLIMIT_NOFILE hard limit is %lld\n",
                   s.name.c_str(), s.subscribers + 256, static_cast<long long>(cfg.nofile_hard));
      return 2;
    }
  }

  char tmpl[] = "/dev/shm/discovery-ladder.XXXXXX";
  if (mkdtemp(tmpl) == nullptr) {
    std::perror("discovery-ladder: mkdtemp");
    return 2;
  }
  cfg.work_dir = tmpl;

  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // Watchdog: past --run-timeout every wait gives up; 30 s later the process exits hard (its
  // children, spawned from this main thread, get SIGKILL through PR_SET_PDEATHSIG).
  std::thread([run_timeout] {
    const int64_t deadline = ladder::NowNs() + static_cast<int64_t>(run_timeout * 1e9);
    while (ladder::NowNs() < deadline && !ladder::g_abort.load()) usleep(100000);
    if (!ladder::g_abort.exchange(true)) {
      std::fprintf(stderr, "discovery-ladder: --run-timeout %.0f s reached, aborting\n",
                   run_timeout);
    }
    sleep(30);
    std::fprintf(stderr, "discovery-ladder: still running 30 s after the abort, exiting\n");
    _exit(3);
  }).detach();

  std::fprintf(stderr, "discovery-ladder: discoveryd %s, RLIMIT_NOFILE %lld/%lld, loadavg %s\n",
               cfg.discoveryd.c_str(), static_cast<long long>(cfg.nofile_soft),
               static_cast<long long>(cfg.nofile_hard), ladder::LoadAvg().c_str());
  int rc = 0;
  for (const Size& s : *sizes) {
    auto lines = ladder::RunSize(cfg, s);
    if (!lines.ok()) {
      std::fprintf(stderr, "discovery-ladder: rung %s failed: %s\n", s.name.c_str(),
                   lines.status().ToString().c_str());
      ladder::Json err = {{"rung", s.name}, {"error", lines.status().ToString()}};
      std::printf("%s\n", err.dump().c_str());
      rc = 1;
      continue;
    }
    if (smoke) {
      if (lines->empty()) {
        std::fprintf(stderr, "discovery-ladder: smoke: no JSON line\n");
        rc = 1;
      }
      for (const auto& line : *lines) {
        for (const std::string& p : SmokeProblems(line, s.subscribers)) {
          std::fprintf(stderr, "discovery-ladder: smoke: %s\n", p.c_str());
          rc = 1;
        }
      }
    }
  }
  if (ladder::g_abort.load()) rc = rc == 0 ? 1 : rc;
  if (!keep) {
    std::error_code ec;
    std::filesystem::remove_all(cfg.work_dir, ec);
  } else {
    std::fprintf(stderr, "discovery-ladder: logs kept in %s\n", cfg.work_dir.c_str());
  }
  std::fflush(stdout);
  _exit(rc);  // the watchdog thread is detached
}
