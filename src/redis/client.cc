#include "redis/client.h"

#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <charconv>
#include <map>
#include <tuple>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "util/clock.h"

namespace discovery::redis {
namespace {

timeval TimevalOf(absl::Duration d) {
  if (d <= absl::ZeroDuration()) d = absl::Milliseconds(1);
  timeval tv;
  tv.tv_sec = static_cast<time_t>(absl::ToInt64Seconds(d));
  tv.tv_usec = static_cast<suseconds_t>(absl::ToInt64Microseconds(d % absl::Seconds(1)));
  return tv;
}

Reply Convert(const redisReply* r) {
  Reply out;
  switch (r->type) {
    case REDIS_REPLY_STRING:
      out.type = Reply::Type::kString;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_STATUS:
      out.type = Reply::Type::kStatus;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_INTEGER:
      out.type = Reply::Type::kInteger;
      out.integer = r->integer;
      break;
    case REDIS_REPLY_ARRAY:
      out.type = Reply::Type::kArray;
      out.elements.reserve(r->elements);
      for (size_t i = 0; i < r->elements; ++i) out.elements.push_back(Convert(r->element[i]));
      break;
    default:
      out.type = Reply::Type::kNil;
  }
  return out;
}

}  // namespace

int64_t Reply::AsInt() const {
  if (type == Type::kInteger) return integer;
  int64_t v = 0;
  if ((type == Type::kString || type == Type::kStatus) && absl::SimpleAtoi(str, &v)) return v;
  return 0;
}

namespace {

std::atomic<uint64_t> g_lookups{0}, g_lookup_failures{0}, g_not_master{0}, g_readonly{0},
    g_master_changes{0}, g_moved{0};

// host[:port] -> (host, port); `what` names the URL in errors.
absl::Status ParseHostPort(absl::string_view url, absl::string_view hostport, int default_port,
                           std::string* host, int* port) {
  *port = default_port;
  if (size_t colon = hostport.rfind(':'); colon != absl::string_view::npos) {
    absl::string_view p = hostport.substr(colon + 1);
    if (!absl::SimpleAtoi(p, port) || *port <= 0 || *port > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("redis URL '", url, "': port '", p, "' is not in 1..65535"));
    }
    hostport = hostport.substr(0, colon);
  }
  if (hostport.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("redis URL '", url, "': no host"));
  }
  *host = std::string(hostport);
  return absl::OkStatus();
}

absl::Status ParseDb(absl::string_view url, absl::string_view db, int* out) {
  if (!db.empty() && (!absl::SimpleAtoi(db, out) || *out < 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("redis URL '", url, "': database '", db, "' is not a number >= 0"));
  }
  return absl::OkStatus();
}

}  // namespace

SentinelCounters GetSentinelCounters() {
  return {g_lookups.load(),  g_lookup_failures.load(), g_not_master.load(),
          g_readonly.load(), g_master_changes.load(),  g_moved.load()};
}

absl::StatusOr<Url> ParseUrl(absl::string_view url) {
  constexpr absl::string_view kScheme = "redis://";
  constexpr absl::string_view kSentinel = "redis+sentinel://";
  const bool sentinel = absl::StartsWith(url, kSentinel);
  if (!sentinel && !absl::StartsWith(url, kScheme)) {
    return absl::InvalidArgumentError(
        absl::StrCat("redis URL '", url,
                     "': expected redis://[user:pass@]host:port[/db] or "
                     "redis+sentinel://[user:pass@]host:port[,host:port...]/<master-name>[/db]"));
  }
  absl::string_view rest = url.substr(sentinel ? kSentinel.size() : kScheme.size());
  Url out;
  if (size_t at = rest.rfind('@'); at != absl::string_view::npos) {
    absl::string_view cred = rest.substr(0, at);
    rest = rest.substr(at + 1);
    size_t colon = cred.find(':');
    if (colon == absl::string_view::npos) {
      out.password = std::string(cred);  // redis://pass@host (password only)
    } else {
      out.user = std::string(cred.substr(0, colon));
      out.password = std::string(cred.substr(colon + 1));
    }
  }
  absl::string_view hostport = rest;
  absl::string_view path;
  if (size_t slash = rest.find('/'); slash != absl::string_view::npos) {
    hostport = rest.substr(0, slash);
    path = rest.substr(slash + 1);
  }
  if (!sentinel) {
    if (absl::Status s = ParseDb(url, path, &out.db); !s.ok()) return s;
    if (absl::Status s = ParseHostPort(url, hostport, 6379, &out.host, &out.port); !s.ok()) {
      return s;
    }
    return out;
  }
  // redis+sentinel: hosts, then <master-name>[/db].
  for (absl::string_view one : absl::StrSplit(hostport, ',')) {
    std::pair<std::string, int> s;
    if (absl::Status st = ParseHostPort(url, one, 26379, &s.first, &s.second); !st.ok()) {
      return st;
    }
    out.sentinels.push_back(std::move(s));
  }
  absl::string_view db;
  if (size_t slash = path.find('/'); slash != absl::string_view::npos) {
    db = path.substr(slash + 1);
    path = path.substr(0, slash);
  }
  if (path.empty() || path.find_first_of(" \t\r\n") != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "redis URL '", url, "': no master name (redis+sentinel://host:port,.../<master-name>)"));
  }
  out.master_name = std::string(path);
  if (absl::Status s = ParseDb(url, db, &out.db); !s.ok()) return s;
  out.port = 0;
  return out;
}

