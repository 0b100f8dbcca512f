// Sockets of this process connected to a loopback port, with the bytes each has sent (TCP_INFO
// tcpi_bytes_acked): how many connections a gateway-mode client holds and how many of them
// carry the heartbeats. Its own file: <linux/tcp.h> (the tcp_info with byte counters) must not
// meet glibc's <netinet/tcp.h>.
#include <arpa/inet.h>
#include <linux/tcp.h>
#include <sys/socket.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>

#include "common.h"

namespace discovery_bench {

std::map<int, uint64_t> SocketsTo(int port) {
  std::map<int, uint64_t> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
    const int fd = std::atoi(e.path().filename().c_str());
    sockaddr_storage peer{};
    socklen_t len = sizeof(peer);
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) != 0) continue;
    if (peer.ss_family != AF_INET) continue;
    const auto* in = reinterpret_cast<const sockaddr_in*>(&peer);
    if (ntohs(in->sin_port) != port) continue;
    tcp_info info{};
    socklen_t ilen = sizeof(info);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &ilen) != 0) continue;
    out[fd] = info.tcpi_bytes_acked;
  }
  return out;
}

}  // namespace discovery_bench
