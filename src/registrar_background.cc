// Registrar background work: keepalive events, re-registration after a lost lease, guarded
// value writes, coalesced performance writes, close.
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "registrar_impl.h"

namespace discovery {

void Registrar::Impl::Track(const std::shared_ptr<RegistrationState>& st, int64_t lease) {
  std::weak_ptr<RegistrationState> weak = st;
  std::weak_ptr<Impl> self = shared_from_this();
  leases->KeepAlive(lease, st->ttl, st->interval, [weak, self](const LeaseHolder::Event& ev) {
    auto s = weak.lock();
    auto impl = self.lock();
    if (s == nullptr || impl == nullptr) return;
    switch (ev.type) {
      case LeaseHolder::EventType::kAtRisk:
        impl->Emit(RegistrationEventType::kLeaseAtRisk, *s, ev.lease_id);
        break;
      case LeaseHolder::EventType::kAlive:
        impl->Emit(RegistrationEventType::kLeaseRecovered, *s, ev.lease_id);
        break;
      case LeaseHolder::EventType::kLost:
        impl->OnLeaseLost(s, ev.lease_id);
        break;
    }
  });
}

void Registrar::Impl::OnLeaseLost(const std::shared_ptr<RegistrationState>& st, int64_t lease) {
  {
    util::MutexLock lock(&st->mu);
    if (st->closed || st->lease_id != lease || st->reregistering) return;
    st->reregistering = true;
  }
  SPDLOG_LOGGER_WARN(logger, "instance {} lost lease {:x}; re-registering", st->instance_id, lease);
  Emit(RegistrationEventType::kLeaseLost, *st, lease);
  std::weak_ptr<RegistrationState> weak = st;
  backend->background().Post([self = weak_from_this(), weak] {
    if (auto impl = self.lock()) {
      impl->ReRegister(weak, util::Backoff(absl::Milliseconds(200), absl::Seconds(5)));
    }
  });
}

// Runs on the background loop. Retries with backoff (re-posting itself) until it works or the
// registration is closed.
void Registrar::Impl::ReRegister(std::weak_ptr<RegistrationState> weak, util::Backoff backoff) {
  auto st = weak.lock();
  if (st == nullptr) return;
  absl::Status result;
  int64_t new_lease = 0;
  int64_t put_revision = 0;
  {
    util::MutexLock wlock(&st->write_mu);
    {
      util::MutexLock lock(&st->mu);
      if (st->closed) {
        st->reregistering = false;
        return;
      }
    }
    auto granted = leases->Grant(st->ttl);
    if (!granted.ok()) {
      result = granted.status();
    } else {
      new_lease = *granted;
      std::string value;
      {
        util::MutexLock lock(&st->mu);
        value = Encode(st->instance, new_lease);
      }
      auto put = writer->PutIfAbsent(st->key, value, new_lease);
      if (!put.ok()) {
        result = put.status();
      } else if ((put_revision = *put) == 0) {
        result = absl::AlreadyExistsError(
            absl::StrCat(st->key, " was registered by someone else while our lease was lost"));
      }
      if (!result.ok()) (void)leases->Revoke(new_lease);
    }
    if (result.ok()) {
      {
        util::MutexLock lock(&st->mu);
        st->lease_id = new_lease;
        st->instance.lease_id = new_lease;
        st->mod_revision = put_revision;
        st->reregistering = false;
      }
      // Tracked before write_mu is released: CloseOne takes write_mu before it marks the
      // registration closed and reads the lease to untrack, so it either sees this lease (and
      // removes it) or ran first (closed, checked above). Tracking after the release let a
      // Close in between revoke the lease and return, and the keeper then kept the revoked
      // lease until its next keepalive answer. Add only posts to the loop: no blocking here.
      Track(st, new_lease);
    }
  }
  if (result.ok()) {
    SPDLOG_LOGGER_INFO(logger, "instance {} re-registered with lease {:x}", st->instance_id,
                       new_lease);
    Emit(RegistrationEventType::kReRegistered, *st, new_lease);
    return;
  }
  absl::Duration delay = backoff.Next();
  SPDLOG_LOGGER_WARN(logger, "re-registering instance {} failed: {}; retry in {}", st->instance_id,
                     std::string(result.message()), absl::FormatDuration(delay));
  if (backoff.attempt() == 1 || backoff.attempt() % 10 == 0) {
    Emit(RegistrationEventType::kError, *st, 0, result);
  }
  backend->background().PostAfter(delay, [self = weak_from_this(), weak, backoff] {
    if (auto impl = self.lock()) impl->ReRegister(weak, backoff);
  });
}

// Writes the current value under the current lease. Caller holds st.write_mu.
absl::Status Registrar::Impl::WriteValue(RegistrationState& st, bool owns_status) {
  // Txn: put only if the key is as we last wrote it. When someone else wrote it meanwhile,
  // keep their status/customState (unless we are changing those ourselves) and write again.
  for (int attempt = 0; attempt < 3; ++attempt) {
    std::string key, value;
    int64_t lease = 0, expected = 0;
    {
      util::MutexLock lock(&st.mu);
      if (st.closed) return absl::FailedPreconditionError("registration is closed");
      if (st.reregistering) {
        return absl::UnavailableError(
            "lease lost; re-registration in progress (the new state will be written with it)");
      }
      key = st.key;
      lease = st.lease_id;
      expected = st.mod_revision;
      value = Encode(st.instance, st.lease_id);
      st.perf_dirty = false;
      st.last_perf_write = util::MonoNow();
    }
    auto resp = writer->PutIfUnchanged(key, value, lease, expected);
    if (!resp.ok()) {
      if (absl::IsNotFound(resp.status())) {
        // The lease is gone; the keeper will see TTL 0 and re-register with this state.
        return absl::FailedPreconditionError(
            absl::StrCat("lease of ", st.instance_id, " is gone; re-registering"));
      }
      return resp.status();
    }
    util::MutexLock lock(&st.mu);
    if (resp->written) {
      st.mod_revision = resp->revision;
      return absl::OkStatus();
    }
    if (!resp->current.has_value()) {
      st.mod_revision = 0;  // deleted under us while our lease lives: put it back
      continue;
    }
    st.mod_revision = resp->current->mod_revision;
    auto theirs = DecodeInstance(resp->current->value);
    if (!owns_status && theirs.ok() && theirs->instance_id == st.instance_id) {
      if (theirs->status != st.instance.status ||
          theirs->custom_state != st.instance.custom_state) {
        SPDLOG_LOGGER_INFO(logger, "instance {} was set to {} ({}) from outside; keeping it",
                           st.instance_id, ToString(theirs->status), theirs->custom_state);
      }
      st.instance.status = theirs->status;
      st.instance.custom_state = theirs->custom_state;
    }
  }
  return absl::AbortedError(absl::StrCat("value of ", st.instance_id, " keeps changing under us"));
}

void Registrar::Impl::FlushPerformance(const std::shared_ptr<RegistrationState>& st) {
  absl::Status s;
  {
    util::MutexLock wlock(&st->write_mu);
    {
      util::MutexLock lock(&st->mu);
      st->perf_flush_scheduled = false;
      if (!st->perf_dirty || st->closed) return;
    }
    s = WriteValue(*st, /*owns_status=*/false);
  }
  if (!s.ok() && !absl::IsFailedPrecondition(s)) {
    SPDLOG_LOGGER_WARN(logger, "performance update of {} failed: {}", st->instance_id,
                       std::string(s.message()));
    Emit(RegistrationEventType::kError, *st, 0, s);
  }
}

absl::Status Registrar::Impl::CloseOne(RegistrationState& st, absl::Duration drain,
                                       bool set_status) {
  int64_t lease = 0;
  {
    util::MutexLock wlock(&st.write_mu);
    if (set_status) {
      bool write = false;
      {
        util::MutexLock lock(&st.mu);
        if (st.closed) return absl::OkStatus();
        if (st.instance.status != InstanceStatus::kShuttingDown &&
            IsValidTransition(st.instance.status, InstanceStatus::kShuttingDown)) {
          st.instance.status = InstanceStatus::kShuttingDown;
          write = true;
        }
      }
      if (write) (void)WriteValue(st, /*owns_status=*/true);
    }
  }
  if (drain > absl::ZeroDuration()) absl::SleepFor(drain);
  {
    util::MutexLock wlock(&st.write_mu);
    util::MutexLock lock(&st.mu);
    if (st.closed) return absl::OkStatus();
    st.closed = true;
    lease = st.lease_id;
  }
  leases->Forget(lease);
  {
    util::MutexLock lock(&mu);
    registrations.erase(st.instance_id);
  }
  absl::Status r = leases->Revoke(lease);
  if (!r.ok() && !absl::IsNotFound(r)) {
    SPDLOG_LOGGER_WARN(logger, "revoking lease {:x} of {} failed: {}", lease, st.instance_id,
                       std::string(r.message()));
    return r;
  }
  SPDLOG_LOGGER_INFO(logger, "instance {} deregistered (lease {:x} revoked)", st.instance_id,
                     lease);
  return absl::OkStatus();
}

}  // namespace discovery
