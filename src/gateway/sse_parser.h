// An incremental Server-Sent Events parser per the WHATWG HTML spec ("Interpreting an event
// stream"): lines end in CRLF, LF or CR; `data:` lines are joined with "\n"; `id:` sets the
// last event id (ignored when it contains NUL) and persists across events; `event:` names the
// event (default "message"); `retry:` takes ASCII digits only; lines starting with ':' are
// comments; a field name without ':' has an empty value; one leading space of a value is
// dropped; an empty line dispatches (nothing when the data buffer is empty); a leading UTF-8
// BOM is skipped. Bytes may arrive split anywhere.
//
//   SseParser p;
//   p.Feed(bytes, [](const SseParser::Event& e) { ... });
//
// Thread-compatible. Bounded: a line longer than `max_line` (or an event larger than
// `max_event`) is an error (Feed returns false and the stream should be dropped).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace discovery::gateway {

class SseParser {
 public:
  struct Event {
    std::string type;     // "message" unless `event:` said otherwise
    std::string data;     // data lines joined with '\n'
    std::string last_id;  // the last event id after this event (spec: persists)
    bool has_id = false;  // this event's block carried an `id:` line
  };
  using Callback = std::function<void(const Event&)>;

  explicit SseParser(size_t max_line = 1 << 20, size_t max_event = 16 << 20)
      : max_line_(max_line), max_event_(max_event) {}

  // Parses `bytes`; `on_event` for every complete event. False on an over-long line or event
  // (the parser is then unusable).
  bool Feed(std::string_view bytes, const Callback& on_event);
  // Comment lines seen (keep-alives).
  uint64_t comments() const { return comments_; }
  // The reconnection time from the last valid `retry:` (ms), if any.
  std::optional<int64_t> retry_ms() const { return retry_ms_; }
  const std::string& last_id() const { return last_id_; }

 private:
  bool Line(std::string_view line, const Callback& on_event);

  size_t max_line_;
  size_t max_event_;
  std::string line_;
  bool bom_checked_ = false;
  bool after_cr_ = false;  // the previous byte was CR: a following LF is part of that line end
  bool failed_ = false;
  std::string data_;
  std::string type_;
  bool has_id_ = false;
  std::string last_id_;
  std::optional<int64_t> retry_ms_;
  uint64_t comments_ = 0;
};

}  // namespace discovery::gateway
