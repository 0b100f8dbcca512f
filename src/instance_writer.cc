#include "instance_writer.h"

#include <limits>

#include "absl/strings/str_cat.h"
#include "etcd/client.h"

namespace discovery {
namespace {

namespace pb = ::etcdserverpb;

// Txn: put `value` at `key` under `lease` only when the key does not exist; else read it.
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
  txn.add_failure()->mutable_request_range()->set_key(key);
  return txn;
}

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

std::optional<InstanceWriter::Current> CurrentOf(const pb::RangeResponse& range) {
  if (range.kvs_size() == 0) return std::nullopt;
  const auto& kv = range.kvs(0);
  return InstanceWriter::Current{kv.value(), kv.lease(), kv.mod_revision()};
}

class EtcdInstanceWriter : public InstanceWriter {
 public:
  EtcdInstanceWriter(std::shared_ptr<etcd::Client> client, absl::Duration timeout)
      : client_(std::move(client)), timeout_(timeout) {}

  absl::StatusOr<std::optional<Current>> Read(const std::string& key) override {
    pb::RangeRequest rr;
    rr.set_key(key);
    auto r = client_->Range(rr, timeout_);
    if (!r.ok()) return r.status();
    return CurrentOf(*r);
  }

  absl::StatusOr<int64_t> PutIfAbsent(const std::string& key, const std::string& value,
                                      int64_t lease) override {
    return PutIfAbsentResult(client_->Txn(PutIfAbsentTxn(key, value, lease), timeout_), lease);
  }

  void PutIfAbsentAsync(const std::string& key, const std::string& value, int64_t lease,
                        PutCallback done) override {
    client_->TxnAsync(PutIfAbsentTxn(key, value, lease),
                      [lease, done = std::move(done)](absl::StatusOr<pb::TxnResponse> resp) {
                        done(PutIfAbsentResult(resp, lease));
                      });
  }

  absl::StatusOr<WriteResult> PutIfUnchanged(const std::string& key, const std::string& value,
                                             int64_t lease, int64_t expected) override {
    pb::TxnRequest txn;
    auto* cmp = txn.add_compare();
    cmp->set_key(key);
    cmp->set_target(pb::Compare::MOD);
    cmp->set_result(pb::Compare::EQUAL);
    cmp->set_mod_revision(expected);
    auto* put = txn.add_success()->mutable_request_put();
    put->set_key(key);
    put->set_lease(lease);
    put->set_value(value);
    txn.add_failure()->mutable_request_range()->set_key(key);
    auto resp = client_->Txn(txn, timeout_);
    if (!resp.ok()) return resp.status();
    WriteResult out;
    out.store_revision = resp->header().revision();
    if (resp->succeeded()) {
      out.written = true;
      out.revision = resp->header().revision();
      return out;
    }
    out.current = CurrentOf(resp->responses(0).response_range());
    return out;
  }

  // Txn{ [lease(key) == guard.lease] [mod(key) == guard.mod_revision] ? DeleteRange(key)
  // : Range(key) }; without a guard a plain DeleteRange in a Txn.
  absl::StatusOr<DeleteResult> Delete(const std::string& key, DeleteGuard guard) override {
    pb::TxnRequest txn;
    if (guard.lease != 0) {
      auto* cmp = txn.add_compare();
      cmp->set_key(key);
      cmp->set_target(pb::Compare::LEASE);
      cmp->set_result(pb::Compare::EQUAL);
      cmp->set_lease(guard.lease);
    }
    if (guard.mod_revision != 0) {
      auto* cmp = txn.add_compare();
      cmp->set_key(key);
      cmp->set_target(pb::Compare::MOD);
      cmp->set_result(pb::Compare::EQUAL);
      cmp->set_mod_revision(guard.mod_revision);
    }
    if (txn.compare_size() > 0) txn.add_failure()->mutable_request_range()->set_key(key);
    auto* del = txn.add_success()->mutable_request_delete_range();
    del->set_key(key);
    del->set_prev_kv(true);
    auto resp = client_->Txn(txn, timeout_);
    if (!resp.ok()) return resp.status();
    DeleteResult out;
    out.store_revision = resp->header().revision();
    if (!resp->succeeded()) {
      out.current = CurrentOf(resp->responses(0).response_range());
      return out;
    }
    const pb::DeleteRangeResponse& d = resp->responses(0).response_delete_range();
    if (d.deleted() == 0 || d.prev_kvs_size() == 0) return out;  // absent
    out.deleted = true;
    out.lease_id = d.prev_kvs(0).lease();
    return out;
  }

 private:
  std::shared_ptr<etcd::Client> client_;
  absl::Duration timeout_;
};

}  // namespace

absl::StatusOr<std::optional<InstanceWriter::Current>> InstanceWriter::Read(
    const std::string& key) {
  auto r = Delete(key, {.mod_revision = std::numeric_limits<int64_t>::max()});
  if (!r.ok()) return r.status();
  if (r->deleted) return absl::InternalError(absl::StrCat(key, ": read probe deleted the key"));
  return r->current;
}

std::unique_ptr<InstanceWriter> NewEtcdInstanceWriter(std::shared_ptr<etcd::Client> client,
                                                      absl::Duration timeout) {
  return std::make_unique<EtcdInstanceWriter>(std::move(client), timeout);
}

}  // namespace discovery
