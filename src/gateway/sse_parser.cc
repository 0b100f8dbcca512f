#include "gateway/sse_parser.h"

namespace discovery::gateway {

bool SseParser::Feed(std::string_view bytes, const Callback& on_event) {
  if (failed_) return false;
  size_t i = 0;
  if (!bom_checked_) {
    // The BOM may be split across Feeds: wait for three bytes (or a mismatch).
    std::string_view bom = "\xEF\xBB\xBF";
    std::string head = line_ + std::string(bytes.substr(0, 3));
    size_t n = std::min(head.size(), bom.size());
    if (head.compare(0, n, bom.substr(0, n)) == 0 && head.size() < bom.size()) {
      line_ = head;
      return true;
    }
    bom_checked_ = true;
    if (head.compare(0, bom.size(), bom) == 0) {
      size_t from_bytes = bom.size() - line_.size();
      line_.clear();
      i = from_bytes;
    }
  }
  for (; i < bytes.size(); ++i) {
    char c = bytes[i];
    if (after_cr_) {
      after_cr_ = false;
      if (c == '\n') continue;
    }
    if (c == '\r' || c == '\n') {
      after_cr_ = c == '\r';
      if (!Line(line_, on_event)) return false;
      line_.clear();
      continue;
    }
    if (line_.size() >= max_line_) {
      failed_ = true;
      return false;
    }
    line_.push_back(c);
  }
  return true;
}

bool SseParser::Line(std::string_view line, const Callback& on_event) {
  if (line.empty()) {
    // Dispatch.
    if (data_.empty() && !has_id_) {
      type_.clear();
      return true;
    }
    if (!data_.empty()) {
      Event e;
      e.type = type_.empty() ? "message" : type_;
      e.data = data_.substr(0, data_.size() - 1);  // the last '\n' goes
      e.last_id = last_id_;
      e.has_id = has_id_;
      on_event(e);
    }
    data_.clear();
    type_.clear();
    has_id_ = false;
    return true;
  }
  if (line.front() == ':') {
    ++comments_;
    return true;
  }
  std::string_view field = line;
  std::string_view value;
  if (size_t colon = line.find(':'); colon != std::string_view::npos) {
    field = line.substr(0, colon);
    value = line.substr(colon + 1);
    if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  }
  if (field == "event") {
    type_ = std::string(value);
  } else if (field == "data") {
    if (data_.size() + value.size() + 1 > max_event_) {
      failed_ = true;
      return false;
    }
    data_.append(value);
    data_.push_back('\n');
  } else if (field == "id") {
    if (value.find('\0') == std::string_view::npos) {
      last_id_ = std::string(value);
      has_id_ = true;
    }
  } else if (field == "retry") {
    // At most 18 digits fit an int64_t; a longer (or non-digit) value is ignored, as the
    // spec says for anything that is not ASCII digits. The length is checked before any
    // arithmetic: fuzzing found "retry:3111…" (54 digits) overflowing the product.
    if (value.empty() || value.size() > 18) return true;
    int64_t ms = 0;
    for (char c : value) {
      if (c < '0' || c > '9') return true;
      ms = ms * 10 + (c - '0');
    }
    retry_ms_ = ms;
  }
  return true;
}

}  // namespace discovery::gateway
