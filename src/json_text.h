// Internal: JSON text without a document tree, for the instance codec's fast paths
// (instance_decode_fast.cc, instance_encode.cc): UTF-8 well-formedness, string escaping as
// nlohmann's dump writes it, and a strict SAX-style scanner. Each accepts only what it
// handles exactly as nlohmann does and says so otherwise, so that its caller can fall back.
#pragma once

#include <array>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace discovery::json_text {

// The length (2..4) of the well-formed UTF-8 sequence (RFC 3629: no overlong forms, no
// surrogates, at most U+10FFFF; the set nlohmann accepts) starting with a byte >= 0x80 at `p`,
// `left` bytes available; 0 if there is none.
inline size_t Utf8SequenceLength(const char* p, size_t left) {
  const auto b = [p](size_t i) { return static_cast<unsigned char>(p[i]); };
  const auto in = [](unsigned char x, unsigned char lo, unsigned char hi) {
    return x >= lo && x <= hi;
  };
  const unsigned char c = b(0);
  const auto cont = [&](size_t i) { return in(b(i), 0x80, 0xBF); };
  if (in(c, 0xC2, 0xDF)) return left >= 2 && cont(1) ? 2 : 0;
  if (c == 0xE0) return left >= 3 && in(b(1), 0xA0, 0xBF) && cont(2) ? 3 : 0;
  if (in(c, 0xE1, 0xEC) || in(c, 0xEE, 0xEF)) return left >= 3 && cont(1) && cont(2) ? 3 : 0;
  if (c == 0xED) return left >= 3 && in(b(1), 0x80, 0x9F) && cont(2) ? 3 : 0;
  if (c == 0xF0) return left >= 4 && in(b(1), 0x90, 0xBF) && cont(2) && cont(3) ? 4 : 0;
  if (in(c, 0xF1, 0xF3)) return left >= 4 && cont(1) && cont(2) && cont(3) ? 4 : 0;
  if (c == 0xF4) return left >= 4 && in(b(1), 0x80, 0x8F) && cont(2) && cont(3) ? 4 : 0;
  return 0;
}

// Appends `s` as a JSON string exactly as nlohmann's dump (ensure_ascii off) writes it: the
// quote, the backslash and the control characters escaped (b f n r t by name, the others as
// u00xx), every other byte as it is. False, with nothing appended, when `s` is not well-formed
// UTF-8 (nlohmann replaces or throws there: the caller decides).
inline bool AppendString(std::string* out, std::string_view s) {
  const size_t rollback = out->size();
  out->reserve(out->size() + s.size() + 2);
  *out += '"';
  size_t run = 0;  // start of the bytes not yet copied
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {  // one pass: the UTF-8 check rides along with the escaping
      const size_t n = Utf8SequenceLength(s.data() + i, s.size() - i);
      if (n == 0) {
        out->resize(rollback);
        return false;
      }
      i += n - 1;
      continue;
    }
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out->append(s.data() + run, i - run);
    run = i + 1;
    switch (c) {
      case '"':
        *out += "\\\"";
        break;
      case '\\':
        *out += "\\\\";
        break;
      case '\b':
        *out += "\\b";
        break;
      case '\f':
        *out += "\\f";
        break;
      case '\n':
        *out += "\\n";
        break;
      case '\r':
        *out += "\\r";
        break;
      case '\t':
        *out += "\\t";
        break;
      default: {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\u%04x", c);
        *out += buf;
      }
    }
  }
  out->append(s.data() + run, s.size() - run);
  *out += '"';
  return true;
}

// A strict JSON scanner: every callback of `h` (nlohmann's SAX names: null, boolean,
// number_integer, number_unsigned, number_float, string, start_object, key, end_object,
// start_array, end_array) in document order; false at the first thing it does not accept
// (invalid JSON, or valid JSON it leaves to nlohmann: \u escapes, integers beyond 64 bits,
// doubles out of range, nesting deeper than `max_depth`) or a callback refused.
template <class Handler>
class JsonScanner {
 public:
  JsonScanner(std::string_view json, Handler* h, int max_depth)
      : p_(json.data()), end_(p_ + json.size()), h_(h), max_depth_(max_depth) {}

  bool Document() {
    SkipSpace();
    if (!Value(0)) return false;
    SkipSpace();
    return p_ == end_;
  }

 private:
  bool Value(int depth) {
    if (p_ == end_) return false;
    switch (*p_) {
      case '{':
        return Object(depth + 1);
      case '[':
        return Array(depth + 1);
      case '"': {
        std::string s;
        return String(&s) && h_->string(s);
      }
      case 't':
        return Literal("true") && h_->boolean(true);
      case 'f':
        return Literal("false") && h_->boolean(false);
      case 'n':
        return Literal("null") && h_->null();
      default:
        return Number();
    }
  }

