// Links against an installed discovery and exercises the public API without etcd.
#include <iostream>

#include "discovery/instance.h"
#include "discovery/picker.h"
#include "discovery/registrar.h"
#include "discovery/watcher.h"

int main() {
  discovery::Instance in;
  in.instance_id = discovery::NewUlid();
  in.type = "world";
  in.group = "kr-1";
  in.ports["game"] = 7001;
  if (!discovery::ValidateInstance(in).ok()) return 1;
  auto back = discovery::DecodeInstance(discovery::EncodeInstance(in));
  if (!back.ok() || back->instance_id != in.instance_id) return 2;
  auto picker = discovery::NewPicker({});
  picker->Update({std::make_shared<const discovery::Instance>(in)});
  if (picker->Pick() == nullptr) return 3;
  auto conn = discovery::Connection::Create({});
  if (!conn.ok()) return 4;
  std::cout << "consumer ok " << in.instance_id << "\n";
  return 0;
}
