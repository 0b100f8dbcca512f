// libFuzzer target for the gateway mode's SSE parser (src/gateway/sse_parser.h): whatever a
// gateway (or something pretending to be one) streams, Feed must return (never crash or grow
// past its limits), and how the bytes are split must not change the events.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/sse_parser.h"

namespace {

struct Seen {
  std::string type, data, last_id;
  bool has_id;
  bool operator==(const Seen&) const = default;
};

std::vector<Seen> Parse(std::string_view input, size_t split, bool* ok) {
  discovery::gateway::SseParser p(/*max_line=*/4096, /*max_event=*/16384);
  std::vector<Seen> out;
  auto cb = [&](const discovery::gateway::SseParser::Event& e) {
    if (e.data.size() > 16384) std::abort();  // over the event limit
    out.push_back({e.type, e.data, e.last_id, e.has_id});
  };
  *ok = p.Feed(input.substr(0, split), cb) && p.Feed(input.substr(split), cb);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  bool ok_whole = false;
  bool ok_split = false;
  std::vector<Seen> whole = Parse(input, input.size(), &ok_whole);
  std::vector<Seen> split = Parse(input, input.size() / 2, &ok_split);
  // Same bytes, same events (a failed parse may stop at different points: compare only when
  // both succeeded).
  if (ok_whole && ok_split && !(whole == split)) std::abort();
  return 0;
}
