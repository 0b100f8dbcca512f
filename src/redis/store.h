// Internals shared by the Redis backend's parts (store_backend_redis.cc, lease_holder_redis.cc,
// watch_source_redis.cc).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "discovery/redis.h"
#include "redis/client.h"
#include "redis/scripts.h"

namespace spdlog {
class logger;
}

namespace discovery {
namespace util {
class EventLoop;
}
namespace redis {

// What every part needs: options, the keys, the script arguments 1..3 (fresh random epoch and
// lease-id candidates each call), a client factory.
struct Store {
  RedisOptions options;
  Url url;
  std::vector<std::string> keys;

  std::unique_ptr<Client> NewClient() const {
    return std::make_unique<Client>(ClientOptions{url, options.connect_timeout,
                                                  options.call_timeout, options.sentinel_user,
                                                  options.sentinel_password});
  }
  // ARGV 1..3 then `args`.
  std::vector<std::string> Args(std::vector<std::string> args) const;
  absl::StatusOr<Reply> Eval(Client& c, const std::string& script,
                             std::vector<std::string> args) const {
    return c.Eval(script, keys, Args(std::move(args)));
  }
};

}  // namespace redis
}  // namespace discovery

namespace discovery {
class StoreBackend;
namespace redis {
// The store of a Redis backend (null for another backend): for tools that need more than the
// StoreBackend seam gives (discoveryd's lease API and SSE epoch, tools/discoveryd/store_ops.h).
std::shared_ptr<const Store> StoreOf(const StoreBackend& backend);
}  // namespace redis

class LeaseHolder;
std::unique_ptr<LeaseHolder> NewRedisLeaseHolder(std::shared_ptr<const redis::Store> store,
                                                 util::EventLoop* events,
                                                 util::EventLoop* background);
}  // namespace discovery
