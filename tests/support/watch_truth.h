// The watcher truth checks shared by the suites that run on every store (watcher_test,
// registrar_test, both_modes_test): a sample instance, the events of one subscription and
// their replay, and "the cache holds exactly the store's valid instances".
#ifndef DISCOVERY_TESTS_SUPPORT_WATCH_TRUTH_H_
#define DISCOVERY_TESTS_SUPPORT_WATCH_TRUTH_H_

#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "discovery/watcher.h"
#include "store_view.h"

namespace discovery::testing {

// A `type` instance in `group` on 127.0.0.1, port game=7000 (empty id: the registrar makes one).
inline Instance Make(const std::string& type, const std::string& group,
                     const std::string& id = "") {
  Instance in;
  in.instance_id = id;
  in.type = type;
  in.group = group;
  in.hostname = "h";
  in.private_ip = "127.0.0.1";
  in.ports = {{"game", 7000}};
  return in;
}

// The events of one subscription, and their replay: applying them in order from empty must
// give the cache (nothing lost, nothing added twice, no change of an unknown instance).
struct EventRecorder {
  std::mutex mu;
  std::vector<ChangeEvent> events;
  std::function<void(const ChangeEvent&)> Callback() {
    return [this](const ChangeEvent& ev) {
      std::lock_guard<std::mutex> lock(mu);
      events.push_back(ev);
    };
  }
  size_t size() {
    std::lock_guard<std::mutex> lock(mu);
    return events.size();
  }
  std::vector<ChangeEvent> Take() {
    std::lock_guard<std::mutex> lock(mu);
    return events;
  }
  // "<type>/<id>" -> value after replaying every event; `errors` collects what went wrong.
  std::map<std::string, std::string> Replay(std::vector<std::string>* errors) {
    std::map<std::string, std::string> out;
    for (const ChangeEvent& ev : Take()) {
      const std::string key = ev.instance->type + "/" + ev.instance->instance_id;
      if (ev.type == ChangeType::kAdded && out.count(key) != 0) {
        errors->push_back("added twice: " + key);
      } else if (ev.type != ChangeType::kAdded && out.count(key) == 0) {
        errors->push_back("change of unknown: " + key);
      }
      if (ev.type == ChangeType::kRemoved) {
        out.erase(key);
      } else {
        out[key] = EncodeInstance(*ev.instance);
      }
    }
    return out;
  }
};

// "<type>/<id>" -> canonical encoding of every instance in the watcher's cache.
inline std::map<std::string, std::string> CacheByKey(const Watcher& w) {
  std::map<std::string, std::string> out;
  for (const auto& in : w.snapshot()->All()) {
    out[in->type + "/" + in->instance_id] = EncodeInstance(*in);
  }
  return out;
}

// The valid instances among raw key -> value pairs, "/services/<type>/<id>" -> canonical
// encoding (what a watcher's cache must hold).
inline std::map<std::string, std::string> ValidInstances(
    const std::map<std::string, std::string>& raw) {
  std::map<std::string, std::string> out;
  for (const auto& [k, v] : raw) {
    auto in = DecodeInstance(v);
    if (in.ok()) out["/services/" + in->type + "/" + in->instance_id] = EncodeInstance(*in);
  }
  return out;
}

// True when the watcher's cache holds exactly `want` (ValidInstances), values included;
// `diff` says what differs.
inline bool CacheEquals(const std::map<std::string, std::string>& want, const Watcher& w,
                        std::string* diff = nullptr) {
  std::map<std::string, std::string> have;
  for (const auto& in : w.snapshot()->All()) {
    have["/services/" + in->type + "/" + in->instance_id] = EncodeInstance(*in);
  }
  if (want == have) return true;
  if (diff != nullptr) {
    *diff = absl::StrCat("store has ", want.size(), ", cache has ", have.size());
    for (const auto& [k, v] : want) {
      auto it = have.find(k);
      if (it == have.end()) {
        absl::StrAppend(diff, "; missing ", k);
      } else if (it->second != v) {
        absl::StrAppend(diff, "; differs ", k);
      }
    }
    for (const auto& [k, v] : have) {
      if (want.count(k) == 0) absl::StrAppend(diff, "; ghost ", k);
    }
  }
  return false;
}

// True when the watcher's cache holds exactly the store's valid instances.
inline bool CacheEqualsStore(StoreView& store, const Watcher& w, std::string* diff = nullptr) {
  return CacheEquals(ValidInstances(store.All()), w, diff);
}

}  // namespace discovery::testing

#endif  // DISCOVERY_TESTS_SUPPORT_WATCH_TRUTH_H_