Client::Client(ClientOptions options) : options_(std::move(options)) {}

Client::~Client() { Drop(); }

void Client::Drop() {
  if (ctx_ != nullptr) redisFree(ctx_);
  ctx_ = nullptr;
}

std::string Client::address() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ctx_ == nullptr ? std::string() : absl::StrCat(host_, ":", port_);
}

absl::StatusOr<std::pair<std::string, int>> Client::AskSentinels() {
  const auto& all = options_.url.sentinels;
  std::string errors;
  for (size_t i = 0; i < all.size(); ++i) {
    const size_t idx = (next_sentinel_ + i) % all.size();
    // Not a structured binding: clang 14 cannot capture one in the lambdas below.
    const std::string& host = all[idx].first;
    const int port = all[idx].second;
    g_lookups.fetch_add(1);
    std::unique_ptr<redisContext, void (*)(redisContext*)> c(
        redisConnectWithTimeout(host.c_str(), port, TimevalOf(options_.connect_timeout)),
        redisFree);
    auto note = [&](absl::string_view why) {
      absl::StrAppend(&errors, errors.empty() ? "" : "; ", host, ":", port, " ", why);
    };
    if (c == nullptr || c->err != 0) {
      note(c == nullptr ? "out of memory" : c->errstr);
      continue;
    }
    redisSetTimeout(c.get(), TimevalOf(options_.call_timeout));
    auto call = [&](std::vector<std::string> argv) -> absl::StatusOr<Reply> {
      std::vector<const char*> args;
      std::vector<size_t> lens;
      for (const auto& a : argv) {
        args.push_back(a.data());
        lens.push_back(a.size());
      }
      auto* raw = static_cast<redisReply*>(
          redisCommandArgv(c.get(), static_cast<int>(args.size()), args.data(), lens.data()));
      if (raw == nullptr) return absl::UnavailableError(c->errstr);
      std::unique_ptr<redisReply, void (*)(void*)> guard(raw, freeReplyObject);
      if (raw->type == REDIS_REPLY_ERROR)
        return absl::InternalError(std::string(raw->str, raw->len));
      return Convert(raw);
    };
    if (!options_.sentinel_password.empty()) {
      std::vector<std::string> auth = {"AUTH"};
      if (!options_.sentinel_user.empty()) auth.push_back(options_.sentinel_user);
      auth.push_back(options_.sentinel_password);
      if (auto r = call(auth); !r.ok()) {
        note(absl::StrCat("AUTH: ", r.status().message()));
        continue;
      }
    }
    auto r = call({"SENTINEL", "get-master-addr-by-name", options_.url.master_name});
    if (!r.ok()) {
      note(r.status().message());
      continue;
    }
    int mport = 0;
    if (r->nil() || r->elements.size() != 2 || !absl::SimpleAtoi(r->elements[1].str, &mport)) {
      note(absl::StrCat("does not know master '", options_.url.master_name, "'"));
      continue;
    }
    next_sentinel_ = idx;
    return std::make_pair(r->elements[0].str, mport);
  }
  g_lookup_failures.fetch_add(1);
  return absl::UnavailableError(
      absl::StrCat("no sentinel named the master '", options_.url.master_name, "': ", errors));
}

