#include "discovery/registrar.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <csignal>
#include <map>
#include <mutex>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "etcd/client.h"
#include "etcd/lease_keeper.h"
#include "spdlog/spdlog.h"
#include "util/clock.h"
#include "util/logging.h"
#include "util/sync.h"

namespace discovery {

namespace pb = ::etcdserverpb;

std::string_view ToString(RegistrationEventType type) {
  switch (type) {
    case RegistrationEventType::kRegistered:
      return "registered";
    case RegistrationEventType::kLeaseAtRisk:
      return "lease_at_risk";
    case RegistrationEventType::kLeaseRecovered:
      return "lease_recovered";
    case RegistrationEventType::kLeaseLost:
      return "lease_lost";
    case RegistrationEventType::kReRegistered:
      return "re_registered";
    case RegistrationEventType::kError:
      return "error";
  }
  return "unknown";
}

// Shared between the Registration handle, the Registrar and background tasks.
struct RegistrationState {
  std::weak_ptr<Registrar::Impl> registrar;
  std::shared_ptr<etcd::Client> client;
  std::string key;
  std::string instance_id;
  absl::Duration ttl;
  absl::Duration interval;

  // Serialises writes to etcd for this registration (held during the etcd call).
  util::Mutex write_mu;
  // Guards the fields below (never held during an etcd call).
  mutable util::Mutex mu;
  Instance instance ABSL_GUARDED_BY(mu);
  int64_t lease_id ABSL_GUARDED_BY(mu) = 0;
  bool closed ABSL_GUARDED_BY(mu) = false;
  bool reregistering ABSL_GUARDED_BY(mu) = false;
  // Performance coalescing.
  absl::Time last_perf_write ABSL_GUARDED_BY(mu) = absl::InfinitePast();
  bool perf_flush_scheduled ABSL_GUARDED_BY(mu) = false;
  bool perf_dirty ABSL_GUARDED_BY(mu) = false;
  // mod_revision of the key as we last wrote it; a write finding another one means someone
  // else (an operator's `discoveryctl set-status`, the gateway) changed the value meanwhile.
  int64_t mod_revision ABSL_GUARDED_BY(mu) = 0;
};

struct Registrar::Impl : std::enable_shared_from_this<Registrar::Impl> {
  std::shared_ptr<Connection> connection;
  std::shared_ptr<etcd::Client> client;
  std::function<void(const RegistrationEvent&)> on_event;
  std::shared_ptr<spdlog::logger> logger;

  util::Mutex mu;
  std::map<std::string, std::weak_ptr<RegistrationState>> registrations ABSL_GUARDED_BY(mu);

  void Emit(RegistrationEventType type, const RegistrationState& st, int64_t lease,
            absl::Status status = absl::OkStatus()) {
    if (!on_event) return;
    RegistrationEvent ev{type, st.instance_id, lease, std::move(status)};
    client->background().Post([cb = on_event, ev] { cb(ev); });
  }

  // Async registrations in flight (RegisterAsync, RegisterMany); ~Registrar waits for none.
  std::mutex async_mu;
  std::condition_variable async_cv;
  int async_ops = 0;  // guarded by async_mu
  void AsyncBegin() {
    std::lock_guard lock(async_mu);
    ++async_ops;
  }
  void AsyncEnd() {
    std::lock_guard lock(async_mu);
    if (--async_ops == 0) async_cv.notify_all();
  }

  // Register's checks before any etcd call: options, instance id (generated when empty),
  // validation, startedAt, duplicate id in this registrar. The state of the registration-to-be.
  absl::StatusOr<std::shared_ptr<RegistrationState>> Prepare(Instance& instance,
                                                             const RegistrationOptions& options);
  // After the guarded Txn put the key: records the registration, keeps its lease alive,
  // logs and emits kRegistered.
  Registration Commit(const std::shared_ptr<RegistrationState>& st, Instance instance,
                      int64_t lease, int64_t revision, bool log_info);
  // LeaseGrant -> guarded Txn -> Commit (or LeaseRevoke on failure), pipelined on gRPC's
  // callback API; `done` runs on the gRPC thread of the last call.
  void StartRegister(std::shared_ptr<RegistrationState> st, Instance instance, bool log_info,
                     std::function<void(absl::StatusOr<Registration>)> done);

