// File: tools/discoveryd/fd_limits.h
//
// discoveryd and its file descriptors: every connection is one, so the process raises its
// soft RLIMIT_NOFILE to the hard limit at start, sizes its default connection cap from it, and
// refuses a connection over the cap with one fixed, non-blocking answer.
//
//   RaiseFdLimit(logger);                    // main(), before anything opens sockets
//   size_t cap = DefaultMaxConnections();    // HttpServer, when --max-connections is 0
//   RefuseConnection(socket.native_handle()); socket.close();
//
// Thread-safety: thread-safe (RaiseFdLimit: call once, at start).
#pragma once

#include <cstddef>
#include <memory>

namespace spdlog {
class logger;
}

namespace discoveryd {

// File descriptors kept back from the default connection cap for everything else the process
// opens: etcd gRPC channels, health-check dials, log files, the listening socket, epoll and
// eventfds. On a tiny limit, half of it.
inline constexpr size_t kFdReserve = 128;

// The soft RLIMIT_NOFILE minus min(kFdReserve, limit / 2) (at least 1).
size_t DefaultMaxConnections();

// Raises the soft RLIMIT_NOFILE to the hard limit (fs.nr_open when the hard limit is
// unlimited) and logs old and new values at INFO; a failure is a warning, never fatal.
void RaiseFdLimit(const std::shared_ptr<spdlog::logger>& logger);

// Writes a fixed `503 Service Unavailable` with `Retry-After: 1` and `Connection: close` on a
// freshly accepted socket without blocking (its send buffer is empty: the answer goes in one
// write or not at all), half-closes it and reads what the client already sent so that the
// caller's close() sends a FIN rather than a reset. The caller closes `fd`.
void RefuseConnection(int fd);

}  // namespace discoveryd
