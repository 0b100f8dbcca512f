#include "child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "harness_util.h"
#include "util/clock.h"

extern char** environ;

namespace discovery::testing {
namespace {

#ifndef CLOSE_RANGE_CLOEXEC
constexpr unsigned kCloseRangeCloexec = 1U << 2;
#else
constexpr unsigned kCloseRangeCloexec = CLOSE_RANGE_CLOEXEC;
#endif

std::string ErrnoText(int err) { return std::strerror(err); }

int DecodeWaitStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

void CloseIfOpen(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

std::string ReadWholeFile(const std::string& path) {
  if (path.empty()) return "";
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Writes `err` to the exec-error pipe and exits. Only async-signal-safe calls: this
// runs in the forked child of a (possibly) multi-threaded parent.
[[noreturn]] void ChildFail(int fd, int err) {
  ssize_t ignored = ::write(fd, &err, sizeof(err));
  (void)ignored;
  ::_exit(127);
}

}  // namespace

absl::StatusOr<std::string> ChildProcess::FindExecutable(const std::string& name) {
  if (name.empty()) return absl::InvalidArgumentError("empty program name");
  if (absl::StrContains(name, '/')) {
    // Absolute, so that a working_dir does not break a relative program path.
    if (::access(name.c_str(), X_OK) == 0) return std::filesystem::absolute(name).string();
    return absl::NotFoundError(absl::StrCat(name, ": not an executable file"));
  }
  const char* path_env = std::getenv("PATH");
  const std::string path = (path_env != nullptr && *path_env != '\0')
                               ? std::string(path_env)
                               : std::string("/usr/local/bin:/usr/bin:/bin");
  for (absl::string_view dir : absl::StrSplit(path, ':')) {
    if (dir.empty()) dir = ".";
    std::string candidate = absl::StrCat(dir, "/", name);
    struct stat st;
    if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        ::access(candidate.c_str(), X_OK) == 0) {
      return std::filesystem::absolute(candidate).string();
    }
  }
  return absl::NotFoundError(absl::StrCat(name, " not found in PATH (", path, ")"));
}

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Spawn(ChildProcessOptions opts) {
  if (opts.argv.empty()) return absl::InvalidArgumentError("ChildProcess: empty argv");
  absl::StatusOr<std::string> program = FindExecutable(opts.argv[0]);
  if (!program.ok()) return program.status();

  std::unique_ptr<ChildProcess> child(new ChildProcess());
  child->argv_ = opts.argv;

  // ---- everything the forked child needs is prepared before fork() ----
  std::vector<std::string> env_storage;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    absl::string_view entry(*e);
    const absl::string_view name = entry.substr(0, entry.find('='));
    bool drop = false;
    for (const auto& [key, value] : opts.env) drop = drop || name == key;
    for (const std::string& prefix : opts.unset_env_prefixes) {
      drop = drop || absl::StartsWith(name, prefix);
    }
    if (!drop) env_storage.emplace_back(entry);
  }
  for (const auto& [key, value] : opts.env) env_storage.push_back(absl::StrCat(key, "=", value));
  std::vector<char*> envp;
  for (std::string& s : env_storage) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<char*> argv;
  for (std::string& s : opts.argv) argv.push_back(s.data());
  argv.push_back(nullptr);

  if ((!opts.stdout_to_pipe && opts.stdout_path.empty()) || opts.stderr_path.empty()) {
    absl::StatusOr<std::string> dir = MakeTempDir("discovery-child-");
    if (!dir.ok()) return dir.status();
    child->owned_dir_ = *dir;
    if (!opts.stdout_to_pipe && opts.stdout_path.empty()) {
      opts.stdout_path = absl::StrCat(*dir, "/stdout");
    }
    if (opts.stderr_path.empty()) opts.stderr_path = absl::StrCat(*dir, "/stderr");
  }
  if (!opts.stdout_to_pipe) child->stdout_path_ = opts.stdout_path;
  child->stderr_path_ = opts.stderr_path;

