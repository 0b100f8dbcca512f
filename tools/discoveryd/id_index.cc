#include "id_index.h"

#include <algorithm>

namespace discoveryd {

void IdIndex::Apply(const discovery::ChangeEvent& ev) {
  // An event's instance and previous share type and instanceId (the etcd key).
  const discovery::InstancePtr& in = ev.instance;
  if (in == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (ev.type == discovery::ChangeType::kRemoved) {
    auto it = by_id_.find(in->instance_id);
    if (it == by_id_.end()) return;
    Slots& slots = it->second;
    auto slot = std::find_if(slots.begin(), slots.end(),
                             [&](const discovery::InstancePtr& p) { return p->type == in->type; });
    if (slot == slots.end()) return;
    slots.erase(slot);
    --size_;
    if (slots.empty()) by_id_.erase(it);
    return;
  }
  Slots& slots = by_id_[in->instance_id];
  for (discovery::InstancePtr& p : slots) {
    if (p->type == in->type) {
      p = in;  // an update (or an initial event for a key already seen): same key
      return;
    }
  }
  slots.push_back(in);
  ++size_;
}

std::vector<std::string> IdIndex::TypesOf(std::string_view id) const {
  std::vector<std::string> types;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = by_id_.find(absl::string_view(id.data(), id.size()));
    if (it == by_id_.end()) return types;
    for (const discovery::InstancePtr& p : it->second) types.push_back(p->type);
  }
  std::sort(types.begin(), types.end());
  return types;
}

size_t IdIndex::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return size_;
}

}  // namespace discoveryd
