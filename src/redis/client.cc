#include "redis/client.h"

#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <charconv>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
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

absl::StatusOr<Url> ParseUrl(absl::string_view url) {
  constexpr absl::string_view kScheme = "redis://";
  if (!absl::StartsWith(url, kScheme)) {
    return absl::InvalidArgumentError(
        absl::StrCat("redis URL '", url, "': expected redis://[user:pass@]host:port[/db]"));
  }
  absl::string_view rest = url.substr(kScheme.size());
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
  if (size_t slash = rest.find('/'); slash != absl::string_view::npos) {
    hostport = rest.substr(0, slash);
    absl::string_view db = rest.substr(slash + 1);
    if (!db.empty() && (!absl::SimpleAtoi(db, &out.db) || out.db < 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("redis URL '", url, "': database '", db, "' is not a number >= 0"));
    }
  }
  if (size_t colon = hostport.rfind(':'); colon != absl::string_view::npos) {
    absl::string_view port = hostport.substr(colon + 1);
    if (!absl::SimpleAtoi(port, &out.port) || out.port <= 0 || out.port > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("redis URL '", url, "': port '", port, "' is not in 1..65535"));
    }
    hostport = hostport.substr(0, colon);
  }
  if (hostport.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("redis URL '", url, "': no host"));
  }
  out.host = std::string(hostport);
  return out;
}

Client::Client(ClientOptions options) : options_(std::move(options)) {}

Client::~Client() { Drop(); }

void Client::Drop() {
  if (ctx_ != nullptr) redisFree(ctx_);
  ctx_ = nullptr;
}

absl::Status Client::EnsureConnected() {
  if (ctx_ != nullptr) return absl::OkStatus();
  const absl::Time now = util::MonoNow();
  if (now < next_attempt_) {
    return absl::UnavailableError(absl::StrCat(
        "redis ", options_.url.host, ":", options_.url.port, " unreachable (next attempt in ",
        absl::FormatDuration(next_attempt_ - now), "): ", last_error_.message()));
  }
  auto fail = [&](std::string why) {
    Drop();
    last_error_ = absl::UnavailableError(
        absl::StrCat("redis ", options_.url.host, ":", options_.url.port, ": ", why));
    next_attempt_ = util::MonoNow() + backoff_.Next();
    return last_error_;
  };
  ctx_ = redisConnectWithTimeout(options_.url.host.c_str(), options_.url.port,
                                 TimevalOf(options_.connect_timeout));
  if (ctx_ == nullptr) return fail("out of memory");
  if (ctx_->err != 0) return fail(ctx_->errstr);
  if (redisSetTimeout(ctx_, TimevalOf(options_.call_timeout)) != REDIS_OK) {
    return fail("cannot set the socket timeout");
  }
  if (!options_.url.password.empty()) {
    std::vector<std::string> auth = {"AUTH"};
    if (!options_.url.user.empty()) auth.push_back(options_.url.user);
    auth.push_back(options_.url.password);
    auto r = CommandLocked(auth, absl::ZeroDuration());
    if (!r.ok()) {
      Drop();
      // Bad credentials are not retried faster than the backoff either. A Redis that did not
      // answer the AUTH (frozen, gone: kUnavailable) is unreachable, not a credentials problem.
      last_error_ = r.status().code() == absl::StatusCode::kUnavailable
                        ? r.status()
                        : absl::UnauthenticatedError(r.status().message());
      next_attempt_ = util::MonoNow() + backoff_.Next();
      return last_error_;
    }
  }
  if (options_.url.db != 0) {
    auto r = CommandLocked({"SELECT", absl::StrCat(options_.url.db)}, absl::ZeroDuration());
    if (!r.ok()) return fail(std::string(r.status().message()));
  }
  if (connected_once_) ++reconnects_;
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
    last_error_ = absl::UnavailableError(
        absl::StrCat("redis ", options_.url.host, ":", options_.url.port, " ", argv[0], ": ", why));
    return last_error_;
  }
  std::unique_ptr<redisReply, void (*)(void*)> guard(raw, freeReplyObject);
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
  auto r = CommandLocked(argv, timeout);
  if (reused && !r.ok() && r.status().code() == absl::StatusCode::kUnavailable) {
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
    auto r = CommandLocked(argv, absl::ZeroDuration());
    if (reused && !r.ok() && r.status().code() == absl::StatusCode::kUnavailable) {
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
  for (int attempt = 0; attempt < 2; ++attempt) {
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
