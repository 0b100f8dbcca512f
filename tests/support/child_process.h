// ChildProcess: a spawned helper process (etcd, etcdctl, a tool under test) owned by a
// test. The child's stdout/stderr go to files (or stdout to a pipe), it dies with the
// test binary (PR_SET_PDEATHSIG), and the destructor SIGKILLs and reaps it.

#ifndef DISCOVERY_TESTS_SUPPORT_CHILD_PROCESS_H_
#define DISCOVERY_TESTS_SUPPORT_CHILD_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace discovery::testing {

// Every field has a default member initializer so designated initializers
// ({.argv = {...}}) compile cleanly under -Wextra on GCC 12.
struct ChildProcessOptions {
  // argv[0] is the program: a path containing '/', or a name looked up in $PATH.
  std::vector<std::string> argv = {};
  // Variables added to (or overriding) the inherited environment.
  std::vector<std::pair<std::string, std::string>> env = {};
  // Inherited variables whose names start with one of these prefixes are dropped
  // (e.g. "ETCD_" so a developer's shell cannot conflict with explicit flags).
  std::vector<std::string> unset_env_prefixes = {};
  // If true, stdout is a pipe read with ReadLine(); otherwise it goes to stdout_path.
  // A piped child blocks once the pipe (64 KiB) is full and nobody reads it.
  bool stdout_to_pipe = false;
  // Output files, opened in append mode. Empty: "stdout"/"stderr" in a temp directory
  // that the ChildProcess creates and removes in its destructor.
  std::string stdout_path = {};
  std::string stderr_path = {};
  // Working directory of the child; empty keeps the parent's.
  std::string working_dir = {};
};

// Thread-safe. Note: PR_SET_PDEATHSIG fires when the *thread* that spawned the child
// exits, so spawn long-lived children from the test's main thread (or a thread that
// outlives them).
class ChildProcess {
 public:
  // Resolves argv[0], forks and execs. Fails (and leaves nothing running) if the
  // program is not found or exec fails.
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Spawn(ChildProcessOptions opts);

  // Resolves `name` like execvp would: returns the absolute path of an executable file
  // or NotFound.
  static absl::StatusOr<std::string> FindExecutable(const std::string& name);

  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  // SIGKILLs (if still running) and reaps the child; removes the owned temp dir.
  ~ChildProcess();

  pid_t pid() const { return pid_; }

  // Sends `sig`. FailedPrecondition once the child has been reaped (the pid may have
  // been recycled).
  absl::Status Signal(int sig);

  // Waits up to TimeScale(timeout) for the child to exit. Returns its exit code, or
  // 128+signal if it was killed by a signal; DeadlineExceeded if still running. May be
  // called again after the child has exited (returns the same value).
  absl::StatusOr<int> Wait(absl::Duration timeout);

  // SIGKILL + reap; returns the exit value as Wait() would (128+9 unless it had
  // already exited).
  absl::StatusOr<int> Kill();

  // True until the child has exited (a SIGSTOPped child is still running).
  bool Running();

  // True if the child is currently stopped (state 'T' in /proc/<pid>/stat).
  bool IsStopped();

  // The exit value if the child has been reaped.
  std::optional<int> ExitValue();

  // Pipe mode only: next line of stdout without the trailing '\n'. Waits up to
  // TimeScale(timeout). Returns nullopt on timeout, or at EOF with nothing buffered (a
  // final unterminated line is returned as is).
  std::optional<std::string> ReadLine(absl::Duration timeout);

  // Whole stdout file (pipe mode: whatever is available now and not yet returned by
  // ReadLine) and whole stderr file.
  std::string ReadStdout();
  std::string ReadStderr();

  // Empty in pipe mode.
  const std::string& stdout_path() const { return stdout_path_; }
  const std::string& stderr_path() const { return stderr_path_; }
  const std::vector<std::string>& argv() const { return argv_; }

 private:
  ChildProcess() = default;

  // Non-blocking reap. Requires mu_. Returns true if the child has exited.
  bool TryReapLocked();
  // Reads what is available on the stdout pipe into pipe_buf_ (waiting at most until
  // `deadline`). Requires pipe_mu_. Returns false on timeout.
  bool FillPipeLocked(absl::Time deadline);

  pid_t pid_ = -1;
  std::vector<std::string> argv_;
  std::string stdout_path_;
  std::string stderr_path_;
  std::string owned_dir_;  // removed in the destructor if non-empty

  std::mutex mu_;
  std::optional<int> exit_value_;  // guarded by mu_

  std::mutex pipe_mu_;
  int stdout_pipe_ = -1;  // read end; guarded by pipe_mu_
  bool pipe_eof_ = false;
  std::string pipe_buf_;
};

}  // namespace discovery::testing

#endif  // DISCOVERY_TESTS_SUPPORT_CHILD_PROCESS_H_
