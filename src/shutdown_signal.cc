// discovery::ShutdownSignal: SIGINT/SIGTERM as a flag and a self-pipe.
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <csignal>

#include "discovery/registrar.h"

namespace discovery {

// ---- ShutdownSignal ----

namespace {
std::atomic<int> g_signal{0};
int g_pipe[2] = {-1, -1};

void OnSignal(int sig) {
  g_signal.store(sig);
  if (g_pipe[1] >= 0) {
    char c = 1;
    ssize_t n = write(g_pipe[1], &c, 1);
    (void)n;
  }
}
}  // namespace

absl::Status ShutdownSignal::Install() {
  if (g_pipe[0] < 0) {
    if (pipe2(g_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
      return absl::InternalError("pipe2 failed");
    }
  }
  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGINT, &sa, nullptr) != 0 || sigaction(SIGTERM, &sa, nullptr) != 0) {
    return absl::InternalError("sigaction failed");
  }
  return absl::OkStatus();
}

bool ShutdownSignal::Received() { return g_signal.load() != 0; }
int ShutdownSignal::signal_number() { return g_signal.load(); }

bool ShutdownSignal::Wait(absl::Duration timeout) {
  if (Received()) return true;
  if (g_pipe[0] < 0) {
    absl::SleepFor(timeout);
    return Received();
  }
  struct pollfd pfd = {g_pipe[0], POLLIN, 0};
  int ms = timeout == absl::InfiniteDuration()
               ? -1
               : static_cast<int>(absl::ToInt64Milliseconds(timeout));
  (void)poll(&pfd, 1, ms);
  return Received();
}

}  // namespace discovery
