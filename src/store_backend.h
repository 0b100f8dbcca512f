// The store seam under `Connection`: everything the Registrar, the Watcher and the tools need
// from wherever instance state lives. One implementation per transport:
//   etcd     store_backend_etcd.cc (gRPC; one LeaseKeepAlive and one Watch stream per process)
//   redis    planned (issue 17: hash + deadline zset + change stream, Lua scripts)
//   gateway  planned (issue 16: discoveryd's REST + SSE, for processes that must not reach a store)
// Nothing above this header learns which one is in use: the Registrar holds a LeaseHolder and an
// InstanceWriter, the Watcher a WatchSource, and both run their work on the backend's two
// executors. A backend is created by its own factory (Connection::Create(EtcdOptions), ...) and
// wrapped by Connection::FromBackend.
//
// Thread-safety: thread-safe.
#pragma once

#include <memory>
#include <string_view>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "instance_writer.h"
#include "lease_holder.h"
#include "watch_source.h"

namespace spdlog {
class logger;
}

namespace discovery {
namespace util {
class EventLoop;
}

class StoreBackend {
 public:
  virtual ~StoreBackend() = default;
  // "etcd", "redis", "gateway": for logs, metrics and error messages.
  virtual std::string_view kind() const = 0;

  // The executor sinks and timers run on (the watcher's cache, the lease holder's events); a
  // strand, see util::EventLoop.
  virtual util::EventLoop& loop() = 0;
  // The executor for user callbacks that may block briefly (registration events, retries).
  virtual util::EventLoop& background() = 0;

  // A source for `options.prefix`; it calls `sink` on loop(). Not started.
  virtual std::shared_ptr<WatchSource> NewWatchSource(const SourceOptions& options,
                                                      std::shared_ptr<spdlog::logger> logger,
                                                      std::weak_ptr<WatchSink> sink) = 0;
  virtual std::unique_ptr<LeaseHolder> NewLeaseHolder() = 0;
  // `timeout` bounds every call (zero: the backend's call timeout).
  virtual std::unique_ptr<InstanceWriter> NewInstanceWriter(absl::Duration timeout) = 0;

  // Proves the store can serve this process now (see Connection::Ping).
  virtual absl::Status Ping(absl::Duration timeout) = 0;
};

}  // namespace discovery
