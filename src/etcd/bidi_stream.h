// BidiStream<Req, Resp>: one client bidi stream on the gRPC callback API, the piece shared by
// the LeaseKeepAlive stream (LeaseKeeper) and the Watch stream (WatchHub).
//
//   auto s = BidiStream<Req, Resp>::Start(&tracker,
//       [&](grpc::ClientContext* ctx, grpc::ClientBidiReactor<Req, Resp>* r) {
//         client->PrepareContext(ctx, absl::InfiniteFuture());
//         stubs->watch->async()->Watch(ctx, r);
//       },
//       {.on_response = [](Resp& r) { ... },            // gRPC thread, one at a time
//        .on_done = [](bool had_response, const grpc::Status& s) { ... }},  // once
//       stubs);                                          // kept alive as long as the call
//   s->Send(req);   // queued; written one at a time in order; false once closing
//   s->SendBatch(reqs);  // the same for a burst: one flush (buffer hint on all but the last)
//   s->Cancel();    // on_done follows
//
// The stream owns itself from Start() until gRPC's OnDone, so an owner may drop its
// shared_ptr (or call Send on it) at any time. StreamTracker counts streams that gRPC has not
// finished with, so an owner's shutdown can wait for all of them before it goes away.
//
// TSan: gRPC hands each reaction to the next through its own (uninstrumented) completion
// queue, so the reactions carry util::TsanRelease/TsanAcquire annotations (no-ops otherwise).
//
// Thread-safety: Send and Cancel are thread-safe.
#pragma once

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "grpcpp/grpcpp.h"
#include "grpcpp/support/client_callback.h"
#include "util/event_loop.h"
#include "util/sync.h"

namespace discovery::etcd {

class Client;

// Number of streams gRPC still owns. Thread-safe.
class StreamTracker {
 public:
  void Started() {
    util::MutexLock lock(&mu_);
    ++live_;
  }
  void Finished() {
    util::MutexLock lock(&mu_);
    --live_;
  }
  // Blocks until every started stream has finished.
  void AwaitNone() {
    util::MutexLock lock(&mu_);
    mu_.Await([this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return live_ == 0; });
  }

 private:
  util::Mutex mu_;
  int live_ ABSL_GUARDED_BY(mu_) = 0;
};

template <class Req, class Resp>
class BidiStream final : public grpc::ClientBidiReactor<Req, Resp> {
 public:
  using Open = std::function<void(grpc::ClientContext*, grpc::ClientBidiReactor<Req, Resp>*)>;
  // Handlers run on gRPC threads, possibly before Start() has returned: they must not touch
  // the owner's stream pointer (post to the owner's loop instead, as both owners do).
  struct Handlers {
    // Each response, on a gRPC thread, one at a time. The response may be moved from.
    std::function<void(Resp& response)> on_response;
    // Once, after the last reaction: whether any response arrived, and how the call ended.
    std::function<void(bool had_response, const grpc::Status& status)> on_done;
  };

  // Opens the stream: `open` (called synchronously, before the call starts) prepares the
  // context and binds this reactor to the call. `keep` (e.g. the endpoint's stubs `open`
  // uses) is held until the call is over; pass a copy, `open` may still need the original.
  static std::shared_ptr<BidiStream> Start(StreamTracker* tracker, const Open& open,
                                           Handlers handlers, std::shared_ptr<void> keep) {
    std::shared_ptr<BidiStream> s(new BidiStream(tracker, std::move(handlers), std::move(keep)));
    s->self_ = s;
    tracker->Started();
    open(&s->ctx_, s.get());
    s->StartRead(&s->resp_);
    s->AddHold();
    util::TsanRelease(s.get());  // everything above is visible to the reactions
    s->StartCall();
    return s;
  }

  // Queues `req`; false when the stream is closing (the owner reconnects).
  bool Send(Req req) {
    util::MutexLock lock(&mu_);
    if (closed_) return false;
    queue_.push_back(std::move(req));
    if (!writing_) {
      writing_ = true;
      WriteFront();
    }
    return true;
  }

  // Queues every request of `batch` in order; false when the stream is closing. The writes
  // carry the buffer hint except the last one queued, so a burst is flushed once, not per
  // message.
  template <class Container>
  bool SendBatch(Container&& batch) {
    util::MutexLock lock(&mu_);
    if (closed_) return false;
    for (auto& req : batch) queue_.push_back(std::move(req));
    if (!writing_ && !queue_.empty()) {
      writing_ = true;
      WriteFront();
    }
    return true;
  }

  // Requests queued and not yet written (the one being written included).
  size_t queued() {
    util::MutexLock lock(&mu_);
    return queue_.size();
  }

  void Cancel() { ctx_.TryCancel(); }

  void OnWriteDone(bool ok) override {
    util::TsanReactionScope reaction(this);
    util::MutexLock lock(&mu_);
    if (!queue_.empty()) queue_.pop_front();
    if (!ok || closed_ || queue_.empty()) {
      writing_ = false;
      return;
    }
    WriteFront();
  }

  void OnReadDone(bool ok) override {
    util::TsanReactionScope reaction(this);
    if (ok) {
      had_response_ = true;
      handlers_.on_response(resp_);
      resp_.Clear();
      util::TsanRelease(this);
      this->StartRead(&resp_);
      return;
    }
    util::MutexLock lock(&mu_);
    closed_ = true;
    util::TsanRelease(this);
    this->RemoveHold();
  }

  void OnDone(const grpc::Status& status) override {
    util::TsanAcquire(this);  // after every other reaction; `this` may be deleted below
    {
      util::MutexLock lock(&mu_);
      closed_ = true;
    }
    handlers_.on_done(had_response_, status);
    StreamTracker* tracker = tracker_;
    self_.reset();  // may delete this
    tracker->Finished();
  }

 private:
  // Writes the queue's front; more queued behind it: buffer hint (not flushed yet).
  void WriteFront() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    grpc::WriteOptions options;
    if (queue_.size() > 1) options.set_buffer_hint();
    util::TsanRelease(this);
    this->StartWrite(&queue_.front(), options);
  }

  BidiStream(StreamTracker* tracker, Handlers handlers, std::shared_ptr<void> keep)
      : tracker_(tracker), handlers_(std::move(handlers)), keep_(std::move(keep)) {}

  StreamTracker* const tracker_;
  const Handlers handlers_;
  const std::shared_ptr<void> keep_;
  grpc::ClientContext ctx_;
  Resp resp_;
  std::atomic<bool> had_response_{false};
  util::Mutex mu_;
  // std::deque keeps the element being written at a stable address.
  std::deque<Req> queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  std::shared_ptr<BidiStream> self_;  // until OnDone
};

// For stream owners, on their `loop`: true when a stream may be opened now. With credentials
// but no token yet (or with `force`: the stream's token was refused) it returns false, sets
// *connecting, fetches a token on the client's background loop (a blocking call), then clears
// *connecting and runs then(fetched) on `loop`: fetched is true when a new token was just
// obtained, so a stream opened right away carries a fresh token.
bool TokenReadyOrFetch(Client* client, util::EventLoop& loop, bool* connecting, bool force,
                       std::function<void(bool fetched)> then);

}  // namespace discovery::etcd
