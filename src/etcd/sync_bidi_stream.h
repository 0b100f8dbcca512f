// SyncBidiStream<Req, Resp>: one client bidi stream on the gRPC *sync* API, read by a thread
// the stream owns. The low-latency sibling of BidiStream (bidi_stream.h): on Debian's gRPC 1.51
// the callback API runs every reaction on gRPC's "nexting" thread, one extra thread hop between
// the socket and the owner; a blocking Read on a dedicated thread returns on that thread as
// soon as the frame is decoded. Used by the WatchHub (watch latency); LeaseKeeper keeps
// BidiStream.
//
//   auto s = SyncBidiStream<Req, Resp>::Start(&tracker, "discovery-watch",
//       [&](grpc::ClientContext* ctx) { client->PrepareContext(ctx, absl::InfiniteFuture());
//                                        ctx->AddMetadata(...); },           // caller's thread
//       [stubs](grpc::ClientContext* ctx) { return stubs->watch->Watch(ctx); },  // reader thread
//       {.on_response = ..., .on_done = ...});
//   s->Send(req);   // written at once when the call is open (blocking write on the caller's
//                   // thread, serialised), else queued until it is; false once closing
//   s->Cancel();    // on_done follows
//
// The reader thread opens the call (opening may block while the channel connects, so it never
// runs on the owner's loop), writes what was queued meanwhile, then reads until the call ends,
// calls on_done, and exits. One thread per stream: a replaced stream's thread ends as soon as
// its call is cancelled. The stream owns itself until on_done returned; StreamTracker (from
// bidi_stream.h) lets the owner's shutdown wait for every reader thread to be done.
//
// Writes block the calling thread until gRPC took the message (HTTP/2 flow control): fine for
// the Watch stream's few small requests (creates, cancels, a progress request every 2 s).
//
// Thread-safety: Send and Cancel are thread-safe.
#pragma once

#include <pthread.h>

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "etcd/bidi_stream.h"
#include "grpcpp/grpcpp.h"
#include "util/sync.h"

namespace discovery::etcd {

template <class Req, class Resp>
class SyncBidiStream {
 public:
  using Call = std::unique_ptr<grpc::ClientReaderWriter<Req, Resp>>;
  struct Handlers {
    // Each response, on the reader thread, one at a time. The response may be moved from.
    std::function<void(Resp& response)> on_response;
    // Once, on the reader thread, last: whether any response arrived, how the call ended.
    std::function<void(bool had_response, const grpc::Status& status)> on_done;
  };

  // `prepare` runs here (context metadata, deadline); `open` runs on the reader thread and
  // starts the call (e.g. stubs->watch->Watch(ctx)); it holds what the call needs (stubs).
  static std::shared_ptr<SyncBidiStream> Start(
      StreamTracker* tracker, std::string thread_name,
      const std::function<void(grpc::ClientContext*)>& prepare,
      std::function<Call(grpc::ClientContext*)> open, Handlers handlers) {
    std::shared_ptr<SyncBidiStream> s(new SyncBidiStream(tracker, std::move(handlers)));
    prepare(&s->ctx_);
    tracker->Started();
    threads_started_.fetch_add(1, std::memory_order_relaxed);
    std::thread([s, open = std::move(open), name = std::move(thread_name)]() mutable {
      pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
      SyncBidiStream* self = s.get();
      self->Run(open);
      open = nullptr;  // releases what the call needed (stubs) before the tracker says done
      StreamTracker* t = self->tracker_;
      s.reset();  // may delete the stream
      t->Finished();
    }).detach();
    return s;
  }

  bool Send(Req req) {
    util::MutexLock lock(&mu_);
    if (closed_) return false;
    if (call_ == nullptr) {
      queue_.push_back(std::move(req));
      return true;
    }
    if (!call_->Write(req)) closed_ = true;  // the call is ending: Read will return false
    return !closed_;
  }

  void Cancel() { ctx_.TryCancel(); }

  // Reader threads started by all SyncBidiStreams of the process (for thread accounting).
  static int64_t threads_started() { return threads_started_.load(std::memory_order_relaxed); }

 private:
  SyncBidiStream(StreamTracker* tracker, Handlers handlers)
      : tracker_(tracker), handlers_(std::move(handlers)) {}

  void Run(const std::function<Call(grpc::ClientContext*)>& open) {
    Call call = open(&ctx_);
    {
      util::MutexLock lock(&mu_);
      call_ = call.get();
      while (!closed_ && !queue_.empty()) {
        if (!call_->Write(queue_.front())) closed_ = true;
        queue_.pop_front();
      }
    }
    bool had_response = false;
    Resp resp;
    while (call->Read(&resp)) {
      had_response = true;
      handlers_.on_response(resp);
      resp.Clear();
    }
    {
      util::MutexLock lock(&mu_);  // no Write is in progress once closed_ is set under mu_
      closed_ = true;
      call_ = nullptr;
      queue_.clear();
    }
    grpc::Status status = call->Finish();
    handlers_.on_done(had_response, status);
  }

  static inline std::atomic<int64_t> threads_started_{0};

  StreamTracker* const tracker_;
  const Handlers handlers_;
  grpc::ClientContext ctx_;
  util::Mutex mu_;
  grpc::ClientReaderWriter<Req, Resp>* call_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::deque<Req> queue_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace discovery::etcd
