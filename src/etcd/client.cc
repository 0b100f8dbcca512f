#include "etcd/client.h"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <mutex>
#include <sstream>

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "etcd/lease_keeper.h"
#include "etcd/unary_policy.h"
#include "etcd/watch_hub.h"
#include "spdlog/spdlog.h"
#include "util/logging.h"

namespace discovery {

std::vector<std::string> SplitEndpoints(const std::string& csv) {
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(csv, ',')) {
    part = absl::StripAsciiWhitespace(part);
    if (!part.empty()) out.emplace_back(part);
  }
  return out;
}

EtcdOptions EtcdOptions::FromEnv() {
  EtcdOptions o;
  auto env = [](const char* name) -> std::string {
    const char* v = std::getenv(name);
    return v == nullptr ? std::string() : std::string(v);
  };
  if (std::string e = env("ETCD_ENDPOINTS"); !e.empty()) o.endpoints = SplitEndpoints(e);
  if (std::string v = env("ETCD_USER"); !v.empty()) o.user = v;
  if (std::string v = env("ETCD_PASSWORD"); !v.empty()) o.password = v;
  if (std::string v = env("ETCD_CACERT"); !v.empty()) o.ca_file = v;
  if (std::string v = env("ETCD_CERT"); !v.empty()) o.cert_file = v;
  if (std::string v = env("ETCD_KEY"); !v.empty()) o.key_file = v;
  return o;
}

namespace etcd {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read ", what, " ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

absl::StatusOr<Endpoint> ParseEndpoint(const std::string& url) {
  Endpoint ep;
  ep.url = url;
  absl::string_view rest = url;
  if (absl::ConsumePrefix(&rest, "https://")) {
    ep.tls = true;
  } else if (!absl::ConsumePrefix(&rest, "http://")) {
    if (absl::StrContains(rest, "://")) {
      return absl::InvalidArgumentError(
          absl::StrCat("endpoint \"", url, "\": scheme must be http:// or https://"));
    }
  }
  rest = absl::StripSuffix(rest, "/");
  size_t colon = rest.rfind(':');
  if (rest.empty() || colon == absl::string_view::npos || colon == 0 || colon + 1 == rest.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("endpoint \"", url, "\": expected [http[s]://]host:port"));
  }
  int port = 0;
  for (char c : rest.substr(colon + 1)) {
    if (c < '0' || c > '9' || port > 65535) {
      return absl::InvalidArgumentError(absl::StrCat("endpoint \"", url, "\": bad port"));
    }
    port = port * 10 + (c - '0');
  }
  if (port < 1 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("endpoint \"", url, "\": bad port"));
  }
  ep.target = std::string(rest);
  return ep;
}

absl::Status FromGrpc(const grpc::Status& s, const std::string& what) {
  if (s.ok()) return absl::OkStatus();
  const std::string& msg = s.error_message();
  std::string text = absl::StrCat(what, ": ", msg);
  if (absl::StrContains(msg, "authentication failed") ||
      absl::StrContains(msg, "invalid user ID or password") ||
      absl::StrContains(msg, "invalid auth token") ||
      absl::StrContains(msg, "user name is empty")) {
    return absl::UnauthenticatedError(text);
  }
  if (absl::StrContains(msg, "requested lease not found")) return absl::NotFoundError(text);
  if (absl::StrContains(msg, "required revision has been compacted")) {
    return absl::OutOfRangeError(text);
  }
  // grpc::StatusCode and absl::StatusCode share their numeric values.
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), text);
}

bool IsAuthRefusal(grpc::StatusCode code, const std::string& message) {
  return code == grpc::StatusCode::UNAUTHENTICATED || code == grpc::StatusCode::PERMISSION_DENIED ||
         absl::StrContains(message, "invalid auth token") ||
         absl::StrContains(message, "user name is empty") ||
         absl::StrContains(message, "permission denied") ||
         absl::StrContains(message, "auth store is old") ||
         absl::StrContains(message, "code = Unauthenticated") ||
         absl::StrContains(message, "code = PermissionDenied");
}

