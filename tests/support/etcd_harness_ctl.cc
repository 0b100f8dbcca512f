// EtcdCluster: etcdctl, status queries and authentication (see etcd_harness.h).

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "etcd_harness.h"

namespace discovery::testing {
namespace {

// Parses the unsigned integer following `"key":` at or after `from` in `json`.
std::optional<uint64_t> FindUint(absl::string_view json, absl::string_view key, size_t from = 0,
                                 size_t* end = nullptr) {
  const std::string needle = absl::StrCat("\"", key, "\":");
  size_t pos = json.find(needle, from);
  if (pos == absl::string_view::npos) return std::nullopt;
  pos += needle.size();
  while (pos < json.size() && json[pos] == ' ') ++pos;
  size_t stop = pos;
  while (stop < json.size() && absl::ascii_isdigit(static_cast<unsigned char>(json[stop]))) {
    ++stop;
  }
  uint64_t value = 0;
  if (!absl::SimpleAtoi(json.substr(pos, stop - pos), &value)) return std::nullopt;
  if (end != nullptr) *end = stop;
  return value;
}

// Parses the string following `"key":"` at or after `from` (no escape handling).
std::optional<std::string> FindString(absl::string_view json, absl::string_view key,
                                      size_t from = 0) {
  const std::string needle = absl::StrCat("\"", key, "\":\"");
  size_t pos = json.find(needle, from);
  if (pos == absl::string_view::npos) return std::nullopt;
  pos += needle.size();
  const size_t stop = json.find('"', pos);
  if (stop == absl::string_view::npos) return std::nullopt;
  return std::string(json.substr(pos, stop - pos));
}

// `s` as a JSON string literal (quotes, backslashes and control characters escaped).
std::string JsonQuote(absl::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (static_cast<unsigned char>(c) < 0x20) {
      absl::StrAppend(&out, "\\u00", absl::Hex(static_cast<unsigned char>(c), absl::kZeroPad2));
    } else {
      out.push_back(c);
    }
  }
  out.push_back('"');
  return out;
}

}  // namespace

// ---------------------------------------------------------------- etcdctl

absl::StatusOr<EtcdCluster::CtlResult> EtcdCluster::RunEtcdctl(
    const std::vector<std::string>& endpoints, const std::vector<std::string>& args,
    absl::Duration timeout, std::optional<std::string> as_user, bool offline) {
  const std::string credentials = as_user.has_value() ? *std::move(as_user) : Credentials();
  const std::string what = absl::StrCat("etcdctl ", absl::StrJoin(args, " "));
  if (endpoints.empty() && !offline) {
    return absl::FailedPreconditionError(what + ": no live etcd member");
  }

  const absl::Duration scaled = TimeScale(timeout);
  ChildProcessOptions o;
  o.argv = {etcdctl_path_};
  if (!offline) {
    o.argv.push_back(absl::StrCat("--endpoints=", absl::StrJoin(endpoints, ",")));
    // Let etcdctl give up (with its own error message) just before we kill it.
    o.argv.push_back(absl::StrCat(
        "--command-timeout=", std::max<int64_t>(100, absl::ToInt64Milliseconds(scaled * 0.9)),
        "ms"));
    if (!credentials.empty()) o.argv.push_back(absl::StrCat("--user=", credentials));
  }
  o.argv.insert(o.argv.end(), args.begin(), args.end());
  o.env = {{"ETCDCTL_API", "3"}};
  o.unset_env_prefixes = {"ETCDCTL_"};
  absl::StatusOr<std::unique_ptr<ChildProcess>> child = ChildProcess::Spawn(std::move(o));
  if (!child.ok()) return child.status();

  absl::StatusOr<int> exit_value = (*child)->Wait(timeout);
  if (!exit_value.ok()) {
    (void)(*child)->Kill();
    return absl::DeadlineExceededError(absl::StrCat(what, ": timed out after ",
                                                    absl::FormatDuration(scaled),
                                                    "; stderr: ", (*child)->ReadStderr()));
  }
  CtlResult result;
  result.exit_value = *exit_value;
  result.out = (*child)->ReadStdout();
  result.err = (*child)->ReadStderr();
  return result;
}

absl::StatusOr<std::string> EtcdCluster::CtlOutput(absl::StatusOr<CtlResult> r,
                                                   const std::vector<std::string>& args) {
  if (!r.ok()) return r.status();
  if (r->exit_value != 0) {
    return absl::UnknownError(absl::StrCat("etcdctl ", absl::StrJoin(args, " "), " exited with ",
                                           r->exit_value, ": ", r->err, r->out));
  }
  return std::move(r->out);
}

absl::StatusOr<std::string> EtcdCluster::Etcdctl(const std::vector<std::string>& args,
                                                 absl::Duration timeout) {
  return CtlOutput(RunEtcdctl(LiveEndpoints(), args, timeout), args);
}

