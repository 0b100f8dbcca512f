#include "discovery/channel_pool.h"

#include <grpcpp/grpcpp.h>

#include <map>
#include <mutex>

#include "absl/strings/str_cat.h"

namespace discovery {

struct ChannelPool::State {
  explicit State(ChannelPoolOptions o) : options(std::move(o)) {}
  void OnChange(const ChangeEvent& ev);

  const ChannelPoolOptions options;
  struct Entry {
    std::string target;  // host:port
    std::shared_ptr<grpc::Channel> channel;
  };
  std::mutex mu;  // a std::mutex so ThreadSanitizer sees it (Debian's abseil is uninstrumented)
  bool closed = false;                                 // guarded by mu: the pool is gone
  std::map<std::string, Entry, std::less<>> channels;  // guarded by mu
};

absl::StatusOr<std::unique_ptr<ChannelPool>> ChannelPool::Create(Watcher& watcher,
                                                                 ChannelPoolOptions options) {
  if (absl::Status s = ValidateName("type", options.type); !s.ok()) return s;
  if (!options.group.empty()) {
    if (absl::Status s = ValidateName("group", options.group); !s.ok()) return s;
  }
  auto picker = watcher.NewPicker(options.type, options.group, options.picker, options.ready_only);
  std::unique_ptr<ChannelPool> pool(new ChannelPool(std::move(options), std::move(picker)));
  std::shared_ptr<State> state = pool->state_;
  pool->subscription_ = watcher.Subscribe(
      {.type = state->options.type, .group = state->options.group},
      [state](const ChangeEvent& ev) { state->OnChange(ev); }, /*initial=*/true);
  return pool;
}

ChannelPool::ChannelPool(ChannelPoolOptions options, std::shared_ptr<Picker> picker)
    : picker_(std::move(picker)), state_(std::make_shared<State>(std::move(options))) {}

ChannelPool::~ChannelPool() {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->closed = true;
    state_->channels.clear();
  }
  subscription_.Reset();
}

void ChannelPool::State::OnChange(const ChangeEvent& ev) {
  const Instance& in = *ev.instance;
  std::lock_guard<std::mutex> lock(mu);
  if (closed) return;
  if (ev.type == ChangeType::kRemoved) {
    channels.erase(in.instance_id);
    return;
  }
  int port = in.Port(options.port_name);
  if (port == 0 || in.Address().empty()) {
    channels.erase(in.instance_id);
    return;
  }
  std::string target = absl::StrCat(in.Address(), ":", port);
  auto it = channels.find(in.instance_id);
  if (it != channels.end() && it->second.target == target) return;  // same endpoint
  auto creds =
      options.credentials != nullptr ? options.credentials : grpc::InsecureChannelCredentials();
  channels[in.instance_id] = Entry{target, grpc::CreateChannel(target, creds)};
}

ChannelPool::Target ChannelPool::Pick(std::string_view key) {
  Target t;
  t.instance = picker_->Pick(key);
  if (t.instance != nullptr) t.channel = Get(t.instance->instance_id);
  return t;
}

std::shared_ptr<grpc::Channel> ChannelPool::Get(std::string_view instance_id) {
  std::lock_guard<std::mutex> lock(state_->mu);
  auto it = state_->channels.find(instance_id);
  return it == state_->channels.end() ? nullptr : it->second.channel;
}

size_t ChannelPool::size() {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->channels.size();
}

}  // namespace discovery
