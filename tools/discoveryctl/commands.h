// discoveryctl: one function per command. Each validates its arguments, builds the library
// objects it needs, does its work and returns the process exit code (see common.h), printing
// results on stdout and one "discoveryctl: ..." line per problem on stderr.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common.h"

namespace discoveryctl {

struct ListOptions {
  std::string type{};
  std::string group{};
  std::string status{};
};
int RunList(const GlobalOptions& global, const ListOptions& options);

struct GetOptions {
  std::string type{};
  std::string id{};
};
int RunGet(const GlobalOptions& global, const GetOptions& options);

struct WatchOptions {
  std::string type{};
  std::string group{};
  std::string status{};
  bool initial = false;
};
// Runs until SIGINT/SIGTERM.
int RunWatch(const GlobalOptions& global, const WatchOptions& options);

struct RegisterOptions {
  std::string type{};
  std::string group{};
  std::string host{};
  std::string public_ip{};
  std::string private_ip{};
  std::vector<std::string> ports{};  // NAME=PORT
  std::string id{};
  int ttl_seconds = 10;
  std::string status = "ready";     // set after registering when there is no check
  std::vector<std::string> meta{};  // K=V
  std::string version{};
  std::string region{};
  std::string zone{};
  int weight = 100;
  std::string check_http{};
  std::string check_tcp{};
  double check_interval_seconds = 5;
  double drain_seconds = 0;
};
// Registers, prints the instance id, keeps it alive until SIGINT/SIGTERM, then deregisters.
int RunRegister(const GlobalOptions& global, const RegisterOptions& options);

struct DeregisterOptions {
  std::string type{};
  std::string id{};
};
int RunDeregister(const GlobalOptions& global, const DeregisterOptions& options);

struct SetStatusOptions {
  std::string type{};
  std::string id{};
  std::string status{};
  std::optional<std::string> custom_state{};
};
int RunSetStatus(const GlobalOptions& global, const SetStatusOptions& options);

}  // namespace discoveryctl