  int in_fd = -1, out_fd = -1, err_fd = -1, pipe_r = -1, status_r = -1, status_w = -1;
  auto close_all = [&] {
    CloseIfOpen(in_fd);
    CloseIfOpen(out_fd);
    CloseIfOpen(err_fd);
    CloseIfOpen(pipe_r);
    CloseIfOpen(status_r);
    CloseIfOpen(status_w);
  };
  constexpr int kOutFlags = O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC;
  in_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  err_fd = ::open(opts.stderr_path.c_str(), kOutFlags, 0644);
  if (opts.stdout_to_pipe) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) == 0) {
      pipe_r = fds[0];
      out_fd = fds[1];
    }
  } else {
    out_fd = ::open(opts.stdout_path.c_str(), kOutFlags, 0644);
  }
  int status_fds[2];
  if (::pipe2(status_fds, O_CLOEXEC) == 0) {
    status_r = status_fds[0];
    status_w = status_fds[1];
  }
  if (in_fd < 0 || out_fd < 0 || err_fd < 0 || status_r < 0) {
    const int err = errno;
    close_all();
    return absl::InternalError(
        absl::StrCat("ChildProcess: cannot set up stdio for ", opts.argv[0], ": ", ErrnoText(err)));
  }

  const pid_t parent = ::getpid();
  const char* workdir = opts.working_dir.empty() ? nullptr : opts.working_dir.c_str();
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int err = errno;
    close_all();
    return absl::InternalError(absl::StrCat("fork: ", ErrnoText(err)));
  }
  if (pid == 0) {
    // Child: async-signal-safe calls only until execve.
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) ChildFail(status_w, errno);
    if (::getppid() != parent) ::_exit(127);  // parent died before prctl took effect
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    for (int sig = 1; sig < NSIG; ++sig) {
      if (sig == SIGKILL || sig == SIGSTOP) continue;
      ::signal(sig, SIG_DFL);
    }
    if (::dup2(in_fd, STDIN_FILENO) < 0 || ::dup2(out_fd, STDOUT_FILENO) < 0 ||
        ::dup2(err_fd, STDERR_FILENO) < 0) {
      ChildFail(status_w, errno);
    }
    if (workdir != nullptr && ::chdir(workdir) != 0) ChildFail(status_w, errno);
      // Do not leak the parent's descriptors (gRPC sockets, other children's pipes).
#ifdef SYS_close_range
    ::syscall(SYS_close_range, 3U, ~0U, kCloseRangeCloexec);
#endif
    ::execve(program->c_str(), argv.data(), envp.data());
    ChildFail(status_w, errno);
  }

  // Parent.
  child->pid_ = pid;
  CloseIfOpen(status_w);
  CloseIfOpen(in_fd);
  CloseIfOpen(out_fd);
  CloseIfOpen(err_fd);
  int child_errno = 0;
  ssize_t n;
  do {
    n = ::read(status_r, &child_errno, sizeof(child_errno));
  } while (n < 0 && errno == EINTR);
  CloseIfOpen(status_r);
  if (n == static_cast<ssize_t>(sizeof(child_errno))) {
    CloseIfOpen(pipe_r);
    // The destructor reaps the failed child and removes the temp dir.
    return absl::InternalError(
        absl::StrCat("exec ", *program, " failed: ", ErrnoText(child_errno)));
  }
  if (pipe_r >= 0) {
    ::fcntl(pipe_r, F_SETFL, ::fcntl(pipe_r, F_GETFL) | O_NONBLOCK);
    child->stdout_pipe_ = pipe_r;
  }
  return child;
}

ChildProcess::~ChildProcess() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (pid_ > 0 && !TryReapLocked()) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      pid_t r;
      do {
        r = ::waitpid(pid_, &status, 0);
      } while (r < 0 && errno == EINTR);
      if (r == pid_) exit_value_ = DecodeWaitStatus(status);
    }
  }
  {
    std::lock_guard<std::mutex> lock(pipe_mu_);
    CloseIfOpen(stdout_pipe_);
  }
  if (!owned_dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(owned_dir_, ec);
  }
}

bool ChildProcess::TryReapLocked() {
  if (exit_value_.has_value()) return true;
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == pid_) {
    exit_value_ = DecodeWaitStatus(status);
    return true;
  }
  if (r < 0 && errno == ECHILD) {
    // Someone else reaped it (should not happen); treat as gone.
    exit_value_ = -1;
    return true;
  }
  return false;
}

