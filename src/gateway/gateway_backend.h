// The gateway StoreBackend (issue 16): discoveryd's REST + SSE API behind the store seam
// (store_backend.h), so the Registrar and the Watcher run unchanged over it. Public entry:
// discovery/gateway_client.h (ConnectGateway).
//
//   lease holder  GatewayLeaseHolder -> the backend's Heartbeats: one round of batch
//                 POST /sd/v1/heartbeat per interval for every lease of the process, in chunks
//                 of at most 1,000 ids on one keep-alive connection (gateway_backend.cc)
//   writer        POST /sd/v1/writes/{put-if-absent,put-if-unchanged,delete} (gateway_backend.cc)
//   watch source  one SSE stream per Watcher (sse_source.cc)
//
// Thread-safety: thread-safe.
#pragma once

#include <memory>
#include <string>

#include "absl/time/time.h"
#include "discovery/gateway_client.h"
#include "gateway/http_client.h"
#include "watch_source.h"

namespace spdlog {
class logger;
}

namespace discovery::util {
class EventLoop;
}

namespace discovery::gateway {

struct SseSourceOptions {
  std::vector<Url> urls;
  std::string api_token;
  std::string prefix;  // the gateway's prefix (the watcher's must equal it)
  absl::Duration silence_timeout = absl::Seconds(30);
  absl::Duration connect_timeout = absl::Seconds(5);
  std::shared_ptr<boost::asio::ssl::context> tls{};  // for https:// URLs (transport.h)
};

// The SSE watch source (sse_source.cc). `requested` is the watcher's SourceOptions.
std::shared_ptr<WatchSource> NewSseWatchSource(SseSourceOptions options,
                                               const SourceOptions& requested,
                                               util::EventLoop& loop,
                                               std::shared_ptr<spdlog::logger> logger,
                                               std::weak_ptr<WatchSink> sink);

}  // namespace discovery::gateway