absl::Status Client::Connect(const std::string& host, int port) {
  host_ = host;
  port_ = port;
  ctx_ = redisConnectWithTimeout(host.c_str(), port, TimevalOf(options_.connect_timeout));
  if (ctx_ == nullptr) return absl::UnavailableError("out of memory");
  if (ctx_->err != 0) return absl::UnavailableError(ctx_->errstr);
  if (redisSetTimeout(ctx_, TimevalOf(options_.call_timeout)) != REDIS_OK) {
    return absl::UnavailableError("cannot set the socket timeout");
  }
  if (!options_.url.password.empty()) {
    std::vector<std::string> auth = {"AUTH"};
    if (!options_.url.user.empty()) auth.push_back(options_.url.user);
    auth.push_back(options_.url.password);
    auto r = CommandLocked(auth, absl::ZeroDuration());
    // Bad credentials are not retried faster than the backoff either. A Redis that did not
    // answer the AUTH (frozen, gone: kUnavailable) is unreachable, not a credentials problem.
    if (!r.ok()) {
      return r.status().code() == absl::StatusCode::kUnavailable
                 ? r.status()
                 : absl::UnauthenticatedError(r.status().message());
    }
  }
  if (!options_.url.sentinels.empty()) {
    // The sentinels may still name the old master while a failover runs: only a master will do.
    auto role = CommandLocked({"ROLE"}, absl::ZeroDuration());
    if (!role.ok()) return absl::UnavailableError(role.status().message());
    if (role->elements.empty() || role->elements[0].str != "master") {
      g_not_master.fetch_add(1);
      return absl::UnavailableError(absl::StrCat(
          "ROLE is '", role->elements.empty() ? "?" : role->elements[0].str,
          "', not master (sentinels of '", options_.url.master_name, "' not updated yet)"));
    }
  }
  if (options_.url.db != 0) {
    auto r = CommandLocked({"SELECT", absl::StrCat(options_.url.db)}, absl::ZeroDuration());
    if (!r.ok()) return absl::UnavailableError(r.status().message());
  }
  return absl::OkStatus();
}

absl::Status Client::EnsureConnected() {
  if (ctx_ != nullptr) return absl::OkStatus();
  const absl::Time now = util::MonoNow();
  const std::string name = options_.url.sentinels.empty()
                               ? absl::StrCat(options_.url.host, ":", options_.url.port)
                               : absl::StrCat("master '", options_.url.master_name, "'");
  if (now < next_attempt_) {
    return absl::UnavailableError(absl::StrCat("redis ", name, " unreachable (next attempt in ",
                                               absl::FormatDuration(next_attempt_ - now),
                                               "): ", last_error_.message()));
  }
  std::string host = redirect_host_.empty() ? options_.url.host : redirect_host_;
  int port = redirect_host_.empty() ? options_.url.port : redirect_port_;
  absl::Status st;
  if (!options_.url.sentinels.empty()) {
    auto master = AskSentinels();
    if (master.ok()) {
      if (connected_once_ && (master->first != host_ || master->second != port_)) {
        g_master_changes.fetch_add(1);
      }
      std::tie(host, port) = *master;
    } else {
      st = master.status();
    }
  }
  if (st.ok()) st = Connect(host, port);
  if (!st.ok()) {
    Drop();
    redirect_host_.clear();  // a MOVED target that failed: back to the configured address
    last_error_ = absl::Status(
        st.code() == absl::StatusCode::kUnauthenticated ? st.code()
                                                        : absl::StatusCode::kUnavailable,
        absl::StrCat("redis ", name, host.empty() ? "" : absl::StrCat(" (", host, ":", port, ")"),
                     ": ", st.message()));
    next_attempt_ = util::MonoNow() + backoff_.Next();
    return last_error_;
  }
  if (connected_once_) reconnects_.fetch_add(1);
  connected_once_ = true;
  backoff_.Reset();
  return absl::OkStatus();
}

