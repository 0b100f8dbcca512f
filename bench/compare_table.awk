# Markdown table of bench/compare.sh's and bench/gateway_compare.sh's results. Input lines (tab
# separated):
#   figure  side(library|raw, or the -v a= / b= names)  run  loadavg-1min  JSON
# Usage: awk -F'\t' -v runs=2 [-v a=gateway -v b=direct] -f compare_table.awk results.tsv
# Side a is the one measured (library, gateway), b its baseline (raw, direct); "ratio" = a / b.
# Exit status 1 when a run reported "error". Plain awk (no JSON tool needed): the figures
# read here are top-level numbers of the one-line JSON.

function field(js, name,    m) {
  if (match(js, "\"" name "\":-?[0-9.eE+-]+")) {
    m = substr(js, RSTART, RLENGTH)
    sub(/^"[^"]*":/, "", m)
    return m
  }
  return ""
}

function fmt(v) {
  if (v == "") return "-"
  if (v + 0 >= 100) return sprintf("%.0f", v)
  if (v == int(v)) return sprintf("%d", v)
  return sprintf("%.3g", v)
}

# rows per figure kind: label|field|kind|target|bound
BEGIN {
  rows["register"] = "registrations/s|per_s|ratio_min|>= 0.9x raw|0.9;" \
    "p50 ms|p50_ms|report||0;p99 ms|p99_ms|report||0"
  rows["watch"] = "ack p50 ms|ack_p50_ms|report||0;ack p99 ms|ack_p99_ms|plus_max|<= raw + 0.1 ms|0.1;" \
    "ack p99.9 ms|ack_p999_ms|report||0;send p50 ms|send_p50_ms|plus_max|<= raw + 0.02 ms|0.02;" \
    "send p99 ms|send_p99_ms|report||0;achieved puts/s|achieved_rate_per_s|report||0"
  rows["keepalive"] = "CPU % of a core|cpu_pct_of_core|ratio_max|<= 1.2x raw|1.2;" \
    "us CPU per keepalive|cpu_us_per_keepalive|report||0;" \
    "library threads|threads_library|lib_max|<= 4|4;gRPC threads|threads_grpc|report||0;" \
    "leases lost|leases_lost|lib_max|0|0"
  # bench/gateway_compare.sh: gateway mode (a) vs direct (b) ...
  rows["gw-register"] = "registrations/s|per_s|report||0;p50 ms|p50_ms|report||0;" \
    "p99 ms|p99_ms|report||0;discoveryd CPU % (during registration)|discoveryd_cpu_pct|report||0;" \
    "etcd CPU % (during registration)|etcd_cpu_pct|report||0"
  rows["gw-keepalive"] = "client CPU % of a core|cpu_pct_of_core|lib_max|gateway <= 5 %|5;" \
    "us client CPU per heartbeat|cpu_us_per_keepalive|report||0;" \
    "TCP connections carrying heartbeats|gateway_connections|lib_eq|1|1;" \
    "TCP connections open to the gateway|gateway_connections_open|report||0;" \
    "discoveryd CPU %|discoveryd_cpu_pct|report||0;etcd CPU %|etcd_cpu_pct|report||0;" \
    "leases lost|leases_lost|lib_max|0|0;leases at risk (no answer for 2/3 TTL)|lease_at_risk|lib_max|0|0"
  rows["gw-watch"] = "ack p50 ms|ack_p50_ms|report||0;ack p99 ms|ack_p99_ms|plus_max|<= direct + 5 ms|5;" \
    "ack p99.9 ms|ack_p999_ms|report||0;send p50 ms|send_p50_ms|report||0;" \
    "achieved puts/s|achieved_rate_per_s|report||0;events missing|missing|lib_max|0|0"
  # ... and the library on Redis (a) vs raw hiredis (b).
  rows["redis-register"] = "registrations/s|per_s|report||0;p50 ms|p50_ms|report||0;" \
    "p99 ms|p99_ms|report||0;redis CPU % (during registration)|redis_cpu_pct|report||0"
  rows["redis-keepalive"] = "client CPU % of a core|cpu_pct_of_core|report||0;" \
    "us client CPU per keepalive|cpu_us_per_keepalive|report||0;" \
    "redis CPU %|redis_cpu_pct|report||0;leases lost|leases_lost|lib_max|0|0"
  rows["redis-watch"] = "ack p50 ms|ack_p50_ms|report||0;ack p99 ms|ack_p99_ms|report||0;" \
    "ack p99.9 ms|ack_p999_ms|report||0;send p50 ms|send_p50_ms|report||0;" \
    "achieved puts/s|achieved_rate_per_s|report||0;events missing|missing|lib_max|0|0"
  if (a == "") a = "library"
  if (b == "") b = "raw"
  nfig = 0
  errors = 0
}

{
  fig = $1; side = $2; js = $5
  if (!(fig in seen)) { seen[fig] = 1; order[++nfig] = fig }
  cnt[fig, side]++
  json[fig, side, cnt[fig, side]] = js
  loads[fig] = (loads[fig] == "" ? "" : loads[fig] " ") $4
  if (js ~ /"error":/) { errors++; errtext[errors] = fig " " side ": " js }
}

END {
  head = "| figure |"
  for (i = 1; i <= runs; i++) head = head " " a " run " i " |"
  for (i = 1; i <= runs; i++) head = head " " b " run " i " |"
  head = head " " (a == "library" ? "lib" : a) "/" b " (means) | target | met | loadavg (1 min) per run |"
  print head
  sep = "|"
  for (i = 1; i <= 5 + 2 * runs; i++) sep = sep "---|"
  print sep
  for (f = 1; f <= nfig; f++) {
    fig = order[f]
    kind_key = fig
    sub(/ .*/, "", kind_key)
    nr = split(rows[kind_key], rowlist, ";")
    for (r = 1; r <= nr; r++) {
      split(rowlist[r], p, "|")
      label = p[1]; name = p[2]; kind = p[3]; target = p[4]; bound = p[5] + 0
      line = "| " fig ": " label " |"
      lsum = 0; ln = 0; lmax = ""; rsum = 0; rn = 0
      for (i = 1; i <= runs; i++) {
        v = (i <= cnt[fig, a]) ? field(json[fig, a, i], name) : ""
        line = line " " fmt(v) " |"
        if (v != "") { lsum += v; ln++; if (lmax == "" || v + 0 > lmax + 0) lmax = v }
      }
      for (i = 1; i <= runs; i++) {
        v = (i <= cnt[fig, b]) ? field(json[fig, b, i], name) : ""
        line = line " " fmt(v) " |"
        if (v != "") { rsum += v; rn++ }
      }
      lm = ln ? lsum / ln : ""; rm = rn ? rsum / rn : ""
      ratio = (lm != "" && rm != "" && rm != 0) ? sprintf("%.2fx", lm / rm) : "-"
      met = ""
      if (kind == "ratio_min" && ratio != "-") met = (lm / rm >= bound) ? "yes" : "no"
      if (kind == "ratio_max" && ratio != "-") met = (lm / rm <= bound) ? "yes" : "no"
      if (kind == "plus_max" && lm != "" && rm != "") met = (lm <= rm + bound) ? "yes" : "no"
      if (kind == "lib_max" && lmax != "") met = (lmax + 0 <= bound) ? "yes" : "no"
      if (kind == "lib_eq" && ln) met = (lmax + 0 == bound && lsum == bound * ln) ? "yes" : "no"
      print line " " ratio " | " target " | " met " | " loads[fig] " |"
    }
  }
  for (e = 1; e <= errors; e++) print "\nerror: " errtext[e]
  exit errors ? 1 : 0
}
