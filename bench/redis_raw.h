// A bare hiredis client for the Redis benchmarks: one blocking connection, the library's Lua
// scripts (src/redis/scripts.cc, plain text compiled into each binary) loaded once and run
// with EVALSHA, the script arguments 1..3 built as the library builds them. Shared by the raw
// baseline (discovery-raw-redis-bench, which links hiredis and nothing of the library) and by
// discovery-bench's Redis writer. Header-only; hiredis and the standard library only.
#pragma once

#include <hiredis/hiredis.h>

#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "redis/scripts.h"

namespace bench_redis {

// redis://host:port (no user, no db: the benchmarks start their own server).
inline bool ParseUrl(const std::string& url, std::string* host, int* port) {
  std::string rest = url;
  if (rest.rfind("redis://", 0) == 0) rest = rest.substr(8);
  const size_t slash = rest.find('/');
  if (slash != std::string::npos) rest = rest.substr(0, slash);
  const size_t colon = rest.rfind(':');
  if (colon == std::string::npos) return false;
  *host = rest.substr(0, colon);
  *port = std::atoi(rest.c_str() + colon + 1);
  return !host->empty() && *port > 0;
}

struct ReplyDeleter {
  void operator()(redisReply* r) const {
    if (r != nullptr) freeReplyObject(r);
  }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

class Conn {
 public:
  explicit Conn(const std::string& url, const std::string& ns = "sd")
      : keys_(discovery::redis::Keys(ns)) {
    std::string host;
    int port = 0;
    if (!ParseUrl(url, &host, &port)) {
      error_ = "bad url " + url;
      return;
    }
    timeval tv{5, 0};
    ctx_ = redisConnectWithTimeout(host.c_str(), port, tv);
    if (ctx_ == nullptr || ctx_->err != 0) {
      error_ = ctx_ != nullptr ? ctx_->errstr : "redisConnect failed";
      return;
    }
    redisSetTimeout(ctx_, tv);
  }
  ~Conn() {
    if (ctx_ != nullptr) redisFree(ctx_);
  }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }

  ReplyPtr Command(const std::vector<std::string>& argv) {
    if (!ok()) return nullptr;
    std::vector<const char*> a;
    std::vector<size_t> l;
    for (const auto& s : argv) {
      a.push_back(s.data());
      l.push_back(s.size());
    }
    auto* r = static_cast<redisReply*>(
        redisCommandArgv(ctx_, static_cast<int>(a.size()), a.data(), l.data()));
    if (r == nullptr) error_ = ctx_->errstr;
    return ReplyPtr(r);
  }

  // SCRIPT LOAD of `script` now (Eval does it on first use; inside MULTI it must be done).
  bool Load(const std::string& script) {
    std::string& sha = shas_[&script];
    if (!sha.empty()) return true;
    ReplyPtr l = Command({"SCRIPT", "LOAD", script});
    if (!l || l->type != REDIS_REPLY_STRING) return false;
    sha.assign(l->str, l->len);
    return true;
  }

  // EVALSHA of `script` (SCRIPT LOAD the first time) with the library's KEYS and ARGV 1..3.
  ReplyPtr Eval(const std::string& script, const std::vector<std::string>& args) {
    std::string& sha = shas_[&script];
    if (sha.empty()) {
      ReplyPtr l = Command({"SCRIPT", "LOAD", script});
      if (!l || l->type != REDIS_REPLY_STRING) return l;
      sha.assign(l->str, l->len);
    }
    std::vector<std::string> argv = {"EVALSHA", sha, std::to_string(keys_.size())};
    argv.insert(argv.end(), keys_.begin(), keys_.end());
    // ARGV 1..3 as the library's Store::Args: epoch candidate, log MAXLEN, lease id candidate.
    argv.push_back(
        std::to_string(std::uniform_int_distribution<uint64_t>(1, uint64_t{1} << 62)(gen_)));
    argv.push_back("100000");
    argv.push_back(std::to_string(
        std::uniform_int_distribution<int64_t>(1, int64_t{1} << 31)(gen_) * (int64_t{1} << 20)));
    argv.insert(argv.end(), args.begin(), args.end());
    return Command(argv);
  }

  const std::vector<std::string>& keys() const { return keys_; }

 private:
  redisContext* ctx_ = nullptr;
  std::string error_;
  std::vector<std::string> keys_;
  std::map<const std::string*, std::string> shas_;
  std::mt19937_64 gen_{std::random_device{}()};
};

// Integer element `i` of an array reply (or the reply itself when i < 0); `fallback` otherwise.
inline int64_t IntAt(const redisReply* r, int i, int64_t fallback = -1) {
  if (r == nullptr) return fallback;
  if (i >= 0) {
    if (r->type != REDIS_REPLY_ARRAY || static_cast<size_t>(i) >= r->elements) return fallback;
    r = r->element[i];
  }
  if (r->type == REDIS_REPLY_INTEGER) return r->integer;
  if (r->type == REDIS_REPLY_STRING) return std::atoll(r->str);
  return fallback;
}

// A lease of `ttl_ms` (kGrantScript); 0 on error.
inline int64_t Grant(Conn& c, int64_t ttl_ms) {
  ReplyPtr r = c.Eval(discovery::redis::kGrantScript, {std::to_string(ttl_ms)});
  return IntAt(r.get(), -1, 0);
}

}  // namespace bench_redis
