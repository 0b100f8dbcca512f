#include "discovery/channel_pool.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"

namespace discovery {

absl::StatusOr<std::unique_ptr<ChannelPool>> ChannelPool::Create(Watcher& watcher,
                                                                 ChannelPoolOptions options) {
  if (absl::Status s = ValidateName("type", options.type); !s.ok()) return s;
  if (!options.group.empty()) {
    if (absl::Status s = ValidateName("group", options.group); !s.ok()) return s;
  }
  auto picker = watcher.NewPicker(options.type, options.group, options.picker, options.ready_only);
  std::unique_ptr<ChannelPool> pool(new ChannelPool(std::move(options), std::move(picker)));
  ChannelPool* self = pool.get();
  pool->subscription_ = watcher.Subscribe(
      {.type = pool->options_.type, .group = pool->options_.group},
      [self](const ChangeEvent& ev) { self->OnChange(ev); }, /*initial=*/true);
  return pool;
}

ChannelPool::ChannelPool(ChannelPoolOptions options, std::shared_ptr<Picker> picker)
    : options_(std::move(options)), picker_(std::move(picker)) {}

ChannelPool::~ChannelPool() { subscription_.Reset(); }

void ChannelPool::OnChange(const ChangeEvent& ev) {
  const Instance& in = *ev.instance;
  std::lock_guard<std::mutex> lock(mu_);
  if (ev.type == ChangeType::kRemoved) {
    channels_.erase(in.instance_id);
    return;
  }
  int port = in.Port(options_.port_name);
  if (port == 0 || in.Address().empty()) {
    channels_.erase(in.instance_id);
    return;
  }
  std::string target = absl::StrCat(in.Address(), ":", port);
  auto it = channels_.find(in.instance_id);
  if (it != channels_.end() && it->second.target == target) return;  // same endpoint
  auto creds =
      options_.credentials != nullptr ? options_.credentials : grpc::InsecureChannelCredentials();
  channels_[in.instance_id] = Entry{target, grpc::CreateChannel(target, creds)};
}

ChannelPool::Target ChannelPool::Pick(std::string_view key) {
  Target t;
  t.instance = picker_->Pick(key);
  if (t.instance != nullptr) t.channel = Get(t.instance->instance_id);
  return t;
}

std::shared_ptr<grpc::Channel> ChannelPool::Get(std::string_view instance_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = channels_.find(instance_id);
  return it == channels_.end() ? nullptr : it->second.channel;
}

size_t ChannelPool::size() {
  std::lock_guard<std::mutex> lock(mu_);
  return channels_.size();
}

}  // namespace discovery
