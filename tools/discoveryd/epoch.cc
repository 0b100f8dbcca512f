#include "epoch.h"

#include <spdlog/spdlog.h>

#include <cctype>
#include <random>
#include <utility>

#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "util/clock.h"
#include "util/logging.h"

namespace discoveryd {

namespace util = discovery::util;

std::string EpochKey(const std::string& prefix) {
  std::string key = prefix;
  while (!key.empty() && key.back() == '/') key.pop_back();
  return key + ".epoch";
}

std::string RandomEpoch() {
  static thread_local std::mt19937 gen{std::random_device{}()};
  return absl::StrFormat("%08x", static_cast<uint32_t>(gen()));
}

namespace {

// {"epoch","replaces"}; false when `value` is not such an object.
bool ParseRecord(const std::string& value, std::string* epoch, std::string* replaces) {
  nlohmann::json j = nlohmann::json::parse(value, nullptr, false);
  if (!j.is_object() || !j.contains("epoch") || !j["epoch"].is_string()) return false;
  *epoch = j["epoch"].get<std::string>();
  *replaces = j.contains("replaces") && j["replaces"].is_string() ? j["replaces"].get<std::string>()
                                                                  : std::string();
  if (epoch->empty() || epoch->size() > 32) return false;
  for (char c : *epoch) {
    if (!std::isalnum(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

}  // namespace

EpochKeeper::EpochKeeper(std::unique_ptr<EpochStore> store, Options options, OnEpoch on_epoch)
    : store_(std::move(store)),
      options_(std::move(options)),
      on_epoch_(std::move(on_epoch)),
      logger_(util::ComponentLogger(options_.logger, "discoveryd")) {}

EpochKeeper::~EpochKeeper() { Stop(); }

void EpochKeeper::Start() {
  util::MutexLock lock(&mu_);
  if (started_ || stop_) return;
  started_ = true;
  read_pending_ = true;
  thread_ = std::thread([this] { Run(); });
}

void EpochKeeper::Stop() {
  uint64_t watch = 0;
  {
    util::MutexLock lock(&mu_);
    stop_ = true;
    watch = watch_id_;
    watch_id_ = 0;
  }
  if (thread_.joinable()) thread_.join();
  if (watch != 0) store_->Unwatch(watch);
}

void EpochKeeper::Urgent() {
  util::MutexLock lock(&mu_);
  urgent_ = true;
}

void EpochKeeper::HistoryReset(const std::string& previous) {
  util::MutexLock lock(&mu_);
  ++reset_seq_;
  reset_previous_ = previous;
}

std::string EpochKeeper::epoch() const {
  util::MutexLock lock(&mu_);
  return epoch_;
}

EpochKeeper::Stats EpochKeeper::stats() const {
  util::MutexLock lock(&mu_);
  Stats s = stats_;
  s.provisional = provisional_;
  s.failures += store_->feed_failures();  // the Redis poll's (its own backoff)
  return s;
}

void EpochKeeper::Report(const std::string& epoch, Why why, bool provisional) {
  util::MutexLock order(&report_mu_);
  {
    util::MutexLock lock(&mu_);
    if (stop_) return;
    // A reset is always answered (the hub holds its clients until then).
    if (epoch == epoch_ && why != Why::kReset) {
      provisional_ = provisional_ && provisional;
      return;
    }
    epoch_ = epoch;
    provisional_ = provisional;
  }
  on_epoch_(epoch, why);
}

void EpochKeeper::Run() {
  util::Backoff backoff(options_.backoff_initial, options_.backoff_max);
  bool provisional_sent = false;  // for the step being retried
  bool failed_before = false;
  uint64_t step_reset = 0;
  for (;;) {
    bool reset = false;
    bool defer = false;
    std::string previous;
    uint64_t seq = 0;
    {
      util::MutexLock lock(&mu_);
      mu_.Await([this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stop_ || read_pending_ || reset_seq_ != reset_done_;
      });
      if (stop_) return;
      reset = reset_seq_ != reset_done_;
      seq = reset_seq_;
      previous = reset_previous_;
      defer = read_defer_;
    }
    if (reset && seq != step_reset) {
      step_reset = seq;
      provisional_sent = false;
    }
    if (!reset && !provisional_sent && failed_before && NeedProvisional()) {
      provisional_sent = true;
      ReportProvisional(Why::kInitial);
    }
    absl::Status s = reset ? DoReset(previous) : DoRead(defer, false);
    if (s.ok()) {
      backoff.Reset();
      provisional_sent = false;
      failed_before = false;
      util::MutexLock lock(&mu_);
      if (reset) {
        reset_done_ = seq;
      } else {
        read_pending_ = false;
        read_defer_ = false;
      }
      continue;
    }
    absl::Duration delay = backoff.Next();
    {
      util::MutexLock lock(&mu_);
      ++stats_.failures;
    }
    SPDLOG_LOGGER_WARN(logger_, "SSE epoch at {}: {}; retry in {}", store_->name(), s.ToString(),
                       absl::FormatDuration(delay));
    failed_before = true;
    // Serving goes on meanwhile under a provisional epoch of our own.
    if (!provisional_sent && (reset || NeedProvisional())) {
      provisional_sent = true;
      ReportProvisional(reset ? Why::kReset : Why::kInitial);
    }
    util::MutexLock lock(&mu_);
    mu_.AwaitWithDeadline(
        [this, seq, provisional_sent]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stop_ || reset_seq_ != seq || (!provisional_sent && urgent_ && epoch_.empty());
        },
        util::MonoNow() + delay);
  }
}

bool EpochKeeper::NeedProvisional() const {
  util::MutexLock lock(&mu_);
  return urgent_ && epoch_.empty();
}

void EpochKeeper::ReportProvisional(Why why) {
  std::string mine = RandomEpoch();
  SPDLOG_LOGGER_WARN(logger_,
                     "SSE epoch: serving under provisional epoch {} until the store answers", mine);
  Report(mine, why, true);
}

absl::StatusOr<EpochKeeper::Record> EpochKeeper::Read() {
  auto stored = store_->Read(options_.call_timeout);
  if (!stored.ok()) return stored.status();
  Record r;
  r.store_revision = stored->store_revision;
  if (stored->exists) {
    r.exists = true;
    r.mod_revision = stored->mod_revision;
    r.valid = ParseRecord(stored->value, &r.epoch, &r.replaces);
  }
  return r;
}

absl::StatusOr<bool> EpochKeeper::Write(const Record& seen, const std::string& fresh,
                                        const std::string& replaces, int64_t* store_revision) {
  EpochStore::Record stored;
  stored.exists = seen.exists;
  stored.mod_revision = seen.mod_revision;
  return store_->Write(stored, nlohmann::json({{"epoch", fresh}, {"replaces", replaces}}).dump(),
                       options_.call_timeout, store_revision);
}

absl::Status EpochKeeper::DoRead(bool defer_adoption, bool answer_reset) {
  for (int attempt = 0; attempt < 8; ++attempt) {
    auto r = Read();
    if (!r.ok()) return r.status();
    if (!r->valid && defer_adoption && !epoch().empty()) {
      // Wiped with the cluster: the local history reset that follows writes the new one.
      EnsureWatch(r->store_revision + 1);
      return absl::OkStatus();
    }
    if (!r->valid) {
      // Missing (first start, or wiped), or not ours (garbage): write one.
      if (r->exists) {
        SPDLOG_LOGGER_WARN(logger_, "SSE epoch: {} holds no valid epoch; replacing it",
                           store_->name());
      }
      std::string fresh = RandomEpoch();
      int64_t rev = 0;
      auto written = Write(*r, fresh, "", &rev);
      if (!written.ok()) return written.status();
      if (!*written) continue;  // another replica was first: read its value
      {
        util::MutexLock lock(&mu_);
        ++stats_.created;
      }
      SPDLOG_LOGGER_INFO(logger_, "SSE epoch {} created at {}", fresh, store_->name());
      const bool first = epoch().empty();
      Report(fresh, answer_reset ? Why::kReset : first ? Why::kInitial : Why::kReplaced, false);
      EnsureWatch(rev + 1);
      return absl::OkStatus();
    }
    std::string current = epoch();
    bool provisional = stats().provisional;
    if (answer_reset || current.empty() || provisional) {
      Report(r->epoch,
             answer_reset      ? Why::kReset
             : current.empty() ? Why::kInitial
                               : Why::kReplaced,
             false);
    } else if (r->epoch != current) {
      if (defer_adoption) {
        SPDLOG_LOGGER_INFO(logger_,
                           "SSE epoch {} at {} (ours {}): the store changed history; the local "
                           "history reset decides",
                           r->epoch, store_->name(), current);
      } else {
        {
          util::MutexLock lock(&mu_);
          ++stats_.adopted;
        }
        Report(r->epoch, Why::kReplaced, false);
      }
    }
    EnsureWatch(r->store_revision + 1);
    return absl::OkStatus();
  }
  return absl::AbortedError("epoch key keeps changing under us");
}

absl::Status EpochKeeper::DoReset(const std::string& previous) {
  if (previous.empty()) return DoRead(false, true);
  for (int attempt = 0; attempt < 8; ++attempt) {
    auto r = Read();
    if (!r.ok()) return r.status();
    if (r->valid && r->replaces == previous && r->epoch != previous) {
      {
        util::MutexLock lock(&mu_);
        ++stats_.adopted;
      }
      SPDLOG_LOGGER_INFO(logger_, "SSE epoch {} (replacing {}) adopted after a history reset",
                         r->epoch, previous);
      Report(r->epoch, Why::kReset, false);
      EnsureWatch(r->store_revision + 1);
      return absl::OkStatus();
    }
    std::string fresh = RandomEpoch();
    int64_t rev = 0;
    auto written = Write(*r, fresh, previous, &rev);
    if (!written.ok()) return written.status();
    if (!*written) continue;  // someone wrote meanwhile: look again
    {
      util::MutexLock lock(&mu_);
      ++stats_.created;
    }
    SPDLOG_LOGGER_WARN(logger_, "store history was replaced: SSE epoch {} replaces {}", fresh,
                       previous);
    Report(fresh, Why::kReset, false);
    EnsureWatch(rev + 1);
    return absl::OkStatus();
  }
  return absl::AbortedError("epoch key keeps changing under us");
}

void EpochKeeper::EnsureWatch(int64_t from_revision) {
  {
    util::MutexLock lock(&mu_);
    if (stop_ || watch_id_ != 0) return;
  }
  EpochStore::Listener listener;
  listener.on_value = [this](const std::string& value) { OnWatchValue(value); };
  listener.on_broken = [this](const absl::Status& why) {
    util::MutexLock lock(&mu_);
    watch_id_ = 0;
    read_pending_ = true;
    // Another cluster, or the store's history went back (etcd wiped / restored with the same
    // cluster id, the Redis record vanished): the watcher's own history reset follows and
    // decides the new epoch; writing one here first would make subscribers see two resets.
    read_defer_ = absl::IsFailedPrecondition(why) || absl::IsDataLoss(why);
  };
  uint64_t id = store_->Watch(from_revision, std::move(listener));
  bool remove = false;
  {
    util::MutexLock lock(&mu_);
    if (stop_ || watch_id_ != 0) {
      remove = true;
    } else {
      watch_id_ = id;
    }
  }
  if (remove) store_->Unwatch(id);
}

void EpochKeeper::OnWatchValue(const std::string& value) {
  std::string epoch, replaces;
  if (!ParseRecord(value, &epoch, &replaces)) return;
  if (epoch == this->epoch()) return;
  {
    util::MutexLock lock(&mu_);
    ++stats_.adopted;
  }
  SPDLOG_LOGGER_WARN(logger_, "SSE epoch replaced by another replica: {} (replaces {})", epoch,
                     replaces);
  Report(epoch, Why::kReplaced, false);
}

}  // namespace discoveryd
