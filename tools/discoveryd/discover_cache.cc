#include "discover_cache.h"

#include <zlib.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "discovery/instance.h"
#include "nlohmann/json.hpp"

namespace discoveryd {

std::string GzipCompress(std::string_view body) {
  z_stream zs{};
  // 15 + 16: a gzip wrapper (RFC 1952), not zlib's.
  if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) !=
      Z_OK) {
    return "";
  }
  std::string out;
  out.resize(deflateBound(&zs, static_cast<uLong>(body.size())) + 32);
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(body.data()));
  zs.avail_in = static_cast<uInt>(body.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  int rc = deflate(&zs, Z_FINISH);
  size_t n = zs.total_out;
  deflateEnd(&zs);
  if (rc != Z_STREAM_END) return "";
  out.resize(n);
  out.shrink_to_fit();
  return out;
}

bool AcceptsGzip(std::string_view accept_encoding_std) {
  const absl::string_view accept_encoding(accept_encoding_std.data(), accept_encoding_std.size());
  for (absl::string_view part : absl::StrSplit(accept_encoding, ',')) {
    std::vector<absl::string_view> params = absl::StrSplit(part, ';');
    absl::string_view coding = absl::StripAsciiWhitespace(params[0]);
    if (!absl::EqualsIgnoreCase(coding, "gzip") && coding != "*") continue;
    double q = 1;
    for (size_t i = 1; i < params.size(); ++i) {
      absl::string_view p = absl::StripAsciiWhitespace(params[i]);
      if (absl::StartsWithIgnoreCase(p, "q=") && !absl::SimpleAtod(p.substr(2), &q)) q = 0;
    }
    if (q > 0) return true;
  }
  return false;
}

SharedBody DiscoverEntry::Gzip() const {
  if (body == nullptr || body->size() < kMinGzipBytes) return nullptr;
  std::call_once(gzip_once_, [this] {
    std::string z = GzipCompress(*body);
    if (!z.empty()) gzip_ = std::make_shared<const std::string>(std::move(z));
    if (gzip_counter_ != nullptr) gzip_counter_->fetch_add(1);
    gzip_done_.store(true);
  });
  return gzip_;
}

bool DiscoverEntry::gzip_ready() const {
  return body == nullptr || body->size() < kMinGzipBytes || gzip_done_.load();
}

bool DiscoverEntry::Matches(std::string_view if_none_match_std) const {
  const absl::string_view if_none_match(if_none_match_std.data(), if_none_match_std.size());
  for (absl::string_view tag : absl::StrSplit(if_none_match, ',')) {
    tag = absl::StripAsciiWhitespace(tag);
    if (tag == "*") return true;
    if (absl::StartsWith(tag, "W/")) tag.remove_prefix(2);  // If-None-Match compares weakly
    if (tag == etag || tag == gzip_etag) return true;
  }
  return false;
}

std::string DiscoverCache::Key(const discovery::Filter& filter) {
  return absl::StrCat(filter.type, "\n", filter.group, "\n",
                      filter.status ? std::string(ToString(*filter.status)) : "");
}

std::shared_ptr<const DiscoverEntry> DiscoverCache::Find(const discovery::SnapshotPtr& snapshot,
                                                         const discovery::Filter& filter) {
  const std::string key = Key(filter);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = slots_.find(key);
  if (it == slots_.end() || it->second.entry->history != snapshot->history() ||
      it->second.entry->revision != snapshot->revision()) {
    return nullptr;
  }
  lru_.splice(lru_.begin(), lru_, it->second.lru);
  ++stats_.hits;
  return it->second.entry;
}

std::shared_ptr<const DiscoverEntry> DiscoverCache::Get(const discovery::SnapshotPtr& snapshot,
                                                        const std::string& epoch,
                                                        const discovery::Filter& filter) {
  if (auto hit = Find(snapshot, filter)) return hit;
  const std::string key = Key(filter);
  std::shared_ptr<const DiscoverEntry> previous;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = slots_.find(key); it != slots_.end()) previous = it->second.entry;
  }
  // Built outside the lock: O(matching instances), and other filters are served meanwhile.
  auto e = std::make_shared<DiscoverEntry>();
  e->history = snapshot->history();
  e->key = key;
  e->epoch = epoch;
  e->revision = snapshot->revision();
  e->gzip_counter_ = &gzip_encoded_;
  std::string body = "{\"instances\":[";
  bool first = true;
  for (const discovery::InstancePtr& in : snapshot->Select(filter)) {
    if (!first) body += ',';
    first = false;
    body += discovery::InstanceToJson(*in).dump(-1, ' ', false,
                                                nlohmann::json::error_handler_t::replace);
  }
  body += ']';
  e->instances_bytes = body.size();
  absl::StrAppend(&body, ",\"revision\":", e->revision, "}");
  // The matching set is unchanged since `previous` (same history): keep its index, so a
  // blocking query does not wake for changes elsewhere in the store.
  const bool same_set = previous != nullptr && previous->history == e->history &&
                        previous->revision <= e->revision &&
                        previous->instances_bytes == e->instances_bytes &&
                        std::string_view(*previous->body).substr(0, previous->instances_bytes) ==
                            std::string_view(body).substr(0, e->instances_bytes);
  e->index = same_set ? previous->index : e->revision;
  e->body = std::make_shared<const std::string>(std::move(body));
  e->etag = absl::StrCat("\"", epoch, "-", e->revision, "\"");
  e->gzip_etag = absl::StrCat("\"", epoch, "-", e->revision, "-gzip\"");

  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.misses;
  const size_t size = e->body->size();
  auto it = slots_.find(key);
  if (it != slots_.end()) {
    // A racing builder may have stored a newer snapshot's entry: keep the newer one.
    if (it->second.entry->history == e->history && it->second.entry->revision > e->revision) {
      return e;
    }
    body_bytes_ -= it->second.entry->body->size();
    lru_.erase(it->second.lru);
    slots_.erase(it);
  }
  if (size > options_.max_bytes) {
    ++stats_.too_large;  // served, not kept: keeping it would push out everything else
    return e;
  }
  EvictLocked(1, size);
  lru_.push_front(key);
  slots_.emplace(key, Slot{e, lru_.begin()});
  body_bytes_ += size;
  return e;
}

void DiscoverCache::EvictLocked(size_t adding_entries, size_t adding_bytes) {
  const size_t max_entries = std::max<size_t>(1, options_.max_entries);
  while (!lru_.empty() && (slots_.size() + adding_entries > max_entries ||
                           body_bytes_ + adding_bytes > options_.max_bytes)) {
    auto it = slots_.find(lru_.back());
    body_bytes_ -= it->second.entry->body->size();
    slots_.erase(it);
    lru_.pop_back();
    ++stats_.evictions;
  }
}

DiscoverCache::Stats DiscoverCache::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  Stats s = stats_;
  s.entries = slots_.size();
  for (const auto& [key, slot] : slots_) {
    s.bytes += slot.entry->body->size();
    if (slot.entry->gzip_ready()) {
      if (SharedBody z = slot.entry->Gzip()) s.bytes += z->size();
    }
  }
  s.gzip_encoded = gzip_encoded_.load();
  return s;
}

}  // namespace discoveryd
