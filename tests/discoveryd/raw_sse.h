// A raw SSE connection for the discoveryd tests (RawSse: frame by frame, droppable at any
// frame) and a subscriber Model that applies frames like the dashboard / a browser's
// EventSource does: the last `id:` seen is what it reconnects with; a fresh init (or `reset`)
// replaces its state, a resumed `synced` keeps it.
#ifndef DISCOVERY_TESTS_DISCOVERYD_RAW_SSE_H_
#define DISCOVERY_TESTS_DISCOVERYD_RAW_SSE_H_

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "harness_util.h"
#include "http_test_client.h"
#include "nlohmann/json.hpp"

namespace discovery::testing {

struct Frame {
  std::string id;  // empty: the frame had no id line
  std::string event;
  nlohmann::json data;
};

// One SSE connection read frame by frame.
class RawSse {
 public:
  static std::unique_ptr<RawSse> Open(int port, const std::string& last_id,
                                      const std::string& query = "") {
    auto sock = TestSocket::Connect(port, absl::Seconds(2));
    if (!sock.ok()) return nullptr;
    std::string req = absl::StrCat("GET /sd/v1/subscribe", query, " HTTP/1.1\r\nHost: x\r\n");
    if (!last_id.empty()) absl::StrAppend(&req, "Last-Event-ID: ", last_id, "\r\n");
    absl::StrAppend(&req, "\r\n");
    if (!(*sock)->SendAll(req).ok()) return nullptr;
    auto s = std::unique_ptr<RawSse>(new RawSse());
    s->sock_ = *std::move(sock);
    return s;
  }

  // The next frame with an event, or nullopt when none arrived within `timeout`.
  std::optional<Frame> Next(absl::Duration timeout = absl::Seconds(10)) {
    absl::Time deadline = absl::Now() + TimeScale(timeout);
    for (;;) {
      if (!head_done_) {
        size_t end = buf_.find("\r\n\r\n");
        if (end != std::string::npos) {
          head_ = buf_.substr(0, end);
          buf_ = buf_.substr(end + 4);
          head_done_ = true;
        }
      }
      if (head_done_) {
        size_t end;
        while ((end = buf_.find("\n\n")) != std::string::npos) {
          std::string block = buf_.substr(0, end + 1);
          buf_ = buf_.substr(end + 2);
          Frame f;
          size_t pos = 0, nl;
          while ((nl = block.find('\n', pos)) != std::string::npos) {
            std::string line = block.substr(pos, nl - pos);
            pos = nl + 1;
            if (absl::StartsWith(line, "id: ")) f.id = line.substr(4);
            if (absl::StartsWith(line, "event: ")) f.event = line.substr(7);
            if (absl::StartsWith(line, "data: "))
              f.data = nlohmann::json::parse(line.substr(6), nullptr, false);
          }
          if (!f.event.empty()) return f;
        }
      }
      if (absl::Now() > deadline) return std::nullopt;
      auto more = sock_->ReceiveSome();
      if (!more.ok() || more->empty()) {
        if (!more.ok() && absl::Now() < deadline) continue;  // receive timeout: try again
        return std::nullopt;
      }
      buf_ += *more;
    }
  }
  const std::string& head() const { return head_; }

 private:
  RawSse() = default;
  std::unique_ptr<TestSocket> sock_;
  std::string buf_;
  std::string head_;
  bool head_done_ = false;
};

// A subscriber's view, kept like the dashboard keeps it.
struct Model {
  std::map<std::string, nlohmann::json> state;  // "type/instanceId" -> instance
  std::string last_id;                          // what EventSource reconnects with
  bool fresh = true;
  bool resumed = false;  // the last synced said so
  int resets = 0;

  void NewConnection() { fresh = true; }
  static std::string KeyOf(const nlohmann::json& in) {
    return in.value("type", "") + "/" + in.value("instanceId", "");
  }
  void Apply(const Frame& f) {
    if (!f.id.empty()) last_id = f.id;
    if (f.event == "reset") {
      state.clear();
      fresh = true;
      ++resets;
    } else if (f.event == "init") {
      if (fresh) state.clear();
      fresh = false;
      state[KeyOf(f.data["instance"])] = f.data["instance"];
    } else if (f.event == "synced") {
      resumed = f.data.value("resumed", false);
      if (!resumed && fresh) state.clear();
      fresh = false;
    } else if (f.event == "update") {
      state[KeyOf(f.data["instance"])] = f.data["instance"];
    } else if (f.event == "remove") {
      state.erase(KeyOf(f.data["instance"]));
    }
  }
  std::set<std::string> Keys() const {
    std::set<std::string> out;
    for (const auto& [k, v] : state) out.insert(k);
    return out;
  }
};

}  // namespace discovery::testing

#endif  // DISCOVERY_TESTS_DISCOVERYD_RAW_SSE_H_