absl::StatusOr<std::string> EtcdCluster::EtcdctlAt(int i, const std::vector<std::string>& args,
                                                   absl::Duration timeout) {
  if (i < 0 || i >= size()) return absl::OutOfRangeError(absl::StrCat("no member ", i));
  return CtlOutput(RunEtcdctl({ClientEndpoint(i)}, args, timeout), args);
}

absl::StatusOr<std::string> EtcdCluster::EtcdctlAs(const std::string& credentials,
                                                   const std::vector<std::string>& args,
                                                   absl::Duration timeout) {
  return CtlOutput(RunEtcdctl(LiveEndpoints(), args, timeout, credentials), args);
}

absl::StatusOr<EtcdMemberStatus> EtcdCluster::MemberStatus(int i) {
  const std::vector<std::string> args = {"endpoint", "status", "-w", "json"};
  absl::StatusOr<std::string> out = EtcdctlAt(i, args, absl::Seconds(5));
  if (!out.ok()) return out.status();
  // [{"Endpoint":"...","Status":{"header":{"cluster_id":..,"member_id":..,"revision":..,
  //   "raft_term":..},"version":"3.4.23",..,"leader":..,"raftIndex":..,..}}]
  std::optional<uint64_t> cluster_id = FindUint(*out, "cluster_id");
  std::optional<uint64_t> member_id = FindUint(*out, "member_id");
  std::optional<uint64_t> revision = FindUint(*out, "revision");
  std::optional<uint64_t> raft_term = FindUint(*out, "raft_term");
  std::optional<uint64_t> raft_index = FindUint(*out, "raftIndex");
  std::optional<uint64_t> leader = FindUint(*out, "leader");
  if (!cluster_id || !member_id || !revision || !raft_term || !raft_index || !leader) {
    return absl::DataLossError(absl::StrCat("unexpected etcdctl endpoint status output: ", *out));
  }
  return EtcdMemberStatus{.cluster_id = *cluster_id,
                          .member_id = *member_id,
                          .revision = static_cast<int64_t>(*revision),
                          .raft_term = *raft_term,
                          .raft_index = *raft_index,
                          .leader = *leader};
}

absl::Status EtcdCluster::EnableAuth(std::string root_password) {
  const std::string credentials = absl::StrCat("root:", root_password);
  if (absl::StatusOr<std::string> r = Etcdctl({"user", "add", credentials}); !r.ok()) {
    return r.status();
  }
  // etcdctl grants the root role to root if needed.
  if (absl::StatusOr<std::string> r = Etcdctl({"auth", "enable"}); !r.ok()) return r.status();
  std::lock_guard<std::mutex> lock(mu_);
  credentials_ = credentials;
  return absl::OkStatus();
}

absl::StatusOr<int> EtcdCluster::LeaderIndex() {
  // Member IDs -> indices (names are "m<i>").
  absl::StatusOr<std::string> list = Etcdctl({"member", "list", "-w", "json"}, absl::Seconds(5));
  if (!list.ok()) return list.status();
  std::map<uint64_t, int> index_of;
  for (size_t pos = 0;;) {
    size_t end = 0;
    std::optional<uint64_t> id = FindUint(*list, "ID", pos, &end);
    if (!id.has_value()) break;
    // A member that never started has no "name": only look inside this member's object.
    const size_t next = list->find("\"ID\":", end);
    std::optional<std::string> name =
        FindString(absl::string_view(*list).substr(0, next), "name", end);
    pos = end;
    int index = -1;
    if (name.has_value() && absl::StartsWith(*name, "m") &&
        absl::SimpleAtoi(name->substr(1), &index) && index >= 0 && index < size()) {
      index_of[*id] = index;
    }
  }

  // Every live member's view of the leader; they must agree.
  absl::StatusOr<CtlResult> status =
      RunEtcdctl(LiveEndpoints(), {"endpoint", "status", "-w", "json"}, absl::Seconds(5));
  if (!status.ok()) return status.status();
  std::optional<uint64_t> leader;
  int answers = 0;
  for (size_t pos = status->out.find("\"Endpoint\":"); pos != std::string::npos;) {
    const size_t next = status->out.find("\"Endpoint\":", pos + 1);
    const absl::string_view entry = absl::string_view(status->out).substr(pos, next - pos);
    pos = next;
    std::optional<uint64_t> l = FindUint(entry, "leader");
    if (!l.has_value()) continue;
    ++answers;
    if (*l == 0) return absl::UnavailableError("etcd: a member reports no leader");
    if (leader.has_value() && *leader != *l) {
      return absl::UnavailableError("etcd: members disagree on the leader (election running)");
    }
    leader = *l;
  }
  if (answers == 0) {
    return absl::UnavailableError(absl::StrCat("etcdctl endpoint status gave no answer (exit ",
                                               status->exit_value, "): ", status->err));
  }
  const auto it = index_of.find(*leader);
  if (it == index_of.end()) {
    return absl::UnavailableError(absl::StrCat("etcd leader ", *leader, " is not a known member"));
  }
  return it->second;
}

