// Mass-expiry protection (when most ready instances of a type vanish at once, pickers keep
// the last good set for a bounded time) and the pickers that follow the cache.
#include <set>

#include "spdlog/spdlog.h"
#include "util/clock.h"
#include "watcher_impl.h"

namespace discovery {

size_t Watcher::Impl::ReadyCount(const std::string& type) {
  auto it = ready_count.find(type);
  return it == ready_count.end() ? 0 : it->second;
}

// Returns true when the protection state of `type` changed.
bool Watcher::Impl::EvaluateProtection(const std::string& type, Protection& p, absl::Time now) {
  while (!p.removed.empty() && now - p.removed.front().first > opts.protect_window) {
    p.removed.pop_front();
  }
  if (opts.protect_threshold <= 0) return false;
  size_t ready = ReadyCount(type);
  if (!p.active) {
    size_t gone = p.removed.size();
    size_t before = ready + gone;
    if (gone == 0 || before < 2 ||
        static_cast<double>(gone) <= opts.protect_threshold * static_cast<double>(before)) {
      return false;
    }
    p.active = true;
    p.until = now + opts.protect_hold;
    p.baseline = before;
    p.kept.clear();
    for (auto& [t, in] : p.removed) p.kept.push_back(in);
    protection_activations.fetch_add(1);
    SPDLOG_LOGGER_WARN(logger,
                       "mass expiry of type {}: {} of {} ready instances vanished within {}; "
                       "pickers keep the last good set for up to {}",
                       type, gone, before, absl::FormatDuration(opts.protect_window),
                       absl::FormatDuration(opts.protect_hold));
    if (opts.on_protection) opts.on_protection(type, true, before);
    std::weak_ptr<Impl> weak = weak_from_this();
    loop().PostAt(p.until + absl::Milliseconds(1), [weak, type] {
      auto self = weak.lock();
      if (self == nullptr || self->stopping) return;
      auto it = self->protection.find(type);
      if (it != self->protection.end() &&
          self->EvaluateProtection(type, it->second, util::MonoNow())) {
        self->UpdatePickers(type);
      }
    });
    return true;
  }
  bool recovered =
      static_cast<double>(ready) > (1.0 - opts.protect_threshold) * static_cast<double>(p.baseline);
  if (now < p.until && !recovered) return false;
  p.active = false;
  p.kept.clear();
  p.removed.clear();
  SPDLOG_LOGGER_INFO(logger, "mass-expiry protection of type {} ended ({}): {} ready", type,
                     recovered ? "recovered" : "hold expired", ready);
  if (opts.on_protection) opts.on_protection(type, false, ready);
  return true;
}

// A group picker reads only its group's range of the chunked set (O(log n + group)); a
// whole-type picker reads the type.
std::vector<InstancePtr> Watcher::Impl::Candidates(const PickerEntry& e) {
  std::vector<InstancePtr> out;
  auto keep = [&](const InstancePtr& in) {
    if (!e.group.empty() && in->group != e.group) return false;
    if (e.ready_only) return in->status == InstanceStatus::kReady;
    return in->status != InstanceStatus::kShuttingDown;
  };
  Snapshot::TypeView view;
  if (auto it = published.find(e.type); it != published.end()) {
    view = Snapshot::TypeView(it->second.get(), 0, it->second->size());
    if (!e.group.empty()) view = view.Group(e.group);
  }
  out.reserve(view.size());
  for (const InstancePtr& in : view) {
    if (keep(in)) out.push_back(in);
  }
  auto pit = protection.find(e.type);
  if (pit != protection.end() && pit->second.active) {
    // Add the vanished instances we keep, unless they are back (same id) or listed twice.
    std::set<std::string> ids;
    for (const InstancePtr& in : view) ids.insert(in->instance_id);
    for (const InstancePtr& in : pit->second.kept) {
      if (keep(in) && ids.insert(in->instance_id).second) out.push_back(in);
    }
  }
  return out;
}

void Watcher::Impl::UpdatePickers(const std::string& type, const std::set<std::string>* groups) {
  for (auto it = pickers.begin(); it != pickers.end();) {
    auto p = it->picker.lock();
    if (p == nullptr) {
      it = pickers.erase(it);
      continue;
    }
    if (it->type == type &&
        (groups == nullptr || it->group.empty() || groups->count(it->group) != 0)) {
      p->Update(Candidates(*it));
    }
    ++it;
  }
}
}  // namespace discovery
