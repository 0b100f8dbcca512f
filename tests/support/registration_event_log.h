// RegistrationEventLog: records a Registrar's events (RegistrationOptions::on_event) so a test
// can count them by type. Shared by the registrar suites of every backend.
#pragma once

#include <functional>
#include <mutex>
#include <vector>

#include "discovery/registrar.h"

namespace discovery::testing {

struct RegistrationEventLog {
  std::mutex mu;
  std::vector<RegistrationEvent> events;
  std::function<void(const RegistrationEvent&)> Callback() {
    return [this](const RegistrationEvent& ev) {
      std::lock_guard<std::mutex> lock(mu);
      events.push_back(ev);
    };
  }
  int Count(RegistrationEventType t) {
    std::lock_guard<std::mutex> lock(mu);
    int n = 0;
    for (auto& e : events) n += e.type == t;
    return n;
  }
};

}  // namespace discovery::testing
