#include "instance_writer.h"

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

class EtcdInstanceWriter : public InstanceWriter {
 public:
  explicit EtcdInstanceWriter(std::shared_ptr<etcd::Client> client) : client_(std::move(client)) {}

  absl::StatusOr<int64_t> PutIfAbsent(const std::string& key, const std::string& value,
                                      int64_t lease) override {
    return PutIfAbsentResult(client_->Txn(PutIfAbsentTxn(key, value, lease)), lease);
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
    auto resp = client_->Txn(txn);
    if (!resp.ok()) return resp.status();
    WriteResult out;
    if (resp->succeeded()) {
      out.written = true;
      out.revision = resp->header().revision();
      return out;
    }
    const auto& range = resp->responses(0).response_range();
    if (range.kvs_size() > 0) {
      const auto& kv = range.kvs(0);
      out.current = Current{kv.value(), kv.lease(), kv.mod_revision()};
    }
    return out;
  }

 private:
  std::shared_ptr<etcd::Client> client_;
};

}  // namespace

std::unique_ptr<InstanceWriter> NewEtcdInstanceWriter(std::shared_ptr<etcd::Client> client) {
  return std::make_unique<EtcdInstanceWriter>(std::move(client));
}

}  // namespace discovery
