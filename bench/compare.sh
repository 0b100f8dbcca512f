#!/usr/bin/env bash
# bench/compare.sh: the library (discovery-bench) against the standalone raw gRPC baseline
# (discovery-raw-bench) on ONE throw-away etcd, figure by figure, alternating A B A B.
#
#   bench/compare.sh                       # register, watch and keepalive at the issue's sizes
#   bench/compare.sh --quick               # tiny sizes, about a minute (proves it works)
#   bench/compare.sh --figures register --inflight "1 16" --register-n 2000
#
# Starts etcd (Debian's etcd-server, /usr/bin/etcd) on 127.0.0.1 with free ports and a data
# dir under /dev/shm, stops it by PID on exit and removes that work dir (--keep keeps it).
# Prints `cat /proc/loadavg` before each run (the table's load column is that 1-minute
# figure) and every JSON line, and ends with a markdown table. All traffic stays on
# 127.0.0.1; every run is bounded by --run-timeout. Exit status 1 when a run reported an
# error (missed timing targets never fail it), 2 on bad usage or when etcd does not start.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin_dir="$here/../build/bench"
figures="register,watch,keepalive"
runs=2
register_n=5000
raw_register_args=""
inflight="1 16 64"
rates="1000 10000"
latency_seconds=10
keepalive_ns="1000 10000"
keepalive_ttl=10
keepalive_seconds=30
run_timeout=600
quick=0
keep=0
etcd_bin=${ETCD_BIN:-/usr/bin/etcd}

usage() {
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
  cat <<EOF
Options:
  --bin-dir DIR             where discovery-bench and discovery-raw-bench are ($bin_dir)
  --figures LIST            comma list of register,watch,keepalive ($figures)
  --runs N                  runs of each side, alternating library/raw ($runs)
  --register-n N            registrations per run ($register_n)
  --raw-register-args ARGS  extra arguments of the raw register runs, e.g. --open-stream (one
                            idle LeaseKeepAlive stream held open meanwhile, as a registrar does)
  --inflight "K ..."        registrations in flight ($inflight)
  --rates "R ..."           watch-latency puts per second ($rates)
  --latency-seconds S       watch-latency seconds per run ($latency_seconds)
  --keepalive-n "N ..."     keepalive leases ($keepalive_ns)
  --keepalive-ttl T         lease TTL seconds ($keepalive_ttl)
  --keepalive-seconds S     measured window seconds ($keepalive_seconds)
  --run-timeout S           upper bound of one run ($run_timeout)
  --keep                    keep the work dir (results.tsv, etcd and run logs) under /dev/shm
  --quick                   tiny sizes: register-n 500, inflight "1 16", rates 1000 for 2 s,
                            keepalive-n 200, ttl 2, 3 s
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir=$2; shift 2 ;;
    --figures) figures=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --register-n) register_n=$2; shift 2 ;;
    --raw-register-args) raw_register_args=$2; shift 2 ;;
    --inflight) inflight=$2; shift 2 ;;
    --rates) rates=$2; shift 2 ;;
    --latency-seconds) latency_seconds=$2; shift 2 ;;
    --keepalive-n) keepalive_ns=$2; shift 2 ;;
    --keepalive-ttl) keepalive_ttl=$2; shift 2 ;;
    --keepalive-seconds) keepalive_seconds=$2; shift 2 ;;
    --run-timeout) run_timeout=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --quick)
      quick=1
      register_n=500; inflight="1 16"; rates="1000"; latency_seconds=2
      keepalive_ns="200"; keepalive_ttl=2; keepalive_seconds=3
      shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

lib=$bin_dir/discovery-bench
raw=$bin_dir/discovery-raw-bench
for b in "$lib" "$raw" "$etcd_bin"; do
  [ -x "$b" ] || { echo "compare.sh: $b not found or not executable" >&2; exit 2; }
done
case "$runs" in ''|*[!0-9]*|0) echo "compare.sh: --runs must be a positive integer" >&2; exit 2 ;; esac

work=$(mktemp -d /dev/shm/discovery-compare.XXXXXX)
me=compare.sh
# free_port, start_etcd_retry, stop_servers (bench/servers.sh, shared with gateway_compare.sh).
# shellcheck source=servers.sh
. "$here/servers.sh"
# shellcheck disable=SC2317  # called through the trap
cleanup() {
  stop_servers
  if [ "$keep" = 1 ]; then
    rm -rf "$work/etcd"
    echo "compare.sh: kept $work (results.tsv, stderr.log, etcd.log)" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_etcd_retry || exit 2

results=$work/results.tsv
: >"$results"
seq_no=0

# run FIGURE SIDE RUN CMD... : one bounded run, its JSON line appended to the results.
run() {
  local figure=$1 side=$2 n=$3
  shift 3
  seq_no=$((seq_no + 1))
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

IFS=',' read -r -a figure_list <<<"$figures"
for fig in "${figure_list[@]}"; do
  case "$fig" in
    register)
      for k in $inflight; do
        # The library API matching the raw binary's --inflight K: Register for K=1,
        # RegisterMany (which keeps 64 in flight) for K=64, RegisterAsync otherwise.
        case "$k" in 1) api=sync ;; 64) api=many ;; *) api=async ;; esac
        for r in $(seq "$runs"); do
          run "register K=$k" library "$r" "$lib" --endpoints "$endpoint" --scenario register \
            --register-n "$register_n" --register-inflight "$k" --register-api "$api"
          # shellcheck disable=SC2086  # several arguments on purpose
          run "register K=$k" raw "$r" "$raw" register --endpoints "$endpoint" \
            --n "$register_n" --inflight "$k" --op txn --prefix "/bench/compare-$$-$seq_no/" \
            $raw_register_args
        done
      done ;;
    watch)
      for rate in $rates; do
        for r in $(seq "$runs"); do
          run "watch R=$rate" library "$r" "$lib" --endpoints "$endpoint" \
            --scenario watch-latency --latency-rate "$rate" --latency-seconds "$latency_seconds"
          run "watch R=$rate" raw "$r" "$raw" watch-latency --endpoints "$endpoint" \
            --rate "$rate" --seconds "$latency_seconds" --prefix "/bench/compare-$$-$seq_no/"
        done
      done ;;
    keepalive)
      for n in $keepalive_ns; do
        for r in $(seq "$runs"); do
          run "keepalive N=$n" library "$r" "$lib" --endpoints "$endpoint" \
            --scenario keepalive --keepalive-n "$n" --keepalive-ttl "$keepalive_ttl" \
            --keepalive-seconds "$keepalive_seconds"
          run "keepalive N=$n" raw "$r" "$raw" keepalive --endpoints "$endpoint" --n "$n" \
            --ttl "$keepalive_ttl" --seconds "$keepalive_seconds" \
            --prefix "/bench/compare-$$-$seq_no/"
        done
      done ;;
    *) echo "compare.sh: unknown figure $fig (register, watch, keepalive)" >&2; exit 2 ;;
  esac
done

echo "" >&2
[ "$keep" = 1 ] && echo "results (one JSON line per run): $results" >&2
status=0
awk -F'\t' -v runs="$runs" -f "$here/compare_table.awk" "$results" || status=1
if [ "$quick" = 1 ]; then echo "(--quick: tiny sizes, not the issue's figures)"; fi
# Timing targets are reported, never asserted: non-zero only when a run failed outright.
exit $status