  bool Object(int depth) {
    if (depth > max_depth_) return false;
    ++p_;
    if (!h_->start_object(0)) return false;
    SkipSpace();
    if (Eat('}')) return h_->end_object();
    for (;;) {
      SkipSpace();
      std::string k;
      if (p_ == end_ || *p_ != '"' || !String(&k) || !h_->key(k)) return false;
      SkipSpace();
      if (!Eat(':')) return false;
      SkipSpace();
      if (!Value(depth)) return false;
      SkipSpace();
      if (Eat(',')) continue;
      return Eat('}') && h_->end_object();
    }
  }

  bool Array(int depth) {
    if (depth > max_depth_) return false;
    ++p_;
    if (!h_->start_array(0)) return false;
    SkipSpace();
    if (Eat(']')) return h_->end_array();
    for (;;) {
      SkipSpace();
      if (!Value(depth)) return false;
      SkipSpace();
      if (Eat(',')) continue;
      return Eat(']') && h_->end_array();
    }
  }

  // A string at p_ (its opening quote); plain runs are copied whole. No \u escapes (left to
  // nlohmann, which pairs surrogates); UTF-8 must be well-formed (RFC 3629), as nlohmann checks.
  bool String(std::string* out) {
    ++p_;
    for (;;) {
      const char* run = p_;
      while (p_ != end_ && kPlain[static_cast<unsigned char>(*p_)]) ++p_;
      out->append(run, p_);
      if (p_ == end_) return false;
      const auto c = static_cast<unsigned char>(*p_);
      if (c == '"') {
        ++p_;
        return true;
      }
      if (c == '\\') {
        if (++p_ == end_) return false;
        switch (*p_++) {
          case '"':
            *out += '"';
            break;
          case '\\':
            *out += '\\';
            break;
          case '/':
            *out += '/';
            break;
          case 'b':
            *out += '\b';
            break;
          case 'f':
            *out += '\f';
            break;
          case 'n':
            *out += '\n';
            break;
          case 'r':
            *out += '\r';
            break;
          case 't':
            *out += '\t';
            break;
          default:
            return false;  // \u, or not an escape
        }
        continue;
      }
      if (c < 0x20 || !Utf8(out)) return false;
    }
  }

  // Appends the well-formed UTF-8 sequence of 2..4 bytes at p_ (a run stops at its lead byte).
  bool Utf8(std::string* out) {
    const size_t n = Utf8SequenceLength(p_, static_cast<size_t>(end_ - p_));
    if (n == 0) return false;
    out->append(p_, n);
    p_ += n;
    return true;
  }

  // -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? as nlohmann reads it: without fraction or
  // exponent an unsigned (or, negative, a signed) 64-bit integer, else a double (correctly
  // rounded both: from_chars here, strtod there). An integer out of range is left to nlohmann
  // (it makes it a double), as is a double out of range.
  bool Number() {
    const char* start = p_;
    Eat('-');
    if (!Eat('0')) {
      if (p_ == end_ || *p_ < '1' || *p_ > '9') return false;
      Digits();
    }
    bool fractional = false;
    if (Eat('.')) {
      if (!Digits()) return false;
      fractional = true;
    }
    if (p_ != end_ && (*p_ == 'e' || *p_ == 'E')) {
      ++p_;
      if (!Eat('+')) Eat('-');
      if (!Digits()) return false;
      fractional = true;
    }
    if (fractional) {
      double d = 0;
      auto [ptr, ec] = std::from_chars(start, p_, d);
      if (ec != std::errc() || ptr != p_) return false;
      std::string token(start, p_);
      return h_->number_float(d, token);
    }
    if (*start == '-') {
      int64_t v = 0;
      auto [ptr, ec] = std::from_chars(start, p_, v);
      return ec == std::errc() && ptr == p_ && h_->number_integer(v);
    }
    uint64_t v = 0;
    auto [ptr, ec] = std::from_chars(start, p_, v);
    return ec == std::errc() && ptr == p_ && h_->number_unsigned(v);
  }

  bool Digits() {
    const char* from = p_;
    while (p_ != end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    return p_ != from;
  }

  bool Literal(std::string_view word) {
    if (static_cast<size_t>(end_ - p_) < word.size() || std::string_view(p_, word.size()) != word) {
      return false;
    }
    p_ += word.size();
    return true;
  }

  bool Eat(char c) {
    if (p_ == end_ || *p_ != c) return false;
    ++p_;
    return true;
  }

  void SkipSpace() {
    while (p_ != end_ && (*p_ == ' ' || *p_ == '\n' || *p_ == '\r' || *p_ == '\t')) ++p_;
  }

  // The bytes a string's plain run takes as they are: printable ASCII but the quote and the
  // backslash (one table load per byte instead of four comparisons).
  static constexpr std::array<bool, 256> kPlain = [] {
    std::array<bool, 256> t{};
    for (int c = 0x20; c < 0x80; ++c) t[c] = c != '"' && c != '\\';
    return t;
  }();

  const char* p_;
  const char* end_;
  Handler* h_;
  int max_depth_;
};

}  // namespace discovery::json_text