absl::StatusOr<std::shared_ptr<Client>> Client::Create(const EtcdOptions& options) {
  // gRPC notices a finished connect attempt only while something polls the channel; with no
  // RPC waiting (all failed fast while etcd was down) that is the backup poller, every 5 s by
  // default, so a restarted etcd was reached 5 s late and a TLS handshake could not finish
  // within the connect timeout. 100 ms, unless the application chose a value. Read by
  // grpc_init, i.e. effective when this is the process's first gRPC use.
  static std::once_flag once;
  std::call_once(once, [] { setenv("GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS", "100", 0); });
  std::shared_ptr<Client> c(new Client(options));
  if (absl::Status s = c->Init(); !s.ok()) return s;
  return c;
}

Client::Client(const EtcdOptions& options)
    : options_(options), logger_(util::ComponentLogger(options.logger, "discovery.etcd")) {}

absl::Status Client::Init() {
  if (options_.endpoints.empty()) {
    return absl::InvalidArgumentError("no etcd endpoints configured");
  }
  if (options_.call_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("call_timeout must be positive");
  }
  bool any_tls = false;
  for (const std::string& url : options_.endpoints) {
    auto ep = ParseEndpoint(url);
    if (!ep.ok()) return ep.status();
    any_tls |= ep->tls;
    endpoints_.push_back(*ep);
  }
  if (any_tls) {
    grpc::SslCredentialsOptions ssl;
    if (!options_.ca_file.empty()) {
      auto ca = ReadFile(options_.ca_file, "CA file");
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *ca;
    }
    if (!options_.cert_file.empty() || !options_.key_file.empty()) {
      auto cert = ReadFile(options_.cert_file, "client certificate");
      if (!cert.ok()) return cert.status();
      auto key = ReadFile(options_.key_file, "client key");
      if (!key.ok()) return key.status();
      ssl.pem_cert_chain = *cert;
      ssl.pem_private_key = *key;
    }
    credentials_ = grpc::SslCredentials(ssl);
  }
  for (const Endpoint& ep : endpoints_) stubs_.push_back(MakeStubs(ep));
  loop_ = std::make_unique<util::EventLoop>("discovery-loop");
  background_ = std::make_unique<util::EventLoop>("discovery-bg");
  keeper_ = std::make_unique<LeaseKeeper>(this);
  watch_hub_ = std::make_unique<WatchHub>(this);
  return absl::OkStatus();
}

Client::~Client() {
  // Every async call has a deadline: this wait is bounded by the call timeout (plus pauses).
  {
    std::unique_lock lock(async_mu_);
    async_cv_.wait(lock, [&] { return async_calls_ == 0; });
  }
  // Streams first (they post to the loop), then the loops.
  if (watch_hub_ != nullptr) watch_hub_->Shutdown();
  if (keeper_ != nullptr) keeper_->Shutdown();
  if (background_ != nullptr) background_->Stop();
  if (loop_ != nullptr) loop_->Stop();
}

std::shared_ptr<Stubs> Client::MakeStubs(const Endpoint& ep) {
  grpc::ChannelArguments args;
  // Reconnect quickly after a member comes back; detect dead peers on idle streams.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  // gRPC also uses the "min reconnect backoff" as the minimum connect timeout (TCP + TLS
  // handshake): too small and a TLS handshake on a busy machine never completes.
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 5000);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS,
              static_cast<int>(std::clamp<int64_t>(
                  absl::ToInt64Milliseconds(options_.keepalive_time), 1000, 3600 * 1000)));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  // Pings only while a call or stream is open. etcd's gRPC-Go server counts a ping on a
  // connection without streams as abuse (unless its keepalive policy permits it, which etcd's
  // does not) and after three sends GOAWAY "too_many_pings": an idle Connection (a tool, a
  // process between registrations) was dropped and re-dialled every ~40 s, and a CI run saw
  // the GOAWAY land in the middle of a test (EtcdClientTest.IdleClientIsNotDroppedForPinging).
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  args.SetMaxReceiveMessageSize(64 * 1024 * 1024);
  // A distinct channel per endpoint even when two share a target.
  args.SetString("discovery.endpoint", ep.url);
  auto creds = ep.tls ? credentials_ : grpc::InsecureChannelCredentials();
  auto s = std::make_shared<Stubs>();
  s->channel = grpc::CreateCustomChannel(ep.target, creds, args);
  s->kv = pb::KV::NewStub(s->channel);
  s->lease = pb::Lease::NewStub(s->channel);
  s->watch = pb::Watch::NewStub(s->channel);
  s->maintenance = pb::Maintenance::NewStub(s->channel);
  s->auth = pb::Auth::NewStub(s->channel);
  return s;
}

