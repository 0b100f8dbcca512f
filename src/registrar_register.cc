// Register, RegisterAsync and RegisterMany.
#include <condition_variable>
#include <mutex>
#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "registrar_impl.h"

namespace discovery {

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
  st->backend = backend;
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
  // (The level is checked first: a registration pays nothing for a line nobody reads.)
  const spdlog::level::level_enum level = log_info ? spdlog::level::info : spdlog::level::debug;
  if (logger->should_log(level)) {
    logger->log(level, "registered {} with lease {:x} (ttl {})", st->key, lease,
                absl::FormatDuration(st->ttl));
  }
  Emit(RegistrationEventType::kRegistered, *st, lease);
  return Registration(st);
}

void Registrar::Impl::StartRegister(std::shared_ptr<RegistrationState> st, Instance instance,
                                    bool log_info,
                                    std::function<void(absl::StatusOr<Registration>)> done) {
  auto self = shared_from_this();
  const absl::Duration ttl = st->ttl;  // before `st` is moved into the lambda
  leases->GrantAsync(ttl, [self, st = std::move(st), instance = std::move(instance), log_info,
                           done = std::move(done)](absl::StatusOr<int64_t> granted) mutable {
    if (!granted.ok()) return done(granted.status());
    const int64_t lease = *granted;
    std::string value = Encode(instance, lease);
    const std::string key = st->key;
    self->writer->PutIfAbsentAsync(
        key, value, lease,
        [self, st = std::move(st), instance = std::move(instance), lease, log_info,
         done = std::move(done)](absl::StatusOr<int64_t> put) mutable {
          if (put.ok() && *put != 0) {
            return done(self->Commit(st, std::move(instance), lease, *put, log_info));
          }
          absl::Status error =
              put.ok() ? absl::AlreadyExistsError(absl::StrCat(st->key, " already exists"))
                       : put.status();
          self->leases->RevokeAsync(lease,
                                    [error, done = std::move(done)](absl::Status) { done(error); });
        });
  });
}

absl::StatusOr<Registration> Registrar::Register(Instance instance, RegistrationOptions options) {
  auto st = impl_->Prepare(instance, options);
  if (!st.ok()) return st.status();
  auto granted = impl_->leases->Grant((*st)->ttl);
  if (!granted.ok()) return granted.status();
  int64_t lease = *granted;
  std::string value = Encode(instance, lease);
  auto put = impl_->writer->PutIfAbsent((*st)->key, value, lease);
  if (!put.ok() || *put == 0) {
    (void)impl_->leases->Revoke(lease);
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
    impl->backend->background().Post(
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

}  // namespace discovery
