#!/usr/bin/env bash
# bench/gateway_compare.sh: the gateway mode (issue 16) against the direct mode, and the Redis
# backend (issue 17) against a raw hiredis client, in ONE run, figure by figure, A B A B.
#
#   bench/gateway_compare.sh                  # the issues' sizes (about 20 minutes here)
#   bench/gateway_compare.sh --quick          # tiny sizes, about two minutes (proves it works)
#   bench/gateway_compare.sh --figures gw-keepalive --keepalive-n 10000 --runs 3
#
# Starts one etcd (Debian's etcd-server) and one discoveryd in front of it, and one redis-server
# (no persistence), each on free 127.0.0.1 ports with data under /dev/shm; stops them by PID on
# exit and removes the work dir (--keep keeps it). Gateway figures: `discovery-bench --gateway
# URL` (A) against `discovery-bench` straight on etcd (B); client CPU from getrusage, etcd's
# and discoveryd's from /proc/<pid>/stat over the same window (--peer-pids), TCP connections
# to the gateway from /proc/self/fd. Redis figures: `discovery-bench --store redis://` (A)
# against `discovery-raw-redis-bench` (B); redis-throughput and redis-resync are one
# `discovery-bench --store redis://` run each whose raw hiredis baseline is in the same run
# (watch-throughput / resync: library and raw figures in one JSON line, a third table). Prints `cat /proc/loadavg` before each run (the
# table's load column is its 1-minute figure), every JSON line, and two markdown tables. Exit
# status 1 when a run reported an error (missed timing targets never fail it), 2 on bad usage
# or when a server does not start.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin_dir="$here/../build/bench"
discoveryd_bin=""
figures="gw-register,gw-keepalive,gw-watch,redis-register,redis-keepalive,redis-watch,redis-throughput,redis-resync"
runs=2
register_n=5000
inflight=16
rate=1000
latency_seconds=10
keepalive_n=10000
keepalive_ttl=10
keepalive_seconds=30
sync_n=20000
run_timeout=600
quick=0
keep=0
me=gateway_compare.sh

usage() {
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
  cat <<EOF2
Options:
  --bin-dir DIR          where discovery-bench and discovery-raw-redis-bench are ($bin_dir)
  --discoveryd PATH      discoveryd (default: BIN_DIR/../tools/discoveryd/discoveryd)
  --figures LIST         comma list of $figures
  --runs N               runs of each side, alternating A/B ($runs)
  --register-n N         registrations per run ($register_n)
  --inflight K           registrations in flight ($inflight)
  --rate R               watch-latency puts per second ($rate)
  --latency-seconds S    watch-latency seconds per run ($latency_seconds)
  --keepalive-n N        leases held ($keepalive_n)
  --keepalive-ttl T      lease TTL seconds ($keepalive_ttl)
  --keepalive-seconds S  measured window seconds ($keepalive_seconds)
  --sync-n N             redis-throughput / redis-resync: instances ($sync_n)
  --run-timeout S        upper bound of one run ($run_timeout)
  --keep                 keep the work dir (results.tsv, server and run logs)
  --quick                tiny sizes: register-n 300, rate 200 for 2 s, keepalive-n 200, ttl 3, 3 s
  --smoke                one run each, smallest sizes (the CTest smoke, about 15 s)
EOF2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir=$2; shift 2 ;;
    --discoveryd) discoveryd_bin=$2; shift 2 ;;
    --figures) figures=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --register-n) register_n=$2; shift 2 ;;
    --inflight) inflight=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --latency-seconds) latency_seconds=$2; shift 2 ;;
    --keepalive-n) keepalive_n=$2; shift 2 ;;
    --keepalive-ttl) keepalive_ttl=$2; shift 2 ;;
    --keepalive-seconds) keepalive_seconds=$2; shift 2 ;;
    --sync-n) sync_n=$2; shift 2 ;;
    --run-timeout) run_timeout=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --quick)
      quick=1
      register_n=300; rate=200; latency_seconds=2
      keepalive_n=200; keepalive_ttl=3; keepalive_seconds=3; sync_n=2000
      shift ;;
    --smoke)
      # CTest (discovery_gateway_compare_smoke): every figure once, smallest sizes, ~15 s.
      quick=1; runs=1
      register_n=50; rate=100; latency_seconds=0.5
      keepalive_n=50; keepalive_ttl=2; keepalive_seconds=1; sync_n=1000
      shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "$me: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