std::shared_ptr<Stubs> Client::CurrentStubs(int* index) {
  int i = current_.load() % static_cast<int>(stubs_.size());
  if (index != nullptr) *index = i;
  return stubs_[i];
}

void Client::MarkFailed(int index) {
  int n = static_cast<int>(stubs_.size());
  int expected = index;
  if (current_.compare_exchange_strong(expected, (index + 1) % n) && n > 1) {
    SPDLOG_LOGGER_INFO(logger_, "etcd endpoint {} failed; switching to {}", endpoints_[index].url,
                       endpoints_[(index + 1) % n].url);
  }
}

void Client::PrepareContext(grpc::ClientContext* ctx, absl::Time deadline) {
  if (deadline != absl::InfiniteFuture()) ctx->set_deadline(util::GrpcDeadline(deadline));
  if (has_auth()) {
    util::MutexLock lock(&token_mu_);
    if (!token_.empty()) ctx->AddMetadata("token", token_);
  }
}

absl::Status Client::RefreshToken(int endpoint_index) {
  if (!has_auth()) return absl::OkStatus();
  pb::AuthenticateRequest req;
  req.set_name(options_.user);
  req.set_password(options_.password);
  pb::AuthenticateResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(util::GrpcDeadline(util::MonoNow() + options_.call_timeout));
  grpc::Status s = stubs_[endpoint_index]->auth->Authenticate(&ctx, req, &resp);
  if (!s.ok()) {
    token_refresh_failures_.fetch_add(1);
    absl::Status st = FromGrpc(s, "etcd Authenticate");
    SPDLOG_LOGGER_WARN(logger_, "etcd authentication as {} failed: {}", options_.user,
                       std::string(st.message()));
    return st;
  }
  token_refreshes_.fetch_add(1);
  util::MutexLock lock(&token_mu_);
  token_ = resp.token();
  ++token_generation_;
  return absl::OkStatus();
}

template <typename Resp>
absl::StatusOr<Resp> Client::Unary(
    const char* what, absl::Duration timeout,
    const std::function<grpc::Status(Stubs&, grpc::ClientContext*, Resp*)>& call) {
  UnaryPolicy p(this, what, timeout);
  absl::Duration pause;
  for (;;) {
    if (p.Pick()) {
      UnaryPolicy::Action a =
          p.AfterToken(p.FetchStillNeeded() ? RefreshToken(p.index()) : absl::OkStatus(), &pause);
      if (a == UnaryPolicy::Action::kDone) break;
      if (a == UnaryPolicy::Action::kRetry) {
        if (pause > absl::ZeroDuration()) absl::SleepFor(pause);
        continue;
      }
    }
    grpc::ClientContext ctx;
    if (!p.PrepareCall(&ctx)) break;
    Resp resp;
    grpc::Status s = call(p.stubs(), &ctx, &resp);
    if (s.ok()) return resp;
    if (p.AfterCall(s, &pause) == UnaryPolicy::Action::kDone) break;
    if (pause > absl::ZeroDuration()) absl::SleepFor(pause);
  }
  return p.Final();
}

absl::StatusOr<pb::LeaseGrantResponse> Client::GrantOwnLease(int64_t ttl_seconds) {
  thread_local absl::BitGen gen;
  pb::LeaseGrantRequest grant;
  grant.set_ttl(ttl_seconds);
  grant.set_id(
      absl::Uniform<int64_t>(absl::IntervalClosed, gen, 1, std::numeric_limits<int64_t>::max()));
  auto r = LeaseGrant(grant);
  if (r.ok() || !absl::StrContains(r.status().message(), "lease already exists")) return r;
  pb::LeaseTimeToLiveRequest q;
  q.set_id(grant.id());
  auto t = LeaseTimeToLive(q);
  if (!t.ok()) return t.status();
  if (t->ttl() <= 0) return absl::UnavailableError("the lease granted for this call is gone");
  pb::LeaseGrantResponse out;
  out.set_id(grant.id());
  out.set_ttl(t->grantedttl());
  return out;
}

#define DISCOVERY_UNARY(Name, Service, Req, Resp)                                     \
  absl::StatusOr<pb::Resp> Client::Name(const pb::Req& req, absl::Duration timeout) { \
    return Unary<pb::Resp>(#Name, timeout,                                            \
                           [&](Stubs& s, grpc::ClientContext* ctx, pb::Resp* resp) {  \
                             return s.Service->Name(ctx, req, resp);                  \
                           });                                                        \
  }

