// SyncBidiStream<Req, Resp>: one client bidi stream on the gRPC *sync* API, read by a thread
// the stream owns. On Debian's gRPC 1.51 the callback API runs every reaction (each read and
// each write done) on gRPC's "nexting" thread, one extra thread hop between the socket and the
// owner; a blocking Read on a dedicated thread returns on that thread as soon as the frame is
// decoded, and blocking Writes with the buffer hint complete without a hop. Used by the
// WatchHub (watch latency) and the LeaseKeeper (keepalive CPU: issue 14 measured the callback
// stream at 1.4x the CPU of a raw sync stream for 1,000 leases), both with a writer thread.
//
//   auto s = SyncBidiStream<Req, Resp>::Start(&tracker, "discovery-watch",
//       [&](grpc::ClientContext* ctx) { client->PrepareContext(ctx, absl::InfiniteFuture());
//                                        ctx->AddMetadata(...); },           // caller's thread
//       [stubs](grpc::ClientContext* ctx) { return stubs->watch->Watch(ctx); },  // reader thread
//       {.on_response = ..., .on_done = ...},
//       WriteMode::kCallerThread);
//   s->Send(req);        // kCallerThread: written at once when the call is open (blocking
//                        // write on the caller's thread, serialised), else queued until it is;
//                        // kWriterThread: queued for the stream's writer thread
//   s->SendBatch(reqs);  // the same for a burst: one flush (buffer hint on all but the last)
//   s->queued();         // requests not written yet
//   s->Cancel();         // on_done follows
//
// The reader thread opens the call (opening may block while the channel connects, so it never
// runs on the owner's loop), writes what was queued meanwhile (kCallerThread) or starts the
// writer thread (kWriterThread), then reads until the call ends, joins the writer, calls
// on_done, and exits. A replaced stream's threads end as soon as its call is cancelled. The
// stream owns itself until on_done returned; StreamTracker (stream_tracker.h) lets the
// owner's shutdown wait for every reader thread (and so every writer) to be done.
//
// Write modes. kCallerThread: writes block the calling thread until gRPC took the message
// (HTTP/2 flow control). kWriterThread: one more thread per stream (`discovery-write`) takes
// everything queued at once and writes it with the buffer hint on all but the last message
// (one flush per burst); the owner's thread never blocks on the network, so a peer that stops
// reading (a frozen member) cannot stall the owner's loop, and the owner's stall detection can
// cancel the call (the blocked Write then returns false). Both owners use kWriterThread: the
// LeaseKeeper writes thousands of keepalives per burst, and the WatchHub's few requests share
// the HTTP/2 connection (and so its window) with the keepalive stream to the same member.
//
// The owner may be destroyed from inside on_response (its handler runs the owner's loop inline,
// EventLoop::Dispatch, and a listener drops the last reference to the client): its shutdown
// must not wait for the very thread it runs on. It calls DetachCurrentReader(tracker) first:
// when the calling thread is a reader of that tracker, the stream counts as finished at once,
// and that thread, once on_response returns, ends its call without calling any handler again
// and without touching the tracker (both belong to the owner that is going away).
//
// Thread-safety: Send, SendBatch, queued and Cancel are thread-safe.
#pragma once

#include <pthread.h>

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "etcd/stream_tracker.h"
#include "grpcpp/grpcpp.h"
#include "util/sync.h"