lib=$bin_dir/discovery-bench
raw_redis=$bin_dir/discovery-raw-redis-bench
[ -n "$discoveryd_bin" ] || discoveryd_bin=$bin_dir/../tools/discoveryd/discoveryd
etcd_bin=${ETCD_BIN:-/usr/bin/etcd}
case ",$figures," in *,gw-*) need_gw=1 ;; *) need_gw=0 ;; esac
case ",$figures," in *,redis-*) need_redis=1 ;; *) need_redis=0 ;; esac
for b in "$lib" "$raw_redis"; do
  [ -x "$b" ] || { echo "$me: $b not found or not executable" >&2; exit 2; }
done
if [ "$need_gw" = 1 ]; then
  for b in "$discoveryd_bin" "$etcd_bin"; do
    [ -x "$b" ] || { echo "$me: $b not found or not executable" >&2; exit 2; }
  done
fi
if [ "$need_redis" = 1 ] && ! command -v redis-server >/dev/null; then
  echo "$me: redis-server not found (Debian: redis-server)" >&2; exit 2
fi
case "$runs" in ''|*[!0-9]*|0) echo "$me: --runs must be a positive integer" >&2; exit 2 ;; esac

work=$(mktemp -d /dev/shm/discovery-gwcompare.XXXXXX)
# shellcheck source=servers.sh
. "$here/servers.sh"
# shellcheck disable=SC2317  # called through the trap
cleanup() {
  stop_servers
  if [ "$keep" = 1 ]; then
    rm -rf "$work/etcd" "$work/redis"
    echo "$me: kept $work (results.tsv, stderr.log, etcd.log, discoveryd.log, redis.log)" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# discoveryd and the gateway-mode clients share one token (it never appears in a URL).
export DISCOVERY_API_TOKEN=bench-token-$$
if [ "$need_gw" = 1 ]; then
  start_etcd_retry || exit 2
  start_discoveryd "$discoveryd_bin" "$endpoint" || exit 2
fi
[ "$need_redis" = 0 ] || start_redis || exit 2
gw_peers="etcd=$etcd_pid,discoveryd=$discoveryd_pid"

results=$work/results.tsv
: >"$results"

# run FIGURE SIDE RUN CMD... : one bounded run, its JSON line appended to the results.
run() {
  local figure=$1 side=$2 n=$3
  shift 3
  local load
  load=$(cat /proc/loadavg)
  echo "## $figure $side run $n: loadavg $load" >&2
  local out
  out=$(timeout "$run_timeout" "$@" 2>>"$work/stderr.log" | tail -1) ||
    { echo "   (the run failed or timed out; its stderr:)"; tail -20 "$work/stderr.log"; } >&2
  [ -n "$out" ] || out='{"error":"no output"}'
  echo "   $out" >&2
  printf '%s\t%s\t%s\t%s\t%s\n' "$figure" "$side" "$n" "${load%% *}" "$out" >>"$results"
}

# The command of each side (timeout runs binaries, not shell functions).
gw=("$lib" --endpoints "${endpoint:-}" --gateway "${discoveryd_url:-}" --peer-pids "$gw_peers")
direct=("$lib" --endpoints "${endpoint:-}" --peer-pids "$gw_peers")
lib_redis=("$lib" --store "${redis_url:-}" --peer-pids "redis=$redis_pid")
raw_opts=(--url "${redis_url:-}" --peer-pids "redis=$redis_pid")

register_args=(--scenario register --register-n "$register_n" --register-inflight "$inflight"
  --register-api async)
keepalive_args=(--scenario keepalive --keepalive-n "$keepalive_n" --keepalive-ttl "$keepalive_ttl"
  --keepalive-seconds "$keepalive_seconds")
watch_args=(--scenario watch-latency --latency-rate "$rate" --latency-seconds "$latency_seconds")

IFS=',' read -r -a figure_list <<<"$figures"
for fig in "${figure_list[@]}"; do
  for r in $(seq "$runs"); do
    case "$fig" in
      gw-register)
        run "gw-register K=$inflight" gateway "$r" "${gw[@]}" "${register_args[@]}"
        run "gw-register K=$inflight" direct "$r" "${direct[@]}" "${register_args[@]}" ;;
      gw-keepalive)
        run "gw-keepalive N=$keepalive_n" gateway "$r" "${gw[@]}" "${keepalive_args[@]}"
        run "gw-keepalive N=$keepalive_n" direct "$r" "${direct[@]}" "${keepalive_args[@]}" ;;
      gw-watch)
        run "gw-watch R=$rate" gateway "$r" "${gw[@]}" "${watch_args[@]}"
        run "gw-watch R=$rate" direct "$r" "${direct[@]}" "${watch_args[@]}" ;;
      redis-register)
        run "redis-register K=$inflight" library "$r" "${lib_redis[@]}" "${register_args[@]}"
        run "redis-register K=$inflight" raw "$r" "$raw_redis" register "${raw_opts[@]}" --n "$register_n" \
          --inflight "$inflight" ;;
      redis-keepalive)
        run "redis-keepalive N=$keepalive_n" library "$r" "${lib_redis[@]}" "${keepalive_args[@]}"
        run "redis-keepalive N=$keepalive_n" raw "$r" "$raw_redis" keepalive "${raw_opts[@]}" --n "$keepalive_n" \
          --ttl "$keepalive_ttl" --seconds "$keepalive_seconds" ;;
      redis-watch)
        run "redis-watch R=$rate" library "$r" "${lib_redis[@]}" "${watch_args[@]}"
        run "redis-watch R=$rate" raw "$r" "$raw_redis" watch-latency "${raw_opts[@]}" --rate "$rate" \
          --seconds "$latency_seconds" ;;
      redis-throughput)  # the raw baseline is in the same run (one JSON line)
        run "inrun-redis-throughput N=$sync_n" library "$r" "${lib_redis[@]}" \
          --scenario watch-throughput --throughput-n "$sync_n" ;;
      redis-resync)
        run "inrun-redis-resync N=$sync_n" library "$r" "${lib_redis[@]}" \
          --scenario resync --resync-n "$sync_n" ;;
      *) echo "$me: unknown figure $fig ($figures)" >&2; exit 2 ;;
    esac
  done
