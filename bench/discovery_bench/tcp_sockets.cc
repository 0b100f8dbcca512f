// Sockets of this process connected to a loopback port, with the bytes each has sent (TCP_INFO
// tcpi_bytes_acked), keyed by the socket's inode (fd numbers are reused): how many connections a
// gateway-mode client holds and how many of them carry the heartbeats. Its own file: <linux/tcp.h>
// (the tcp_info with byte counters) must not meet glibc's <netinet/tcp.h>.
#include "tcp_sockets.h"

#include <arpa/inet.h>
#include <linux/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>

namespace discovery_bench {

std::map<uint64_t, uint64_t> SocketInodesTo(int port) {
  std::map<uint64_t, uint64_t> out;
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
    struct stat st {};
    if (fstat(fd, &st) != 0) continue;
    out[static_cast<uint64_t>(st.st_ino)] = info.tcpi_bytes_acked;
  }
  return out;
}

}  // namespace discovery_bench