namespace discovery::etcd {

enum class WriteMode { kCallerThread, kWriterThread };

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
      std::function<Call(grpc::ClientContext*)> open, Handlers handlers,
      WriteMode mode = WriteMode::kCallerThread) {
    std::shared_ptr<SyncBidiStream> s(new SyncBidiStream(tracker, std::move(handlers), mode));
    prepare(&s->ctx_);
    tracker->Started();
    threads_started_.fetch_add(1, std::memory_order_relaxed);
    std::thread([s, open = std::move(open), name = std::move(thread_name)]() mutable {
      pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
      SyncBidiStream* self = s.get();
      current_ = self;
      self->Run(open);
      current_ = nullptr;
      open = nullptr;  // releases what the call needed (stubs) before the tracker says done
      StreamTracker* t = self->detached_ ? nullptr : self->tracker_;
      s.reset();                        // may delete the stream
      if (t != nullptr) t->Finished();  // (a detached stream's tracker may be gone)
    }).detach();
    return s;
  }

  bool Send(Req req) {
    util::MutexLock lock(&mu_);
    if (closed_) return false;
    if (call_ == nullptr || mode_ == WriteMode::kWriterThread) {
      queue_.push_back(std::move(req));  // (the writer thread waits on mu_: the unlock wakes it)
      return true;
    }
    if (!call_->Write(req)) closed_ = true;  // the call is ending: Read will return false
    return !closed_;
  }

  // Queues every request of `batch` in order (kWriterThread; with kCallerThread each is Sent);
  // false when the stream is closing. Written with the buffer hint on all but the last.
  template <class Container>
  bool SendBatch(Container&& batch) {
    if (mode_ == WriteMode::kCallerThread) {
      for (auto& req : batch) {
        if (!Send(std::move(req))) return false;
      }
      return true;
    }
    util::MutexLock lock(&mu_);
    if (closed_) return false;
    for (auto& req : batch) queue_.push_back(std::move(req));
    return true;
  }

  // Requests queued and not yet written (those the writer thread is writing included).
  size_t queued() {
    util::MutexLock lock(&mu_);
    return queue_.size() + writing_;
  }

  void Cancel() { ctx_.TryCancel(); }

  // Called by the owner's shutdown before it waits for its readers (tracker->AwaitNone()): when
  // the calling thread is the reader thread of a stream of `tracker`, that stream is finished
  // for the tracker now and calls no handler any more (see above). True when it was.
  static bool DetachCurrentReader(StreamTracker* tracker) {
    SyncBidiStream* self = current_;
    if (self == nullptr || self->tracker_ != tracker || self->detached_) return false;
    self->detached_ = true;
    self->ctx_.TryCancel();
    tracker->Finished();
    return true;
  }

  // Threads (readers, and writers in kWriterThread mode) started by all SyncBidiStreams of the
  // process (for thread accounting).
  static int64_t threads_started() { return threads_started_.load(std::memory_order_relaxed); }

 private:
  SyncBidiStream(StreamTracker* tracker, Handlers handlers, WriteMode mode)
      : tracker_(tracker), handlers_(std::move(handlers)), mode_(mode) {}

  void Run(const std::function<Call(grpc::ClientContext*)>& open) {
    Call call = open(&ctx_);
    std::thread writer;
    {
      util::MutexLock lock(&mu_);
      call_ = call.get();
      if (mode_ == WriteMode::kWriterThread) {
        threads_started_.fetch_add(1, std::memory_order_relaxed);
        writer = std::thread([this, c = call.get()] { WriteLoop(c); });
      } else {
        while (!closed_ && !queue_.empty()) {
          if (!call_->Write(queue_.front())) closed_ = true;
          queue_.pop_front();
        }
      }
    }
    bool had_response = false;
    Resp resp;
    while (call->Read(&resp)) {
      had_response = true;
      handlers_.on_response(resp);
      if (detached_) break;  // the owner went away inside the handler: touch nothing of it
      resp.Clear();
    }
    {
      util::MutexLock lock(&mu_);  // no caller-thread Write is in progress once closed_ is set
      closed_ = true;
      call_ = nullptr;
      queue_.clear();
    }
    // The call has ended (Read returned false): a Write in progress fails at once.
    if (writer.joinable()) writer.join();
    if (detached_) {
      while (call->Read(&resp)) {
      }  // (cancelled: ends at once)
      call->Finish();
      return;
    }
    grpc::Status status = call->Finish();
    handlers_.on_done(had_response, status);
  }

  // kWriterThread: writes whatever is queued, one burst at a time, until the stream closes.
  void WriteLoop(grpc::ClientReaderWriter<Req, Resp>* call) {
    pthread_setname_np(pthread_self(), "discovery-write");
    std::deque<Req> burst;
    for (;;) {
      {
        util::MutexLock lock(&mu_);
        writing_ = 0;
        mu_.Await([this]()
                      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return closed_ || !queue_.empty(); });
        if (closed_) return;
        burst.swap(queue_);
        writing_ = burst.size();
      }
      for (size_t i = 0; i < burst.size(); ++i) {
        grpc::WriteOptions options;
        if (i + 1 < burst.size()) options.set_buffer_hint();
        if (!call->Write(burst[i], options)) {
          util::MutexLock lock(&mu_);
          closed_ = true;  // the call is ending: Read returns false
          queue_.clear();
          writing_ = 0;
          return;
        }
      }
      burst.clear();
    }
  }

  static inline std::atomic<int64_t> threads_started_{0};
  // The stream whose reader is the calling thread (nullptr elsewhere).
  static inline thread_local SyncBidiStream* current_ = nullptr;

  StreamTracker* const tracker_;
  const Handlers handlers_;
  const WriteMode mode_;
  grpc::ClientContext ctx_;
  util::Mutex mu_;
  grpc::ClientReaderWriter<Req, Resp>* call_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::deque<Req> queue_ ABSL_GUARDED_BY(mu_);
  size_t writing_ ABSL_GUARDED_BY(mu_) = 0;  // taken by the writer thread, not yet written
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool detached_ = false;  // reader thread only (DetachCurrentReader runs there)
};

}  // namespace discovery::etcd