done

echo "" >&2
[ "$keep" = 1 ] && echo "results (one JSON line per run): $results" >&2
status=0
grep '^gw-' "$results" >"$work/gw.tsv" || true
grep '^redis-' "$results" >"$work/redis.tsv" || true
if [ -s "$work/gw.tsv" ]; then
  echo "Gateway mode (discovery-bench --gateway) vs direct (discovery-bench on etcd):"
  echo ""
  awk -F'\t' -v runs="$runs" -v a=gateway -v b=direct -f "$here/compare_table.awk" \
    "$work/gw.tsv" || status=1
  echo ""
fi
if [ -s "$work/redis.tsv" ]; then
  echo "Redis (discovery-bench --store redis://) vs raw hiredis (discovery-raw-redis-bench):"
  echo ""
  awk -F'\t' -v runs="$runs" -f "$here/compare_table.awk" "$work/redis.tsv" || status=1
fi
if grep -q '^inrun-' "$results"; then
  # Library and raw hiredis figures of the same run (discovery-bench --store redis://).
  echo ""
  echo "Redis watch-throughput / resync, library vs raw hiredis in the same run:"
  echo ""
  echo "| figure | run | library | raw | lib/raw | loadavg (1 min) |"
  echo "|---|---|---|---|---|---|"
  awk -F'\t' '
    function f(js, name,    m) {
      if (!match(js, "\"" name "\":-?[0-9.eE+-]+")) return "-"
      m = substr(js, RSTART, RLENGTH); sub(/^"[^"]*":/, "", m); return m
    }
    function row(label, js, a, b, r) {
      printf "| %s | %s | %s | %s | %s | %s |\n", label, $3, f(js, a), f(js, b), f(js, r), $4
    }
    $1 ~ /^inrun-/ {
      fig = substr($1, 7)
      if ($5 ~ /"error"/) { bad = 1; printf "| %s | %s | error | | | %s |\n", fig, $3, $4; next }
      if (fig ~ /throughput/) {
        row(fig ": live events/s", $5, "events_per_s", "baseline_events_per_s", "ratio")
        row(fig ": catch-up events/s", $5, "catchup_events_per_s",
            "catchup_baseline_events_per_s", "catchup_ratio")
      } else {
        row(fig ": initial sync s", $5, "initial_sync_s", "baseline_initial_scan_s",
            "initial_ratio")
        row(fig ": converge after trim s", $5, "resync_s", "baseline_scan_s", "ratio")
        row(fig ": RSS B per instance", $5, "rss_per_instance_bytes", "-", "-")
      }
    }
    END { exit bad }' "$results" || status=1
fi
if [ "$quick" = 1 ]; then echo "(--quick: tiny sizes, not the issues' figures)"; fi
# Timing targets are reported, never asserted: non-zero only when a run failed outright.
exit $status
