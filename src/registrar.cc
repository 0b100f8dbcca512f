// The Registration and Registrar API (see registrar_impl.h for the layout).
#include "discovery/registrar.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "registrar_impl.h"

namespace discovery {

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
  impl->backend->background().PostAfter(delay, [weak_impl, weak] {
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
  impl->backend = impl->connection->backend();
  impl->leases = impl->backend->NewLeaseHolder();
  impl->writer = impl->backend->NewInstanceWriter(absl::ZeroDuration());
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
  impl_->backend->background().RunSync([] {});
}

size_t Registrar::size() const {
  util::MutexLock lock(&impl_->mu);
  return impl_->registrations.size();
}

const std::shared_ptr<Connection>& Registrar::connection() const { return impl_->connection; }

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

}  // namespace discovery
