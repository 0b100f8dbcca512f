// File: discovery/channel_pool.h
//
// One gRPC channel per instance of a type, created and dropped in step with a Watcher, and
// picked through a load-balancing picker: the gateway never has to "reconnect its gRPC clients
// when instances change" by hand.
//
//   auto pool = discovery::ChannelPool::Create(*watcher, {.type = "world", .port_name = "grpc"});
//   discovery::ChannelPool::Target t = (*pool)->Pick();      // or Pick(session_id) for sticky
//   if (t.channel) { auto stub = game::World::NewStub(t.channel); ... }
//
// Thread-safety: thread-safe. The pool must not outlive its Watcher. It may be destroyed from
// inside a watcher callback (library thread or Poll()).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "discovery/picker.h"
#include "discovery/watcher.h"

namespace grpc {
class Channel;
class ChannelCredentials;
}  // namespace grpc

namespace discovery {

struct ChannelPoolOptions {
  std::string type = {};           // required
  std::string group = {};          // empty = every group
  std::string port_name = "grpc";  // Instance::ports entry to dial
  PickerOptions picker = {};       // how Pick() chooses (round robin by default)
  bool ready_only = true;          // pick only `ready` instances
  // Channel credentials; insecure when null.
  std::shared_ptr<grpc::ChannelCredentials> credentials = {};
};

class ChannelPool {
 public:
  struct Target {
    InstancePtr instance;
    std::shared_ptr<grpc::Channel> channel;  // null when nothing can be picked
  };

  // kInvalidArgument for a bad type name.
  static absl::StatusOr<std::unique_ptr<ChannelPool>> Create(Watcher& watcher,
                                                             ChannelPoolOptions options);
  ~ChannelPool();

  Target Pick(std::string_view key = {});
  // The channel of one instance, or null.
  std::shared_ptr<grpc::Channel> Get(std::string_view instance_id);
  // Number of channels held (one per instance with the named port).
  size_t size();

 private:
  // Everything the watcher's callback touches. The callback holds it by shared_ptr: the
  // watcher may still run a callback it had already picked when the pool is destroyed from
  // another callback on the library thread (its Subscription barrier cannot wait for the
  // thread it runs on), and that callback must find live memory and `closed`.
  struct State;
  ChannelPool(ChannelPoolOptions options, std::shared_ptr<Picker> picker);

  std::shared_ptr<Picker> picker_;
  std::shared_ptr<State> state_;
  Subscription subscription_;
};

}  // namespace discovery
