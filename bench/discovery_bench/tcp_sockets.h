// TCP sockets of this process connected to port `port` (any address): socket inode -> bytes it
// has sent and had acknowledged (TCP_INFO). tcp_sockets.cc.
#pragma once

#include <cstdint>
#include <map>

namespace discovery_bench {

std::map<uint64_t, uint64_t> SocketInodesTo(int port);

}  // namespace discovery_bench