  void Track(const std::shared_ptr<RegistrationState>& st, int64_t lease);
  void OnLeaseLost(const std::shared_ptr<RegistrationState>& st, int64_t lease);
  void ReRegister(std::weak_ptr<RegistrationState> weak, util::Backoff backoff);
  // Writes the current state under the current lease. `owns_status`: the caller is changing
  // status/customState itself; otherwise an operator's newer status/customState is kept.
  absl::Status WriteValue(RegistrationState& st, bool owns_status);
  void FlushPerformance(const std::shared_ptr<RegistrationState>& st);
  absl::Status CloseOne(RegistrationState& st, absl::Duration drain, bool set_status);
};

namespace {

std::string Encode(Instance& in, int64_t lease) {
  in.lease_id = lease;
  in.updated_at = absl::Now();
  return EncodeInstance(in);
}

// Txn: put `value` at `key` under `lease` only when the key does not exist.
pb::TxnRequest PutIfAbsentTxn(const std::string& key, const std::string& value, int64_t lease) {
  pb::TxnRequest txn;
  auto* cmp = txn.add_compare();
  cmp->set_key(key);
  cmp->set_target(pb::Compare::CREATE);
  cmp->set_result(pb::Compare::EQUAL);
  cmp->set_create_revision(0);
  auto* put = txn.add_success()->mutable_request_put();
  put->set_key(key);
  put->set_value(value);
  put->set_lease(lease);
  auto* get = txn.add_failure()->mutable_request_range();
  get->set_key(key);
  return txn;
}

// The key's mod_revision when PutIfAbsentTxn wrote it; 0 when the key exists with another lease.
absl::StatusOr<int64_t> PutIfAbsentResult(const absl::StatusOr<pb::TxnResponse>& resp,
                                          int64_t lease) {
  if (!resp.ok()) return resp.status();
  if (resp->succeeded()) return resp->header().revision();
  // A retried Txn whose first attempt was applied finds our own key: that is success.
  if (resp->responses_size() > 0 && resp->responses(0).response_range().kvs_size() > 0 &&
      resp->responses(0).response_range().kvs(0).lease() == lease) {
    return resp->responses(0).response_range().kvs(0).mod_revision();
  }
  return 0;
}

absl::StatusOr<int64_t> PutIfAbsent(etcd::Client& client, const std::string& key,
                                    const std::string& value, int64_t lease) {
  return PutIfAbsentResult(client.Txn(PutIfAbsentTxn(key, value, lease)), lease);
}

}  // namespace

void Registrar::Impl::Track(const std::shared_ptr<RegistrationState>& st, int64_t lease) {
  std::weak_ptr<RegistrationState> weak = st;
  std::weak_ptr<Impl> self = shared_from_this();
  client->keeper().Add(lease, st->ttl, st->interval,
                       [weak, self](const etcd::LeaseKeeper::Event& ev) {
                         auto s = weak.lock();
                         auto impl = self.lock();
                         if (s == nullptr || impl == nullptr) return;
                         switch (ev.type) {
                           case etcd::LeaseKeeper::EventType::kAtRisk:
                             impl->Emit(RegistrationEventType::kLeaseAtRisk, *s, ev.lease_id);
                             break;
                           case etcd::LeaseKeeper::EventType::kAlive:
                             impl->Emit(RegistrationEventType::kLeaseRecovered, *s, ev.lease_id);
                             break;
                           case etcd::LeaseKeeper::EventType::kLost:
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
  client->background().Post([self = weak_from_this(), weak] {
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
    auto granted = client->GrantOwnLease(absl::ToInt64Seconds(st->ttl));
    if (!granted.ok()) {
      result = granted.status();
    } else {
      new_lease = granted->id();
      std::string value;
      {
        util::MutexLock lock(&st->mu);
        value = Encode(st->instance, new_lease);
      }
      auto put = PutIfAbsent(*client, st->key, value, new_lease);
      if (!put.ok()) {
        result = put.status();
      } else if ((put_revision = *put) == 0) {
        result = absl::AlreadyExistsError(
            absl::StrCat(st->key, " was registered by someone else while our lease was lost"));
      }
      if (!result.ok()) {
        pb::LeaseRevokeRequest revoke;
        revoke.set_id(new_lease);
        (void)client->LeaseRevoke(revoke);
      }
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
  client->background().PostAfter(delay, [self = weak_from_this(), weak, backoff] {
    if (auto impl = self.lock()) impl->ReRegister(weak, backoff);
  });
}

// Writes the current value under the current lease. Caller holds st.write_mu.
absl::Status Registrar::Impl::WriteValue(RegistrationState& st, bool owns_status) {
  // Txn: put only if the key is as we last wrote it. When someone else wrote it meanwhile,
  // keep their status/customState (unless we are changing those ourselves) and write again.
  for (int attempt = 0; attempt < 3; ++attempt) {
    pb::TxnRequest txn;
    {
      util::MutexLock lock(&st.mu);
      if (st.closed) return absl::FailedPreconditionError("registration is closed");
      if (st.reregistering) {
        return absl::UnavailableError(
            "lease lost; re-registration in progress (the new state will be written with it)");
      }
      auto* cmp = txn.add_compare();
      cmp->set_key(st.key);
      cmp->set_target(pb::Compare::MOD);
      cmp->set_result(pb::Compare::EQUAL);
      cmp->set_mod_revision(st.mod_revision);
      auto* put = txn.add_success()->mutable_request_put();
      put->set_key(st.key);
      put->set_lease(st.lease_id);
      put->set_value(Encode(st.instance, st.lease_id));
      txn.add_failure()->mutable_request_range()->set_key(st.key);
      st.perf_dirty = false;
      st.last_perf_write = util::MonoNow();
    }
    auto resp = client->Txn(txn);
    if (!resp.ok()) {
      if (absl::IsNotFound(resp.status())) {
        // The lease is gone; the keeper will see TTL 0 and re-register with this state.
        return absl::FailedPreconditionError(
            absl::StrCat("lease of ", st.instance_id, " is gone; re-registering"));
      }
      return resp.status();
    }
    util::MutexLock lock(&st.mu);
    if (resp->succeeded()) {
      st.mod_revision = resp->header().revision();
      return absl::OkStatus();
    }
    const auto& range = resp->responses(0).response_range();
    if (range.kvs_size() == 0) {
      st.mod_revision = 0;  // deleted under us while our lease lives: put it back
      continue;
    }
    const auto& kv = range.kvs(0);
    st.mod_revision = kv.mod_revision();
    auto theirs = DecodeInstance(kv.value());
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
  client->keeper().Remove(lease);
  {
    util::MutexLock lock(&mu);
    registrations.erase(st.instance_id);
  }
  pb::LeaseRevokeRequest revoke;
  revoke.set_id(lease);
  auto r = client->LeaseRevoke(revoke);
  if (!r.ok() && !absl::IsNotFound(r.status())) {
    SPDLOG_LOGGER_WARN(logger, "revoking lease {:x} of {} failed: {}", lease, st.instance_id,
                       std::string(r.status().message()));
    return r.status();
  }
  SPDLOG_LOGGER_INFO(logger, "instance {} deregistered (lease {:x} revoked)", st.instance_id,
                     lease);
  return absl::OkStatus();
}

// ---- Registration ----

Registration::Registration(std::shared_ptr<RegistrationState> state) : state_(std::move(state)) {}
Registration::Registration(Registration&&) noexcept = default;
Registration& Registration::operator=(Registration&& other) noexcept {
  if (this != &other) {
    if (state_ != nullptr) (void)Close();
    state_ = std::move(other.state_);
  }
  return *this;
}
Registration::~Registration() {
  if (state_ != nullptr) (void)Close();
}

const std::string& Registration::instance_id() const { return state_->instance_id; }
std::string Registration::key() const { return state_->key; }
int64_t Registration::lease_id() const {
  util::MutexLock lock(&state_->mu);
  return state_->lease_id;
}
Instance Registration::instance() const {
  util::MutexLock lock(&state_->mu);
  return state_->instance;
}
bool Registration::closed() const {
  if (state_ == nullptr) return true;
  util::MutexLock lock(&state_->mu);
  return state_->closed;
}

namespace {

// The preamble and write shared by SetStatus and UpdateMetadata: applies `edit` to the
// instance under the state's lock (an error from it aborts), then writes the value.
absl::Status EditAndWrite(const std::shared_ptr<RegistrationState>& st, bool owns_status,
                          const std::function<absl::Status(Instance&)>& edit) {
  if (st == nullptr) return absl::FailedPreconditionError("moved-from registration");
  auto impl = st->registrar.lock();
  if (impl == nullptr) return absl::FailedPreconditionError("registrar is gone");
  util::MutexLock wlock(&st->write_mu);
  {
    util::MutexLock lock(&st->mu);
    if (st->closed) return absl::FailedPreconditionError("registration is closed");
    if (absl::Status s = edit(st->instance); !s.ok()) return s;
  }
  return impl->WriteValue(*st, owns_status);
}

}  // namespace

absl::Status Registration::SetStatus(InstanceStatus status,
                                     std::optional<std::string> custom_state) {
  return EditAndWrite(state_, /*owns_status=*/true, [&](Instance& in) {
    if (!IsValidTransition(in.status, status)) {
      return absl::InvalidArgumentError(
          absl::StrCat("status transition ", std::string(ToString(in.status)), " -> ",
                       std::string(ToString(status)), " is not allowed"));
    }
    in.status = status;
    if (custom_state.has_value()) in.custom_state = *custom_state;
    return absl::OkStatus();
  });
}

absl::Status Registration::UpdateMetadata(const std::map<std::string, std::string>& meta) {
  return EditAndWrite(state_, /*owns_status=*/false, [&](Instance& in) {
    for (const auto& [k, v] : meta) {
      if (v.empty()) {
        in.meta.erase(k);
      } else {
        in.meta[k] = v;
      }
    }
    return absl::OkStatus();
  });
}

absl::Status Registration::UpdatePerformance(nlohmann::json performance) {
  if (state_ == nullptr) return absl::FailedPreconditionError("moved-from registration");
  if (!performance.is_object()) {
    return absl::InvalidArgumentError("field \"performance\": expected a JSON object");
  }
  auto impl = state_->registrar.lock();
  if (impl == nullptr) return absl::FailedPreconditionError("registrar is gone");
  absl::Duration delay;
  {
    util::MutexLock lock(&state_->mu);
    if (state_->closed) return absl::FailedPreconditionError("registration is closed");
    state_->instance.performance = std::move(performance);
    state_->perf_dirty = true;
    if (state_->perf_flush_scheduled) return absl::OkStatus();
    state_->perf_flush_scheduled = true;
    delay = std::max(absl::ZeroDuration(),
                     state_->last_perf_write + absl::Seconds(1) - util::MonoNow());
  }
  std::weak_ptr<RegistrationState> weak = state_;
  std::weak_ptr<Registrar::Impl> weak_impl = impl;
  impl->client->background().PostAfter(delay, [weak_impl, weak] {
    auto st = weak.lock();
    auto impl = weak_impl.lock();
    if (st != nullptr && impl != nullptr) impl->FlushPerformance(st);
  });
  return absl::OkStatus();
}

absl::Status Registration::Close(absl::Duration drain) {
  if (state_ == nullptr) return absl::OkStatus();
  auto impl = state_->registrar.lock();
  if (impl == nullptr) {
    util::MutexLock lock(&state_->mu);
    state_->closed = true;
    return absl::OkStatus();
  }
  return impl->CloseOne(*state_, drain, /*set_status=*/true);
}

// ---- Registrar ----

absl::StatusOr<std::unique_ptr<Registrar>> Registrar::Create(RegistrarOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->connection = options.connection;
  if (impl->connection == nullptr) {
    auto conn = Connection::Create(options.etcd);
    if (!conn.ok()) return conn.status();
    impl->connection = *std::move(conn);
  }
  impl->client = impl->connection->client();
  impl->on_event = std::move(options.on_event);
  impl->logger = util::ComponentLogger(options.logger, "discovery.registrar");
  return std::unique_ptr<Registrar>(new Registrar(std::move(impl)));
}

Registrar::Registrar(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Registrar::~Registrar() {
  {
    std::unique_lock lock(impl_->async_mu);
    impl_->async_cv.wait(lock, [&] { return impl_->async_ops == 0; });
  }
  std::vector<std::shared_ptr<RegistrationState>> open;
  {
    util::MutexLock lock(&impl_->mu);
    for (auto& [id, weak] : impl_->registrations) {
      if (auto st = weak.lock()) open.push_back(st);
    }
  }
  for (auto& st : open) (void)impl_->CloseOne(*st, absl::ZeroDuration(), /*set_status=*/false);
  // Drain pending background work that references impl_ before it goes away.
  impl_->client->background().RunSync([] {});
}

size_t Registrar::size() const {
  util::MutexLock lock(&impl_->mu);
  return impl_->registrations.size();
}

const std::shared_ptr<Connection>& Registrar::connection() const { return impl_->connection; }

absl::StatusOr<std::shared_ptr<RegistrationState>> Registrar::Impl::Prepare(
    Instance& instance, const RegistrationOptions& options) {
  if (options.ttl < absl::Seconds(1)) {
    return absl::InvalidArgumentError("ttl must be at least 1 second");
  }
  if (options.prefix.empty() || options.prefix.back() != '/') {
    return absl::InvalidArgumentError("prefix must end with '/'");
  }
  if (instance.instance_id.empty()) instance.instance_id = NewUlid();
  if (absl::Status s = ValidateInstance(instance); !s.ok()) return s;
  absl::Time now = absl::Now();
  if (instance.started_at == absl::InfinitePast()) instance.started_at = now;

  auto st = std::make_shared<RegistrationState>();
  st->registrar = weak_from_this();
  st->client = client;
  st->instance_id = instance.instance_id;
  st->key = absl::StrCat(options.prefix, instance.type, "/", instance.instance_id);
  st->ttl = absl::Seconds(std::max<int64_t>(1, absl::ToInt64Seconds(options.ttl)));
  st->interval =
      options.keepalive_interval > absl::ZeroDuration() ? options.keepalive_interval : st->ttl / 3;
  util::MutexLock lock(&mu);
  if (registrations.count(instance.instance_id) > 0) {
    return absl::AlreadyExistsError(
        absl::StrCat("instance ", instance.instance_id, " is already registered here"));
  }
  return st;
}

Registration Registrar::Impl::Commit(const std::shared_ptr<RegistrationState>& st,
                                     Instance instance, int64_t lease, int64_t revision,
                                     bool log_info) {
  {
    util::MutexLock lock(&st->mu);
    st->instance = std::move(instance);
    st->lease_id = lease;
    st->mod_revision = revision;
    st->last_perf_write = util::MonoNow();
  }
  {
    util::MutexLock lock(&mu);
    registrations[st->instance_id] = st;
  }
  Track(st, lease);
  if (log_info) {
    SPDLOG_LOGGER_INFO(logger, "registered {} with lease {:x} (ttl {})", st->key, lease,
                       absl::FormatDuration(st->ttl));
  } else {
    SPDLOG_LOGGER_DEBUG(logger, "registered {} with lease {:x} (ttl {})", st->key, lease,
                        absl::FormatDuration(st->ttl));
  }
  Emit(RegistrationEventType::kRegistered, *st, lease);
  return Registration(st);
}

void Registrar::Impl::StartRegister(std::shared_ptr<RegistrationState> st, Instance instance,
                                    bool log_info,
                                    std::function<void(absl::StatusOr<Registration>)> done) {
  auto self = shared_from_this();
  const int64_t ttl = absl::ToInt64Seconds(st->ttl);  // before `st` is moved into the lambda
  client->GrantOwnLeaseAsync(ttl, [self, st = std::move(st), instance = std::move(instance),
                                   log_info, done = std::move(done)](
                                      absl::StatusOr<pb::LeaseGrantResponse> granted) mutable {
    if (!granted.ok()) return done(granted.status());
    const int64_t lease = granted->id();
    std::string value = Encode(instance, lease);
    pb::TxnRequest txn = PutIfAbsentTxn(st->key, value, lease);
    self->client->TxnAsync(
        std::move(txn), [self, st = std::move(st), instance = std::move(instance), lease, log_info,
                         done = std::move(done)](absl::StatusOr<pb::TxnResponse> resp) mutable {
          absl::StatusOr<int64_t> put = PutIfAbsentResult(resp, lease);
          if (put.ok() && *put != 0) {
            return done(self->Commit(st, std::move(instance), lease, *put, log_info));
          }
          absl::Status error =
              put.ok() ? absl::AlreadyExistsError(absl::StrCat(st->key, " already exists"))
                       : put.status();
          pb::LeaseRevokeRequest revoke;
          revoke.set_id(lease);
          self->client->LeaseRevokeAsync(
              revoke, [error, done = std::move(done)](absl::StatusOr<pb::LeaseRevokeResponse>) {
                done(error);
              });
        });
  });
}

absl::StatusOr<Registration> Registrar::Register(Instance instance, RegistrationOptions options) {
  auto st = impl_->Prepare(instance, options);
  if (!st.ok()) return st.status();
  auto granted = impl_->client->GrantOwnLease(absl::ToInt64Seconds((*st)->ttl));
  if (!granted.ok()) return granted.status();
  int64_t lease = granted->id();
  std::string value = Encode(instance, lease);
  auto put = PutIfAbsent(*impl_->client, (*st)->key, value, lease);
  if (!put.ok() || *put == 0) {
    pb::LeaseRevokeRequest revoke;
    revoke.set_id(lease);
    (void)impl_->client->LeaseRevoke(revoke);
    if (!put.ok()) return put.status();
    return absl::AlreadyExistsError(absl::StrCat((*st)->key, " already exists"));
  }
  return impl_->Commit(*st, std::move(instance), lease, *put, /*log_info=*/true);
}

void Registrar::RegisterAsync(Instance instance, RegistrationOptions options,
                              std::function<void(absl::StatusOr<Registration>)> done) {
  std::shared_ptr<Impl> impl = impl_;
  impl->AsyncBegin();
  auto finish = [impl, done = std::move(done)](absl::StatusOr<Registration> r) mutable {
    done(std::move(r));
    impl->AsyncEnd();
  };
  auto st = impl->Prepare(instance, options);
  if (!st.ok()) {
    impl->client->background().Post(
        [finish = std::move(finish), s = st.status()]() mutable { finish(s); });
    return;
  }
  impl->StartRegister(*std::move(st), std::move(instance), /*log_info=*/true, std::move(finish));
}

namespace {

constexpr size_t kMaxInFlight = 64;

// One RegisterMany call: the caller waits on `cv` until every element has its result.
struct Batch : std::enable_shared_from_this<Batch> {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<Instance> instances;
  RegistrationOptions options;
  std::vector<bool> repeated;  // id seen earlier in the batch
  std::vector<absl::StatusOr<Registration>> results;
  size_t next = 0;       // guarded by mu
  size_t in_flight = 0;  // guarded by mu
  size_t finished = 0;   // guarded by mu
  // Set by the first element that found etcd unavailable (after its own retries up to the
  // call timeout): elements not started yet fail at once instead of each waiting that long.
  absl::Status unavailable;  // guarded by mu
  // Starts registrations while fewer than kMaxInFlight run; an element that fails before any
  // etcd call gets its result at once. Called by the caller, then after each completion.
  std::function<void()> pump;
};

}  // namespace

std::vector<absl::StatusOr<Registration>> Registrar::RegisterMany(std::vector<Instance> instances,
                                                                  RegistrationOptions options) {
  auto b = std::make_shared<Batch>();
  const size_t n = instances.size();
  b->instances = std::move(instances);
  b->options = std::move(options);
  b->results.resize(n);
  b->repeated.resize(n, false);
  std::set<std::string> seen;
  for (size_t i = 0; i < n; ++i) {
    const std::string& id = b->instances[i].instance_id;
    if (!id.empty() && !seen.insert(id).second) b->repeated[i] = true;
  }
  if (n == 0) return {};
  std::shared_ptr<Impl> impl = impl_;
  impl->AsyncBegin();
  const int64_t t0 = absl::ToUnixNanos(util::MonoNow());

  auto complete = [b = b.get(), n](size_t i, absl::StatusOr<Registration> r) {
    std::lock_guard lock(b->mu);
    if (absl::IsUnavailable(r.status()) && b->unavailable.ok()) b->unavailable = r.status();
    b->results[i] = std::move(r);
    --b->in_flight;
    if (++b->finished == n) b->cv.notify_all();
  };
  // Captures the batch by raw pointer (no cycle): every caller of pump holds `b`.
  b->pump = [b = b.get(), n, impl, complete]() {
    for (;;) {
      size_t i = 0;
      absl::Status unavailable;
      {
        std::lock_guard lock(b->mu);
        if (b->next >= n || b->in_flight >= kMaxInFlight) return;
        i = b->next++;
        ++b->in_flight;
        unavailable = b->unavailable;
      }
      if (!unavailable.ok()) {
        complete(i, absl::UnavailableError(absl::StrCat("not attempted: ", unavailable.message())));
        continue;
      }
      Instance& in = b->instances[i];
      if (b->repeated[i]) {
        complete(i, absl::AlreadyExistsError(absl::StrCat("instance ", in.instance_id,
                                                          " appears more than once in the batch")));
        continue;
      }
      auto st = impl->Prepare(in, b->options);
      if (!st.ok()) {
        complete(i, st.status());
        continue;
      }
      impl->StartRegister(
          *std::move(st), std::move(in), /*log_info=*/false,
          [complete, i, keep = b->shared_from_this()](absl::StatusOr<Registration> r) {
            complete(i, std::move(r));
            keep->pump();
          });
    }
  };
  b->pump();
  std::vector<absl::StatusOr<Registration>> out;
  {
    std::unique_lock lock(b->mu);
    b->cv.wait(lock, [&] { return b->finished == n; });
    out = std::move(b->results);
  }
  impl->AsyncEnd();
  size_t ok = 0;
  for (const auto& r : out) ok += r.ok();
  SPDLOG_LOGGER_INFO(
      impl->logger, "registered {} of {} instances in {}", ok, n,
      absl::FormatDuration(absl::Nanoseconds(absl::ToUnixNanos(util::MonoNow()) - t0)));
  return out;
}

void Registrar::ShutdownAll(absl::Duration drain) {
  std::vector<std::shared_ptr<RegistrationState>> open;
  {
    util::MutexLock lock(&impl_->mu);
    for (auto& [id, weak] : impl_->registrations) {
      if (auto st = weak.lock()) open.push_back(st);
    }
  }
  // Everyone to shutting_down first, one shared drain, then revoke all.
  for (auto& st : open) {
    util::MutexLock wlock(&st->write_mu);
    bool write = false;
    {
      util::MutexLock lock(&st->mu);
      if (!st->closed && st->instance.status != InstanceStatus::kShuttingDown &&
          IsValidTransition(st->instance.status, InstanceStatus::kShuttingDown)) {
        st->instance.status = InstanceStatus::kShuttingDown;
        write = true;
      }
    }
    if (write) (void)impl_->WriteValue(*st, /*owns_status=*/true);
  }
  if (drain > absl::ZeroDuration()) absl::SleepFor(drain);
  for (auto& st : open) (void)impl_->CloseOne(*st, absl::ZeroDuration(), /*set_status=*/false);
}

// ---- ShutdownSignal ----

namespace {
std::atomic<int> g_signal{0};
int g_pipe[2] = {-1, -1};

void OnSignal(int sig) {
  g_signal.store(sig);
  if (g_pipe[1] >= 0) {
    char c = 1;
    ssize_t n = write(g_pipe[1], &c, 1);
    (void)n;
  }
}
}  // namespace

absl::Status ShutdownSignal::Install() {
  if (g_pipe[0] < 0) {
    if (pipe2(g_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
      return absl::InternalError("pipe2 failed");
    }
  }
  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGINT, &sa, nullptr) != 0 || sigaction(SIGTERM, &sa, nullptr) != 0) {
    return absl::InternalError("sigaction failed");
  }
  return absl::OkStatus();
}

bool ShutdownSignal::Received() { return g_signal.load() != 0; }
int ShutdownSignal::signal_number() { return g_signal.load(); }

bool ShutdownSignal::Wait(absl::Duration timeout) {
  if (Received()) return true;
  if (g_pipe[0] < 0) {
    absl::SleepFor(timeout);
    return Received();
  }
  struct pollfd pfd = {g_pipe[0], POLLIN, 0};
  int ms = timeout == absl::InfiniteDuration()
               ? -1
               : static_cast<int>(absl::ToInt64Milliseconds(timeout));
  (void)poll(&pfd, 1, ms);
  return Received();
}

}  // namespace discovery
