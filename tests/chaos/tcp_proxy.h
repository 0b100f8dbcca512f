// TcpProxy: a loopback TCP forwarder that a test puts between a client and one etcd member
// to partition them on purpose.
//
//   auto proxy = TcpProxy::Start(cluster->ClientPort(0));
//   ... client uses (*proxy)->endpoint() instead of the member's endpoint ...
//   (*proxy)->Pause();   // black hole: nothing is forwarded, connections stay open
//   (*proxy)->Resume();  // what was sent meanwhile is delivered now
//   (*proxy)->Cut();     // every connection is reset, new ones are reset at once
//   (*proxy)->Heal();
//   (*proxy)->HoldReplies();  // one way: requests reach the member, its answers are held
//   (*proxy)->Resume();       // the held answers are delivered now (or after HoldReplies(d))
//
// HoldReplies models answers that come back late: the member gets (and applies) what the
// client sends, the client waits past its deadline and retries, then the late answer arrives.
// Pause models a network that drops packets (the kernel still completes TCP handshakes into
// the listen backlog, but no byte moves and no connection is accepted, so the client sees
// silence, not an error). Cut models a partition that answers with RST.
//
// One thread serves everything with poll(); Pause/Resume/Cut/Heal return once the serving
// thread has applied them, so no byte moves after Pause() returns.
//
// Thread-safety: all methods are thread-safe.
#ifndef DISCOVERY_TESTS_CHAOS_TCP_PROXY_H_
#define DISCOVERY_TESTS_CHAOS_TCP_PROXY_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace discovery::testing {

class TcpProxy {
 public:
  // Listens on 127.0.0.1:<free port> and forwards every connection to 127.0.0.1:target_port.
  static absl::StatusOr<std::unique_ptr<TcpProxy>> Start(int target_port);
  ~TcpProxy();

  TcpProxy(const TcpProxy&) = delete;
  TcpProxy& operator=(const TcpProxy&) = delete;

  int port() const { return port_; }
  // "http://127.0.0.1:<port>"
  std::string endpoint() const;

  void Pause();
  // One-way pause: bytes from the member to the client are read and held (up to 4 MiB per
  // connection) while client -> member still flows; new connections are accepted. The held
  // bytes are delivered at Resume()/Heal(), or by themselves after `duration`.
  void HoldReplies(absl::Duration duration = absl::InfiniteDuration());
  // Bytes held from the members since the last HoldReplies() (counted when read).
  int64_t held_bytes() const { return held_bytes_.load(); }
  void Resume();
  void Cut();
  void Heal();

  // Connections currently forwarded (accepted and connected upstream).
  int connections() const { return connections_.load(); }
  // Connections accepted since Start().
  int64_t accepted() const { return accepted_.load(); }

 private:
  enum class Mode { kForward, kPaused, kCut, kHoldReplies };
  TcpProxy(int listen_fd, int port, int target_port);
  void SetMode(Mode mode);
  void Run();

  const int listen_fd_;
  const int port_;
  const int target_port_;
  int wake_[2] = {-1, -1};  // pipe: wakes the serving thread

  std::mutex mu_;
  std::condition_variable applied_cv_;
  Mode mode_ = Mode::kForward;  // guarded by mu_
  // guarded by mu_: kHoldReplies turns back into kForward at this util::MonoNow() time
  absl::Time hold_until_ = absl::InfiniteFuture();
  uint64_t requested_ = 0;  // guarded by mu_: bumped by SetMode
  uint64_t applied_ = 0;    // guarded by mu_: the serving thread's last applied request
  bool stop_ = false;       // guarded by mu_
  bool failed_ = false;     // guarded by mu_: the serving thread died (poll failed)

  std::atomic<int> connections_{0};
  std::atomic<int64_t> accepted_{0};
  std::atomic<int64_t> held_bytes_{0};
  std::thread thread_;
};

}  // namespace discovery::testing

#endif  // DISCOVERY_TESTS_CHAOS_TCP_PROXY_H_