// ---------------------------------------------------------------- users and tokens

absl::Status EtcdCluster::EnableAuthWithUsers(std::string root_password,
                                              const std::vector<EtcdUser>& users) {
  if (!Credentials().empty()) {
    return absl::FailedPreconditionError("EnableAuthWithUsers: auth is already on");
  }
  if (absl::StatusOr<std::string> r =
          Etcdctl({"user", "add", "root", absl::StrCat("--new-user-password=", root_password)});
      !r.ok()) {
    return r.status();
  }
  if (absl::StatusOr<std::string> r = Etcdctl({"user", "grant-role", "root", "root"}); !r.ok()) {
    return r.status();
  }
  for (const EtcdUser& user : users) {
    if (absl::Status s = AddUser(user); !s.ok()) return s;
  }
  if (absl::StatusOr<std::string> r = Etcdctl({"auth", "enable"}); !r.ok()) return r.status();
  std::lock_guard<std::mutex> lock(mu_);
  credentials_ = absl::StrCat("root:", root_password);
  return absl::OkStatus();
}

absl::Status EtcdCluster::EnableAuthWithUser(std::string root_password, std::string user,
                                             std::string password,
                                             std::vector<std::string> prefixes) {
  EtcdUser u{.name = std::move(user), .password = std::move(password)};
  for (std::string& p : prefixes) u.permissions.push_back(EtcdPermission::Prefix(std::move(p)));
  return EnableAuthWithUsers(std::move(root_password), {u});
}

absl::Status EtcdCluster::AddUser(const EtcdUser& user) {
  if (user.name.empty() || user.name == "root") {
    return absl::InvalidArgumentError(absl::StrCat("AddUser: bad user name \"", user.name, "\""));
  }
  const std::string role = user.role.empty() ? user.name : user.role;
  if (!Etcdctl({"role", "get", role}).ok()) {
    if (absl::StatusOr<std::string> r = Etcdctl({"role", "add", role}); !r.ok()) return r.status();
  }
  for (const EtcdPermission& p : user.permissions) {
    std::vector<std::string> args = {"role", "grant-permission"};
    if (p.prefix) args.push_back("--prefix=true");
    if (p.range_end == std::string(1, '\0')) args.push_back("--from-key=true");
    args.push_back("--");  // keys may start with '-'
    args.push_back(role);
    switch (p.type) {
      case EtcdPermission::Type::kRead:
        args.push_back("read");
        break;
      case EtcdPermission::Type::kWrite:
        args.push_back("write");
        break;
      case EtcdPermission::Type::kReadWrite:
        args.push_back("readwrite");
        break;
    }
    args.push_back(p.key);
    if (!p.range_end.empty() && p.range_end != std::string(1, '\0')) args.push_back(p.range_end);
    if (absl::StatusOr<std::string> r = Etcdctl(args); !r.ok()) return r.status();
  }
  if (!Etcdctl({"user", "get", user.name}).ok()) {
    std::vector<std::string> args = {"user", "add", user.name};
    args.push_back(user.password.empty() ? "--no-password"
                                         : absl::StrCat("--new-user-password=", user.password));
    if (absl::StatusOr<std::string> r = Etcdctl(args); !r.ok()) return r.status();
  }
  if (absl::StatusOr<std::string> r = Etcdctl({"user", "grant-role", user.name, role}); !r.ok()) {
    return r.status();
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> EtcdCluster::SimpleToken(int i, const std::string& user,
                                                     const std::string& password) {
  absl::StatusOr<HttpResponse> r = GatewayPost(
      i, "/v3/auth/authenticate",
      absl::StrCat("{\"name\":", JsonQuote(user), ",\"password\":", JsonQuote(password), "}"));
  if (!r.ok()) return r.status();
  std::optional<std::string> token = FindString(r->body, "token");
  if (r->status != 200 || !token.has_value() || token->empty()) {
    return absl::PermissionDeniedError(absl::StrCat("authenticate as ", user, " at ", MemberName(i),
                                                    ": HTTP ", r->status, " ", r->body));
  }
  return *std::move(token);
}

absl::StatusOr<HttpResponse> EtcdCluster::GatewayPost(int i, const std::string& path,
                                                      const std::string& json,
                                                      const std::string& token,
                                                      absl::Duration timeout) {
  if (i < 0 || i >= size()) return absl::OutOfRangeError(absl::StrCat("no member ", i));
  std::vector<std::pair<std::string, std::string>> headers = {{"Content-Type", "application/json"}};
  if (!token.empty()) headers.emplace_back("Authorization", token);
  return HttpPost(ClientPort(i), path, json, headers, timeout);
}

}  // namespace discovery::testing
