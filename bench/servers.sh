# bench/servers.sh: throw-away servers for the bench scripts (sourced by compare.sh and
# gateway_compare.sh, not run). Every server listens on 127.0.0.1 on a free port, keeps its data
# under $work (a dir on /dev/shm the caller made) and is stopped by its PID in stop_servers.
#
#   work=$(mktemp -d /dev/shm/x.XXXXXX); . servers.sh; trap 'stop_servers; rm -rf "$work"' EXIT
#   start_etcd_retry || exit 2        # sets endpoint (host:port) and etcd_pid
#   start_discoveryd BIN "$endpoint"  # sets discoveryd_url and discoveryd_pid
#   start_redis                       # sets redis_url and redis_pid
# The caller sets `me` (its name, for messages) and may set etcd_bin.

etcd_bin=${etcd_bin:-${ETCD_BIN:-/usr/bin/etcd}}
etcd_pid=""
discoveryd_pid=""
redis_pid=""

# A port nobody listens on (random in 20000-59999; a server failing to bind is caught).
free_port() {
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  echo "$me: no free port found" >&2
  exit 2
}

# shellcheck disable=SC2317  # called through the caller's trap
stop_servers() {
  local p
  for p in "$redis_pid" "$discoveryd_pid" "$etcd_pid"; do
    if [ -n "$p" ]; then
      kill "$p" 2>/dev/null || true
      wait "$p" 2>/dev/null || true
    fi
  done
  redis_pid=""; discoveryd_pid=""; etcd_pid=""
}

# Starts etcd on two fresh ports; 0 once healthy, 1 when it could not bind them (a port taken
# between the check and etcd's bind, e.g. by another test's outgoing connection), 2 otherwise.
start_etcd() {
  local client_port peer_port
  client_port=$(free_port)
  peer_port=$(free_port)
  endpoint="127.0.0.1:$client_port"
  rm -rf "$work/etcd" "$work/etcd.log"
  "$etcd_bin" --name compare --data-dir "$work/etcd" \
    --listen-client-urls "http://$endpoint" --advertise-client-urls "http://$endpoint" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "compare=http://127.0.0.1:$peer_port" \
    --quota-backend-bytes 4294967296 --logger zap --log-outputs "$work/etcd.log" \
    >"$work/etcd.stderr" 2>&1 &
  etcd_pid=$!
  for _ in $(seq 100); do
    if ETCDCTL_API=3 etcdctl --endpoints "$endpoint" --command-timeout=1s endpoint health \
      >/dev/null 2>&1; then
      return 0
    fi
    if ! kill -0 "$etcd_pid" 2>/dev/null; then
      wait "$etcd_pid" 2>/dev/null || true
      etcd_pid=""
      if grep -qs "address already in use" "$work/etcd.log" "$work/etcd.stderr"; then return 1; fi
      return 2
    fi
    sleep 0.1
  done
  return 0  # the health check below reports it
}

# start_etcd with up to 3 port choices; 0 when healthy, 2 (after printing why) otherwise.
start_etcd_retry() {
  local started=2 rc attempt
  for attempt in 1 2 3; do
    rc=0
    start_etcd || rc=$?
    if [ "$rc" = 0 ]; then started=0; break; fi
    if [ "$rc" = 2 ]; then break; fi
    echo "$me: etcd could not bind its ports (attempt $attempt); new ports" >&2
  done
  if [ "$started" != 0 ]; then
    echo "$me: etcd exited" >&2
    cat "$work/etcd.stderr" >&2
    tail -n 20 "$work/etcd.log" >&2 2>/dev/null || true
    return 2
  fi
  ETCDCTL_API=3 etcdctl --endpoints "$endpoint" endpoint health >/dev/null 2>&1 ||
    { echo "$me: etcd not healthy after 10 s" >&2; return 2; }
  echo "etcd $("$etcd_bin" --version | head -1 | awk '{print $3}') pid $etcd_pid on $endpoint, data $work/etcd" >&2
}

# start_discoveryd BIN ENDPOINT: one discoveryd in front of that etcd (DISCOVERY_API_TOKEN from
# the environment); 0 once /healthz answers, 2 otherwise.
start_discoveryd() {
  local bin=$1 ep=$2 port attempt
  for attempt in 1 2 3; do
    port=$(free_port)
    "$bin" --listen "127.0.0.1:$port" --endpoints "http://$ep" >"$work/discoveryd.log" 2>&1 &
    discoveryd_pid=$!
    discoveryd_url="http://127.0.0.1:$port"
    for _ in $(seq 100); do
      if curl -fsS -o /dev/null "$discoveryd_url/healthz" 2>/dev/null; then
        echo "discoveryd pid $discoveryd_pid on $discoveryd_url" >&2
        return 0
      fi
      kill -0 "$discoveryd_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill "$discoveryd_pid" 2>/dev/null || true
    wait "$discoveryd_pid" 2>/dev/null || true
    discoveryd_pid=""
    echo "$me: discoveryd did not come up on port $port (attempt $attempt)" >&2
    tail -n 5 "$work/discoveryd.log" >&2
  done
  return 2
}

# start_redis: redis-server without persistence, data dir under $work; 0 once it answers PING.
start_redis() {
  local port attempt
  for attempt in 1 2 3; do
    port=$(free_port)
    mkdir -p "$work/redis"
    redis-server --bind 127.0.0.1 --port "$port" --dir "$work/redis" --save "" \
      --appendonly no --daemonize no --logfile "$work/redis.log" >/dev/null 2>&1 &
    redis_pid=$!
    redis_url="redis://127.0.0.1:$port"
    for _ in $(seq 100); do
      if [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ]; then
        echo "redis-server $(redis-server --version | awk '{print $3}') pid $redis_pid on $redis_url" >&2
        return 0
      fi
      kill -0 "$redis_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
    redis_pid=""
    echo "$me: redis-server did not come up on port $port (attempt $attempt)" >&2
  done
  return 2
}
