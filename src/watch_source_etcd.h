// The etcd WatchSource: a paged Range of the prefix, then a watch on the client's shared
// WatchHub from revision + 1; resyncs (compaction, new cluster, rewind, refused watch) through
// a rate limit. See watch_source_etcd.cc.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "etcd/client.h"
#include "etcd/watch_hub.h"
#include "util/logging.h"
#include "watch_source.h"

namespace discovery {

// Creates the etcd source of `sink`, which runs on client->loop().
std::shared_ptr<WatchSource> NewEtcdWatchSource(std::shared_ptr<etcd::Client> client,
                                                SourceOptions options,
                                                std::shared_ptr<spdlog::logger> logger,
                                                std::weak_ptr<WatchSink> sink);

}  // namespace discovery
