// Delivery: subscriptions (filtered typed events on the library thread, or queued for Poll()),
// history-reset listeners, and pickers (their state: protection.cc). Above the cache; knows
// nothing of the store.
#include <deque>

#include "absl/container/inlined_vector.h"
#include "watcher_impl.h"

namespace discovery {

void Watcher::Impl::Deliver(uint64_t id, const std::shared_ptr<Sub>& sub, const ChangeEvent& ev) {
  if (opts.delivery == Delivery::kPoll) {
    util::MutexLock lock(&queue_mu);
    queue.emplace_back(id, ev);
  } else {
    sub->callback(ev);
  }
}

void Watcher::Impl::Dispatch(const std::vector<ChangeEvent>& changes) {
  if (changes.empty()) return;
  // Inline for a few subscribers (no allocation per publish); a fan-out of many allocates.
  absl::InlinedVector<std::pair<uint64_t, std::shared_ptr<Sub>>, 4> targets;
  {
    util::MutexLock lock(&subs_mu);
    targets.assign(subs.begin(), subs.end());
  }
  for (const ChangeEvent& ev : changes) {
    for (auto& [id, sub] : targets) {
      // A callback may have cancelled this (or another) subscription earlier in the batch.
      if (sub->cancelled.load(std::memory_order_acquire)) continue;
      bool match = sub->filter.Matches(*ev.instance) ||
                   (ev.previous != nullptr && sub->filter.Matches(*ev.previous));
      if (match) Deliver(id, sub, ev);
    }
  }
}

void Watcher::Impl::NotifyHistoryReset(const SnapshotPtr& snapshot) {
  std::vector<std::shared_ptr<ResetListener>> targets;
  {
    util::MutexLock lock(&subs_mu);
    for (auto& [id, l] : reset_listeners) targets.push_back(l);
  }
  for (auto& l : targets) {
    if (!l->cancelled.load(std::memory_order_acquire)) l->callback(snapshot);
  }
}

Subscription Watcher::Subscribe(Filter filter, std::function<void(const ChangeEvent&)> callback,
                                bool initial) {
  auto sub = std::make_shared<Impl::Sub>();
  sub->filter = std::move(filter);
  sub->callback = std::move(callback);
  uint64_t id = 0;
  impl_->loop().RunSync([&] {
    {
      util::MutexLock lock(&impl_->subs_mu);
      id = impl_->next_sub++;
      impl_->subs[id] = sub;
    }
    if (initial) {
      SnapshotPtr snap = impl_->snap.load();
      for (const InstancePtr& in : snap->Select(sub->filter)) {
        ChangeEvent ev;
        ev.type = ChangeType::kAdded;
        ev.instance = in;
        ev.revision = snap->revision();
        ev.initial = true;
        impl_->Deliver(id, sub, ev);
      }
    }
  });
  std::weak_ptr<Impl> weak = impl_;
  return Subscription([weak, id, sub] {
    sub->cancelled.store(true, std::memory_order_release);
    auto impl = weak.lock();
    if (impl == nullptr) return;
    {
      util::MutexLock lock(&impl->subs_mu);
      impl->subs.erase(id);
    }
    // Barrier: a callback running on the loop right now finishes before we return (inline when
    // called on the loop thread, e.g. from the subscription's own callback).
    if (impl->opts.delivery == Delivery::kLibraryThread) impl->loop().RunSync([] {});
  });
}

Subscription Watcher::OnHistoryReset(std::function<void(const SnapshotPtr&)> callback) {
  auto listener = std::make_shared<Impl::ResetListener>();
  listener->callback = std::move(callback);
  uint64_t id = 0;
  {
    util::MutexLock lock(&impl_->subs_mu);
    id = impl_->next_sub++;
    impl_->reset_listeners[id] = listener;
  }
  std::weak_ptr<Impl> weak = impl_;
  return Subscription([weak, id, listener] {
    listener->cancelled.store(true, std::memory_order_release);
    auto impl = weak.lock();
    if (impl == nullptr) return;
    {
      util::MutexLock lock(&impl->subs_mu);
      impl->reset_listeners.erase(id);
    }
    impl->loop().RunSync([] {});  // a listener running now finishes first
  });
}

size_t Watcher::Poll(size_t max_events) {
  size_t ran = 0;
  while (ran < max_events) {
    std::pair<uint64_t, ChangeEvent> item;
    {
      util::MutexLock lock(&impl_->queue_mu);
      if (impl_->queue.empty()) break;
      item = std::move(impl_->queue.front());
      impl_->queue.pop_front();
    }
    std::shared_ptr<Impl::Sub> sub;
    {
      util::MutexLock lock(&impl_->subs_mu);
      auto it = impl_->subs.find(item.first);
      if (it != impl_->subs.end()) sub = it->second;
    }
    if (sub == nullptr || sub->cancelled.load(std::memory_order_acquire)) continue;
    sub->callback(item.second);
    ++ran;
  }
  return ran;
}

std::shared_ptr<Picker> Watcher::NewPicker(const std::string& type, const std::string& group,
                                           const PickerOptions& options, bool ready_only) {
  std::shared_ptr<Picker> picker = discovery::NewPicker(options);
  impl_->loop().RunSync([&] {
    Impl::PickerEntry e{type, group, ready_only, picker};
    picker->Update(impl_->Candidates(e));
    impl_->pickers.push_back(std::move(e));
  });
  return picker;
}

}  // namespace discovery