DISCOVERY_UNARY(Range, kv, RangeRequest, RangeResponse)
DISCOVERY_UNARY(Put, kv, PutRequest, PutResponse)
DISCOVERY_UNARY(DeleteRange, kv, DeleteRangeRequest, DeleteRangeResponse)
DISCOVERY_UNARY(Txn, kv, TxnRequest, TxnResponse)
DISCOVERY_UNARY(Compact, kv, CompactionRequest, CompactionResponse)
DISCOVERY_UNARY(LeaseGrant, lease, LeaseGrantRequest, LeaseGrantResponse)
DISCOVERY_UNARY(LeaseRevoke, lease, LeaseRevokeRequest, LeaseRevokeResponse)
DISCOVERY_UNARY(LeaseTimeToLive, lease, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse)
#undef DISCOVERY_UNARY

absl::StatusOr<pb::LeaseLeasesResponse> Client::LeaseLeases(absl::Duration timeout) {
  pb::LeaseLeasesRequest req;
  return Unary<pb::LeaseLeasesResponse>(
      "LeaseLeases", timeout, [&](Stubs& s, grpc::ClientContext* ctx, pb::LeaseLeasesResponse* r) {
        return s.lease->LeaseLeases(ctx, req, r);
      });
}

absl::StatusOr<int64_t> Client::LeaseKeepAliveOnce(int64_t lease_id, absl::Duration timeout) {
  auto resp = Unary<pb::LeaseKeepAliveResponse>(
      "LeaseKeepAlive", timeout,
      [&](Stubs& s, grpc::ClientContext* ctx, pb::LeaseKeepAliveResponse* r) {
        auto stream = s.lease->LeaseKeepAlive(ctx);
        pb::LeaseKeepAliveRequest req;
        req.set_id(lease_id);
        if (!stream->Write(req) || !stream->Read(r)) {
          stream->WritesDone();
          ctx->TryCancel();
          grpc::Status st = stream->Finish();
          return st.ok() ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "keepalive stream closed")
                         : st;
        }
        stream->WritesDone();
        ctx->TryCancel();
        stream->Finish();
        return grpc::Status::OK;
      });
  if (!resp.ok()) return resp.status();
  if (resp->ttl() <= 0) {
    return absl::NotFoundError(absl::StrFormat("lease %x not found", lease_id));
  }
  return resp->ttl();
}

absl::StatusOr<pb::StatusResponse> Client::MemberStatus(int endpoint, absl::Duration timeout) {
  pb::StatusRequest req;
  if (endpoint < 0) {
    return Unary<pb::StatusResponse>(
        "Status", timeout, [&](Stubs& s, grpc::ClientContext* ctx, pb::StatusResponse* r) {
          return s.maintenance->Status(ctx, req, r);
        });
  }
  if (endpoint >= static_cast<int>(stubs_.size())) {
    return absl::InvalidArgumentError("endpoint index out of range");
  }
  if (timeout <= absl::ZeroDuration()) timeout = options_.call_timeout;
  grpc::ClientContext ctx;
  PrepareContext(&ctx, util::MonoNow() + timeout);
  pb::StatusResponse resp;
  grpc::Status s = stubs_[endpoint]->maintenance->Status(&ctx, req, &resp);
  if (!s.ok()) return FromGrpc(s, "etcd Status");
  return resp;
}

bool TokenReadyOrFetch(Client* client, util::EventLoop& loop, bool* connecting, bool force,
                       std::function<void(bool fetched)> then) {
  if (!client->has_auth() || (!force && client->has_token())) return true;
  *connecting = true;
  int index = 0;
  client->CurrentStubs(&index);
  client->background().Post([client, index, &loop, connecting, then = std::move(then)]() mutable {
    absl::Status s = client->RefreshToken(index);
    // Wrong credentials are not the member's fault; anything else (unreachable, timeout) is.
    if (!s.ok() && !absl::IsUnauthenticated(s) && !absl::IsPermissionDenied(s)) {
      client->MarkFailed(index);
    }
    loop.Post([connecting, ok = s.ok(), then = std::move(then)] {
      *connecting = false;
      then(ok);
    });
  });
  return false;
}

}  // namespace etcd
}  // namespace discovery