absl::Status ChildProcess::Signal(int sig) {
  std::lock_guard<std::mutex> lock(mu_);
  if (TryReapLocked()) {
    return absl::FailedPreconditionError(
        absl::StrCat("process ", pid_, " (", argv_[0], ") already exited with ", *exit_value_));
  }
  if (::kill(pid_, sig) != 0) {
    return absl::InternalError(absl::StrCat("kill(", pid_, ", ", sig, "): ", ErrnoText(errno)));
  }
  return absl::OkStatus();
}

absl::StatusOr<int> ChildProcess::Wait(absl::Duration timeout) {
  const absl::Time deadline = util::MonoNow() + TimeScale(timeout);
  absl::Duration poll = absl::Milliseconds(1);
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (TryReapLocked()) return *exit_value_;
    }
    const absl::Time now = util::MonoNow();
    if (now >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat("process ", pid_, " (", argv_[0],
                                                      ") still running after ",
                                                      absl::FormatDuration(TimeScale(timeout))));
    }
    absl::SleepFor(std::min(poll, deadline - now));
    poll = std::min(poll * 2, absl::Milliseconds(10));
  }
}

absl::StatusOr<int> ChildProcess::Kill() {
  std::lock_guard<std::mutex> lock(mu_);
  if (TryReapLocked()) return *exit_value_;
  ::kill(pid_, SIGKILL);
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, 0);
  } while (r < 0 && errno == EINTR);
  if (r != pid_) return absl::InternalError(absl::StrCat("waitpid: ", ErrnoText(errno)));
  exit_value_ = DecodeWaitStatus(status);
  return *exit_value_;
}

bool ChildProcess::Running() {
  std::lock_guard<std::mutex> lock(mu_);
  return !TryReapLocked();
}

bool ChildProcess::IsStopped() {
  if (!Running()) return false;
  const std::string stat = ReadWholeFile(absl::StrCat("/proc/", pid_, "/stat"));
  // Format: pid (comm) S ...; comm may contain spaces or parentheses.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos || close + 2 >= stat.size()) return false;
  const char state = stat[close + 2];
  return state == 'T' || state == 't';
}

std::optional<int> ChildProcess::ExitValue() {
  std::lock_guard<std::mutex> lock(mu_);
  TryReapLocked();
  return exit_value_;
}

bool ChildProcess::FillPipeLocked(absl::Time deadline) {
  if (stdout_pipe_ < 0 || pipe_eof_) return false;
  for (;;) {
    char buf[4096];
    const ssize_t n = ::read(stdout_pipe_, buf, sizeof(buf));
    if (n > 0) {
      pipe_buf_.append(buf, static_cast<size_t>(n));
      return true;
    }
    if (n == 0) {
      pipe_eof_ = true;
      return true;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      pipe_eof_ = true;
      return true;
    }
    const int64_t ms = absl::ToInt64Milliseconds(deadline - util::MonoNow());
    if (ms < 0) return false;
    pollfd pfd{stdout_pipe_, POLLIN, 0};
    const int rc = ::poll(&pfd, 1, static_cast<int>(std::min<int64_t>(ms, 1 << 30)));
    if (rc == 0) return false;
  }
}

std::optional<std::string> ChildProcess::ReadLine(absl::Duration timeout) {
  const absl::Time deadline = util::MonoNow() + TimeScale(timeout);
  std::lock_guard<std::mutex> lock(pipe_mu_);
  if (stdout_pipe_ < 0) return std::nullopt;
  for (;;) {
    if (const size_t nl = pipe_buf_.find('\n'); nl != std::string::npos) {
      std::string line = pipe_buf_.substr(0, nl);
      pipe_buf_.erase(0, nl + 1);
      return line;
    }
    if (pipe_eof_) {
      if (pipe_buf_.empty()) return std::nullopt;
      return std::exchange(pipe_buf_, std::string());
    }
    if (!FillPipeLocked(deadline)) return std::nullopt;
  }
}

std::string ChildProcess::ReadStdout() {
  {
    std::lock_guard<std::mutex> lock(pipe_mu_);
    if (stdout_pipe_ >= 0) {
      while (!pipe_eof_ && FillPipeLocked(util::MonoNow())) {
      }
      return std::exchange(pipe_buf_, std::string());
    }
  }
  return ReadWholeFile(stdout_path_);
}

std::string ChildProcess::ReadStderr() { return ReadWholeFile(stderr_path_); }

}  // namespace discovery::testing