absl::StatusOr<Reply> Client::CommandLocked(const std::vector<std::string>& argv,
                                            absl::Duration timeout) {
  std::vector<const char*> args;
  std::vector<size_t> lens;
  for (const auto& a : argv) {
    args.push_back(a.data());
    lens.push_back(a.size());
  }
  if (timeout > absl::ZeroDuration()) redisSetTimeout(ctx_, TimevalOf(timeout));
  auto* raw = static_cast<redisReply*>(
      redisCommandArgv(ctx_, static_cast<int>(args.size()), args.data(), lens.data()));
  if (timeout > absl::ZeroDuration()) redisSetTimeout(ctx_, TimevalOf(options_.call_timeout));
  if (raw == nullptr) {
    std::string why = ctx_->errstr;
    Drop();  // the connection is in an unknown state: reconnect on the next call
    last_error_ =
        absl::UnavailableError(absl::StrCat("redis ", host_, ":", port_, " ", argv[0], ": ", why));
    return last_error_;
  }
  std::unique_ptr<redisReply, void (*)(void*)> guard(raw, freeReplyObject);
  if (raw->type == REDIS_REPLY_ERROR &&
      absl::StrContains(absl::string_view(raw->str, raw->len), "READONLY")) {
    // A demoted master (failover; inside a script the error is wrapped): drop the connection,
    // the next connect asks the sentinels again.
    g_readonly.fetch_add(1);
    redirected_ = true;  // the caller retries once, on whatever the sentinels name now
    std::string why(raw->str, raw->len);
    guard.reset();
    Drop();
    last_error_ =
        absl::UnavailableError(absl::StrCat("redis ", host_, ":", port_, " ", argv[0], ": ", why));
    return last_error_;
  }
  if (raw->type == REDIS_REPLY_ERROR &&
      absl::StartsWith(absl::string_view(raw->str, raw->len), "MOVED ")) {
    // Redis Cluster: the slot of our hash tag lives on another node ("MOVED <slot> host:port").
    // Follow it: connect there from now on (the caller retries the command once).
    std::vector<std::string> f = absl::StrSplit(std::string(raw->str, raw->len), ' ');
    int port = 0;
    size_t colon = f.size() == 3 ? f[2].rfind(':') : std::string::npos;
    if (colon != std::string::npos && absl::SimpleAtoi(f[2].substr(colon + 1), &port)) {
      g_moved.fetch_add(1);
      redirect_host_ = f[2].substr(0, colon);
      redirect_port_ = port;
      redirected_ = true;
      guard.reset();
      Drop();
      return absl::UnavailableError(absl::StrCat("redis ", host_, ":", port_, " ", argv[0],
                                                 ": moved to ", redirect_host_, ":", port));
    }
  }
  if (raw->type == REDIS_REPLY_ERROR) {
    return absl::InternalError(
        absl::StrCat("redis ", argv[0], ": ", std::string(raw->str, raw->len)));
  }
  return Convert(raw);
}

absl::StatusOr<Reply> Client::Command(const std::vector<std::string>& argv,
                                      absl::Duration timeout) {
  std::lock_guard<std::mutex> lock(mu_);
  const bool reused = ctx_ != nullptr;
  if (absl::Status s = EnsureConnected(); !s.ok()) return s;
  redirected_ = false;
  auto r = CommandLocked(argv, timeout);
  if ((reused || redirected_) && !r.ok() && r.status().code() == absl::StatusCode::kUnavailable) {
    // (or told to go elsewhere - MOVED, READONLY: once more on the new connection)
    // A connection from before a server restart fails on first use: connect again and retry
    // once at once (the scripts are safe to repeat: a repeated put finds its own key).
    if (absl::Status s = EnsureConnected(); !s.ok()) return s;
    r = CommandLocked(argv, timeout);
  }
  return r;
}

absl::StatusOr<Reply> Client::Eval(const std::string& script, const std::vector<std::string>& keys,
                                   const std::vector<std::string>& args) {
  // The SHA1 of every script, from SCRIPT LOAD (process-wide: a SHA does not depend on the
  // server).
  static std::mutex shas_mu;
  static std::map<std::string, std::string>* shas = new std::map<std::string, std::string>();
  std::lock_guard<std::mutex> lock(mu_);
  bool reused = ctx_ != nullptr;
  if (absl::Status s = EnsureConnected(); !s.ok()) return s;
  // A stale connection (see Command): the first command on it fails; once more on a new one.
  auto run = [&](const std::vector<std::string>& argv) -> absl::StatusOr<Reply> {
    redirected_ = false;
    auto r = CommandLocked(argv, absl::ZeroDuration());
    if ((reused || redirected_) && !r.ok() && r.status().code() == absl::StatusCode::kUnavailable) {
      reused = false;
      if (absl::Status s = EnsureConnected(); !s.ok()) return s;
      r = CommandLocked(argv, absl::ZeroDuration());
    }
    reused = false;
    return r;
  };
  std::string sha;
  {
    std::lock_guard<std::mutex> l(shas_mu);
    if (auto it = shas->find(script); it != shas->end()) sha = it->second;
  }
  // NOSCRIPT -> SCRIPT LOAD and again; a redirect (READONLY, MOVED) between the load and the
  // EVALSHA lands on a server without the script: NOSCRIPT once more there.
  for (int attempt = 0; attempt < 4; ++attempt) {
    if (sha.empty()) {
      auto loaded = run({"SCRIPT", "LOAD", script});
      if (!loaded.ok()) return loaded.status();
      sha = loaded->str;
      std::lock_guard<std::mutex> l(shas_mu);
      (*shas)[script] = sha;
    }
    std::vector<std::string> argv = {"EVALSHA", sha, absl::StrCat(keys.size())};
    argv.insert(argv.end(), keys.begin(), keys.end());
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = run(argv);
    if (!r.ok() && absl::StrContains(r.status().message(), "NOSCRIPT")) {
      sha.clear();  // a restarted or flushed server: load it again
      continue;
    }
    return r;
  }
  return absl::InternalError("redis EVALSHA: NOSCRIPT after SCRIPT LOAD");
}

}  // namespace discovery::redis
