#!/usr/bin/env bash
# CI test of the production recipes in deploy/ against real processes (label `deploy`):
#
#   1. deploy/etcd/gen-certs.sh makes the CAs and certificates; the three member files
#      deploy/etcd/etcd-{1,2,3}.yml, rendered onto free 127.0.0.1 ports and a temp dir, start
#      a 3-member etcd cluster with TLS + mTLS for clients and peers.
#   2. deploy/etcd/rbac.sh enables auth and creates the roles and users (run twice: it is
#      idempotent, and the second run logs in with root's password).
#   3. With the discovery-registrar user the example game server (the library registrar)
#      registers, goes ready and deregisters on SIGTERM; the sidecar (`discoveryctl register`)
#      and discoveryd run from the command lines and environment files of the systemd units
#      in deploy/systemd, and the sidecar's ExecStop deregisters it.
#   4. The discovery-reader user can watch (sees the registrations) but every write is
#      refused with exit code 3 and a "permission denied" message; neither user can touch
#      keys outside the prefix.
#   5. Plain text, an untrusted server (wrong CA), a client certificate from another CA, no
#      client certificate, a wrong password, and a client certificate on the peer port are
#      all refused.
#   6. The minimum lease TTL follows from the election timeout (1000 ms -> 2 s).
#
# Usage: tls_rbac_cluster_test.sh DISCOVERYCTL DISCOVERYD EXAMPLE_GAME_SERVER
# Env: ETCD (default etcd), ETCDCTL (default etcdctl), KEEP_TEST_DIR=1 keeps the temp dir.
# Every wait polls a condition against a deadline; every process started here is killed by
# PID on every exit path (trap).
set -euo pipefail

if [ $# -ne 3 ]; then
  echo "usage: $0 DISCOVERYCTL DISCOVERYD EXAMPLE_GAME_SERVER" >&2
  exit 2
fi
DISCOVERYCTL=$(realpath "$1")
DISCOVERYD=$(realpath "$2")
GAME_SERVER=$(realpath "$3")
ETCD=${ETCD:-etcd}
ETCDCTL=${ETCDCTL:-etcdctl}
DEPLOY=$(realpath "$(dirname "$0")/../../deploy")
# Scale deadlines for slow machines like the C++ tests do.
SCALE=${DISCOVERY_TEST_TIME_SCALE:-1}

# ---- plumbing -------------------------------------------------------------------------

PIDS=()
T=""
step() { echo "--- $*"; }
fail() {
  echo "FAIL: $*" >&2
  if [ -n "$T" ]; then
    for f in "$T"/logs/*; do
      [ -f "$f" ] || continue
      echo "=== tail $f" >&2
      tail -n 15 "$f" >&2
    done
  fi
  exit 1
}
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ -n "$T" ] && [ "${KEEP_TEST_DIR:-0}" != 1 ]; then rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.1 s until it succeeds or
# SECONDS (scaled) have passed.
wait_for() {
  local secs=$1 what=$2
  shift 2
  local deadline=$((SECONDS + ${secs%.*} * ${SCALE%.*}))
  until "$@" >"$T/wait.out" 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      fail "timed out after ${secs}s waiting for $what; last try: $(head -c 600 "$T/wait.out")"
    fi
    sleep 0.1
  done
}

# free_port: a TCP port on 127.0.0.1 nobody listens on, below the ephemeral range, never
# handed out twice by this script. A clash with another process is still possible; the
# cluster start is retried once with new ports.
USED_PORTS=" "
free_port() {
  local p
  while true; do
    p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
    case "$USED_PORTS" in *" $p "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      USED_PORTS="$USED_PORTS$p "
      echo "$p"
      return
    fi
  done
}

# expect_refused DESCRIPTION PATTERN COMMAND...: COMMAND must exit 3 (discoveryctl's code
# for unreachable / refused) with a stderr line "discoveryctl: ..." matching PATTERN
# (grep -E, case-insensitive).
expect_refused() {
  local what=$1 pattern=$2 rc=0
  shift 2
  "$@" >"$T/out" 2>"$T/err" || rc=$?
  if [ "$rc" -ne 3 ]; then
    fail "$what: expected exit 3, got $rc; stdout: $(cat "$T/out"); stderr: $(cat "$T/err")"
  fi
  if ! grep -iE "^discoveryctl: .*($pattern)" "$T/err" >"$T/line"; then
    fail "$what: no 'discoveryctl: ' line matching /$pattern/ on stderr: $(cat "$T/err")"
  fi
  echo "refused as expected ($what): $(head -c 300 "$T/line")"
}

# unit_exec UNIT KEY INSTANCE: prints the command line of KEY (ExecStart, ExecStop, ...) in
# a systemd unit: continuation lines joined, the '-' prefix dropped, %i/%l/%% specifiers
# expanded, /usr/local/bin/ rewritten to the binaries under test.
unit_exec() {
  local unit=$1 key=$2 instance=$3
  sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$unit" | sed -n "s/^$key=-\{0,1\}//p" | head -n 1 |
    sed -e "s/%i/$instance/g" -e "s/%l/$(hostname -s)/g" -e 's/%%/%/g' \
      -e "s#/usr/local/bin/discoveryctl#$DISCOVERYCTL#g" \
      -e "s#/usr/local/bin/discoveryd#$DISCOVERYD#g"
}

# run_unit_cmd ENVFILES COMMAND_LINE: runs COMMAND_LINE the way systemd would after reading
# the EnvironmentFile(s): each KEY=VALUE line sets KEY to the rest of the line (surrounding
# double quotes removed; '#' lines and blank lines skipped), then ${VAR} and $VAR are
# expanded. systemd keeps ${VAR} as one word and splits $VAR on spaces; eval splits both,
# which is the same for our files (values used as ${VAR} never contain spaces).
# It execs: call it in a subshell, `(run_unit_cmd ...)`, or in the background, where $! is
# then the PID of the unit's process itself.
run_unit_cmd() {
  local envfiles=$1 cmd=$2 f line key val
  for f in $envfiles; do
    while IFS= read -r line || [ -n "$line" ]; do
      case "$line" in '' | '#'*) continue ;; esac
      key=${line%%=*}
      val=${line#*=}
      if [[ $val == \"*\" ]]; then val=${val:1:${#val}-2}; fi
      export "$key=$val"
    done <"$f"
  done
  # shellcheck disable=SC2086
  eval exec $cmd
}

# ---- temp dir, certificates --------------------------------------------------------------

base=${TMPDIR:-/tmp}
if [ -d /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR==2 {print $4}')" -gt 512000 ]; then
  base=/dev/shm
fi
T=$(mktemp -d "$base/discovery-deploy-test.XXXXXX")
mkdir -p "$T/logs"
# Nothing of the developer's shell may leak into the clients under test.
unset ETCD_ENDPOINTS ETCD_USER ETCD_PASSWORD ETCD_CACERT ETCD_CERT ETCD_KEY DISCOVERY_PREFIX \
  ETCDCTL_ENDPOINTS ETCDCTL_USER ETCDCTL_PASSWORD ETCDCTL_CACERT ETCDCTL_CERT ETCDCTL_KEY \
  ETCDCTL_API DISCOVERY_API_TOKEN DISCOVERY_LISTEN

step "gen-certs.sh"
MEMBERS="etcd-1:127.0.0.1 etcd-2:127.0.0.1 etcd-3:127.0.0.1" \
  "$DEPLOY/etcd/gen-certs.sh" "$T/pki" >"$T/logs/gen-certs"
# Idempotent: a second run creates nothing and keeps the CA.
ca_before=$(sha256sum "$T/pki/ca.pem")
MEMBERS="etcd-1:127.0.0.1 etcd-2:127.0.0.1 etcd-3:127.0.0.1" \
  "$DEPLOY/etcd/gen-certs.sh" "$T/pki" >"$T/gen-certs-2"
[ ! -s "$T/gen-certs-2" ] || fail "second gen-certs.sh run created files: $(cat "$T/gen-certs-2")"
[ "$ca_before" = "$(sha256sum "$T/pki/ca.pem")" ] || fail "second gen-certs.sh run replaced the CA"
# Another CA with the same names: what an attacker or a misconfigured client would hold.
MEMBERS="etcd-1:127.0.0.1" CLIENTS="discovery-registrar" \
  "$DEPLOY/etcd/gen-certs.sh" "$T/rogue" >/dev/null
P=$T/pki

# ---- 3-member cluster from the member files ----------------------------------------------

declare -a CPORT PPORT MPORT EPIDS
render_and_start() {
  local n m
  for n in 1 2 3; do
    CPORT[n]=$(free_port)
    PPORT[n]=$(free_port)
    MPORT[n]=$(free_port)
  done
  for n in 1 2 3; do
    local sed_args=()
    for m in 1 2 3; do
      sed_args+=(-e "s#10\.0\.0\.1$m:2379#127.0.0.1:${CPORT[m]}#g"
        -e "s#10\.0\.0\.1$m:2380#127.0.0.1:${PPORT[m]}#g"
        -e "s#10\.0\.0\.1$m:2381#127.0.0.1:${MPORT[m]}#g")
    done
    sed "${sed_args[@]}" -e "s#/etc/etcd/pki/#$P/#g" -e "s#/var/lib/etcd#$T/data-$n#g" \
      "$DEPLOY/etcd/etcd-$n.yml" >"$T/etcd-$n.yml"
    # The renderer must have covered every address and path of the member file.
    if grep -nE '10\.0\.0\.|/etc/etcd|/var/lib' "$T/etcd-$n.yml" | grep -v '^[0-9]*: *#'; then
      fail "etcd-$n.yml: address or path left after rendering (update this test's renderer)"
    fi
    rm -rf "$T/data-$n"
    # A clean environment: with --config-file etcd ignores ETCD_* anyway.
    env -i PATH="$PATH" "$ETCD" --config-file "$T/etcd-$n.yml" >"$T/logs/etcd-$n" 2>&1 &
    EPIDS[n]=$!
    PIDS+=("${EPIDS[n]}")
  done
}
ENDPOINTS=""
cluster_healthy() {
  ETCDCTL_CACERT=$P/ca.pem ETCDCTL_CERT=$P/root.pem ETCDCTL_KEY=$P/root.key \
    "$ETCDCTL" --endpoints "$ENDPOINTS" --dial-timeout 1s --command-timeout 2s endpoint health
}
members_running() {
  local n
  for n in 1 2 3; do kill -0 "${EPIDS[n]}" 2>/dev/null || return 1; done
}
step "start 3 etcd members (TLS, mTLS, peer TLS)"
for attempt in 1 2; do
  render_and_start
  ENDPOINTS="https://127.0.0.1:${CPORT[1]},https://127.0.0.1:${CPORT[2]},https://127.0.0.1:${CPORT[3]}"
  deadline=$((SECONDS + 30 * ${SCALE%.*}))
  until cluster_healthy >/dev/null 2>&1; do
    if ! members_running || [ "$SECONDS" -ge "$deadline" ]; then break; fi
    sleep 0.1
  done
  if cluster_healthy >/dev/null 2>&1; then break; fi
  if [ "$attempt" -eq 2 ] || ! grep -qi "address already in use" "$T"/logs/etcd-*; then
    fail "etcd cluster did not become healthy"
  fi
  echo "port clash, retrying with new ports"
  for n in 1 2 3; do kill -KILL "${EPIDS[n]}" 2>/dev/null || true; wait "${EPIDS[n]}" 2>/dev/null || true; done
done
echo "cluster healthy: $ENDPOINTS"

# ---- rbac.sh ------------------------------------------------------------------------------

REGISTRAR_PW="reg-$RANDOM$RANDOM"
READER_PW="read-$RANDOM$RANDOM"
ROOT_PW="root-$RANDOM$RANDOM"
run_rbac() {  # run_rbac CLIENT_CERT_NAME
  ETCDCTL="$ETCDCTL" ETCDCTL_ENDPOINTS=$ENDPOINTS ETCDCTL_CACERT=$P/ca.pem \
    ETCDCTL_CERT=$P/$1.pem ETCDCTL_KEY=$P/$1.key ETCD_ROOT_PASSWORD=$ROOT_PW \
    DISCOVERY_REGISTRAR_PASSWORD=$REGISTRAR_PW DISCOVERY_READER_PASSWORD=$READER_PW \
    "$DEPLOY/etcd/rbac.sh"
}
step "rbac.sh (first run, with root's client certificate)"
run_rbac root | tee "$T/rbac-1"
grep -q "^auth: enabled" "$T/rbac-1" || fail "rbac.sh did not enable auth"
step "rbac.sh (second run: auth on, logs in as root with the password; nothing to add)"
run_rbac discovery-reader | tee "$T/rbac-2"
if grep -E "created|granted" "$T/rbac-2"; then fail "second rbac.sh run changed something"; fi
grep -q "^auth: already enabled" "$T/rbac-2" || fail "second rbac.sh run did not see auth on"
step "rbac.sh (third run: root's client certificate authenticates as root by its CN)"
run_rbac root | tee "$T/rbac-3"
if grep -E "created|granted" "$T/rbac-3"; then fail "third rbac.sh run changed something"; fi

# ---- clients ----------------------------------------------------------------------------

# Client environments, as deploy/systemd/etcd.env sets them. Processes are started through
# `env`, never through a shell function, so that $! is the process itself.
cred_env() {  # cred_env USER PASSWORD: prints the ETCD_* assignments, one per line
  printf '%s\n' "ETCD_ENDPOINTS=$ENDPOINTS" "ETCD_CACERT=$P/ca.pem" "ETCD_CERT=$P/$1.pem" \
    "ETCD_KEY=$P/$1.key" "ETCD_USER=$1" "ETCD_PASSWORD=$2"
}
mapfile -t REG_ENV < <(cred_env discovery-registrar "$REGISTRAR_PW")
mapfile -t READ_ENV < <(cred_env discovery-reader "$READER_PW")
registrar() { env "${REG_ENV[@]}" "$DISCOVERYCTL" --timeout 3 "$@"; }  # discoveryctl as registrar
reader() { env "${READ_ENV[@]}" "$DISCOVERYCTL" --timeout 3 "$@"; }     # discoveryctl as reader

step "registrar: the library registrar (example game server) registers and goes ready"
env "${REG_ENV[@]}" "$GAME_SERVER" --type world --group kr-1 --port game=7001 --drain 0.5 --perf-interval 0 >"$T/logs/game.out" 2>"$T/logs/game.err" &
GAME_PID=$!
PIDS+=("$GAME_PID")
wait_for 15 "the game server's id" grep -qE '^[0-9A-Z]{26}$' "$T/logs/game.out"
GAME_ID=$(head -n 1 "$T/logs/game.out")
has_status() {  # has_status TYPE ID STATUS: the registrar's view of the instance
  registrar get "$1" "$2" | grep -qE "\"status\": *\"$3\""
}
wait_for 15 "the game server to be ready" has_status world "$GAME_ID" ready
registrar get world "$GAME_ID" >"$T/get.json"
grep -q '"leaseTtlSeconds"' "$T/get.json" || fail "get without the lease TTL: $(cat "$T/get.json")"
echo "registered world/$GAME_ID: $(head -c 200 "$T/get.json")"

step "reader: watches (sees the registration), cannot write"
env "${READ_ENV[@]}" "$DISCOVERYCTL" watch --initial >"$T/logs/watch.out" 2>"$T/logs/watch.err" &
WATCH_PID=$!
PIDS+=("$WATCH_PID")
wait_for 15 "the reader's watch to show the game server" grep -q "\"$GAME_ID\"" "$T/logs/watch.out"
reader list | grep -q "$GAME_ID" || fail "reader's list does not show $GAME_ID"
expect_refused "reader set-status" "permission denied" \
  reader set-status world "$GAME_ID" error --custom-state hacked
expect_refused "reader deregister" "permission denied" reader deregister world "$GAME_ID"
expect_refused "reader register" "permission denied" \
  reader register --type world --group kr-1 --host h --port game=1 --status ready
has_status world "$GAME_ID" ready || fail "a refused write changed the instance"

step "prefix scoping: no user can touch keys outside the prefix"
etcdctl_as() {  # etcdctl_as USER PASSWORD ARGS...
  local user=$1 pw=$2
  shift 2
  ETCDCTL_CACERT=$P/ca.pem ETCDCTL_CERT=$P/$user.pem ETCDCTL_KEY=$P/$user.key \
    ETCDCTL_PASSWORD=$pw "$ETCDCTL" --endpoints "$ENDPOINTS" --user "$user" "$@"
}
for who in "discovery-registrar $REGISTRAR_PW" "discovery-reader $READER_PW"; do
  # shellcheck disable=SC2086
  if out=$(etcdctl_as $who put /config/x y 2>&1); then fail "$who could write /config/x"; fi
  grep -qi "permission denied" <<<"$out" || fail "unexpected error for $who put: $out"
  # shellcheck disable=SC2086
  if out=$(etcdctl_as $who get /config/x 2>&1); then fail "$who could read /config/x"; fi
  grep -qi "permission denied" <<<"$out" || fail "unexpected error for $who get: $out"
done
echo "writes and reads outside /services/ refused for both users"

step "minimum lease TTL = ceil(1.5 x election-timeout) = 2 s for election-timeout 1000"
out=$(etcdctl_as discovery-registrar "$REGISTRAR_PW" lease grant 1)
grep -q "TTL(2s)" <<<"$out" || fail "lease grant 1: $out"
lease=$(awk '{print $2}' <<<"$out")
etcdctl_as discovery-registrar "$REGISTRAR_PW" lease revoke "$lease" >/dev/null
echo "$out"

step "sidecar: discoveryctl register from deploy/systemd/discovery-sidecar@.service"
# A legacy process to register: discoveryd's /healthz stands in for its health endpoint.
DPORT=$(free_port)
sed -e "s#^ETCD_ENDPOINTS=.*#ETCD_ENDPOINTS=$ENDPOINTS#" -e "s#/etc/discovery/pki/#$P/#g" \
  -e "s#^ETCD_PASSWORD=.*#ETCD_PASSWORD=$REGISTRAR_PW#" \
  "$DEPLOY/systemd/etcd.env" >"$T/etcd.env"
sed -e "s#^DISCOVERY_LISTEN=.*#DISCOVERY_LISTEN=127.0.0.1:$DPORT#" \
  -e "s#^DISCOVERYD_ARGS=.*#DISCOVERYD_ARGS=--api-token-file $T/api-tokens#" \
  "$DEPLOY/systemd/discoveryd.env" >"$T/discoveryd.env"
printf '# test tokens\nrw-token-%s rw\nro-token-%s ro\n' "$RANDOM" "$RANDOM" >"$T/api-tokens"
RW_TOKEN=$(awk '$2 == "rw" {print $1}' "$T/api-tokens")
sed -e "s#^DISCOVERY_REGISTER_ARGS=.*#DISCOVERY_REGISTER_ARGS=--private-ip 127.0.0.1 --port http=$DPORT --check-http http://127.0.0.1:$DPORT/healthz --check-interval 0.2#" \
  -e "s#^DISCOVERY_DRAIN=.*#DISCOVERY_DRAIN=1#" \
  "$DEPLOY/systemd/sidecar.env" >"$T/sidecar.env"
grep -q "^DISCOVERY_INSTANCE_ID=" "$T/sidecar.env" || fail "sidecar.env sets no DISCOVERY_INSTANCE_ID"

step "discoveryd from deploy/systemd/discoveryd.service (registrar user, TLS)"
dcmd=$(unit_exec "$DEPLOY/systemd/discoveryd.service" ExecStart x)
run_unit_cmd "$T/etcd.env $T/discoveryd.env" "$dcmd" >"$T/logs/discoveryd" 2>&1 &
DPID=$!
PIDS+=("$DPID")
wait_for 15 "discoveryd /healthz = 200" curl -sf "http://127.0.0.1:$DPORT/healthz"
curl -sf -H "X-API-Token: $RW_TOKEN" "http://127.0.0.1:$DPORT/sd/v1/instances?type=world" |
  grep -q "$GAME_ID" || fail "discoveryd does not list $GAME_ID"
code=$(curl -s -o "$T/out" -w '%{http_code}' "http://127.0.0.1:$DPORT/sd/v1/instances?type=world")
[ "$code" = 401 ] || fail "discoveryd without X-API-Token: HTTP $code, expected 401"
code=$(curl -s -o "$T/out" -w '%{http_code}' -H "X-API-Token: $RW_TOKEN" -X POST \
  "http://127.0.0.1:$DPORT/sd/v1/instances" -d '{"type":"lobby","group":"kr-1","ttlSeconds":5}')
[ "$code" = 201 ] || fail "discoveryd POST with the registrar user: HTTP $code $(cat "$T/out")"
echo "discoveryd: healthz 200, lists the game server, 401 without token, POST 201"

SIDECAR_INSTANCE=legacy-lobby
scmd=$(unit_exec "$DEPLOY/systemd/discovery-sidecar@.service" ExecStart "$SIDECAR_INSTANCE")
echo "ExecStart: $scmd"
run_unit_cmd "$T/etcd.env $T/sidecar.env" "$scmd" >"$T/logs/sidecar.out" 2>"$T/logs/sidecar.err" &
SIDECAR_PID=$!
PIDS+=("$SIDECAR_PID")
SC_TYPE=$(sed -n 's/^DISCOVERY_TYPE=//p' "$T/sidecar.env")
SC_ID=$(sed -n 's/^DISCOVERY_INSTANCE_ID=//p' "$T/sidecar.env")
wait_for 15 "the sidecar's instance to be ready (health check passing)" \
  has_status "$SC_TYPE" "$SC_ID" ready
wait_for 10 "the reader's watch to show the sidecar's instance" grep -q "\"$SC_ID\"" "$T/logs/watch.out"
echo "sidecar registered $SC_TYPE/$SC_ID, ready, seen by discoveryd and the reader's watch"

step "sidecar ExecStop: graceful deregistration"
stop=$(unit_exec "$DEPLOY/systemd/discovery-sidecar@.service" ExecStop "$SIDECAR_INSTANCE")
(MAINPID=$SIDECAR_PID run_unit_cmd "$T/etcd.env $T/sidecar.env" "$stop")
# shutting_down first (drain), then removed: both seen by the reader's watch.
watch_saw() {  # watch_saw ID PATTERN: a line of the reader's watch about ID matches
  grep "\"$1\"" "$T/logs/watch.out" | grep -q "$2"
}
exited() { ! kill -0 "$1" 2>/dev/null; }
wait_for 10 "shutting_down in the reader's watch" watch_saw "$SC_ID" '"shutting_down"'
wait_for 10 "the sidecar to exit" exited "$SIDECAR_PID"
rc=0
wait "$SIDECAR_PID" || rc=$?
[ "$rc" -eq 0 ] || fail "sidecar exited with $rc after ExecStop"
wait_for 5 "removed in the reader's watch" watch_saw "$SC_ID" '"removed"'
rc=0
registrar get "$SC_TYPE" "$SC_ID" >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fail "sidecar's key still there after ExecStop (get exit $rc)"
# ExecStopPost (crash clean-up) on an already removed instance: exit 2, ignored by systemd
# through its '-' prefix; it must not be a usage error.
post=$(unit_exec "$DEPLOY/systemd/discovery-sidecar@.service" ExecStopPost "$SIDECAR_INSTANCE")
rc=0
(run_unit_cmd "$T/etcd.env $T/sidecar.env" "$post") >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fail "ExecStopPost after a clean stop: exit $rc, expected 2 (not found)"
echo "sidecar: shutting_down, exit 0, key gone; ExecStopPost is a no-op (exit 2, ignored)"

step "game server SIGTERM: graceful deregistration with the registrar user (LeaseRevoke)"
kill -TERM "$GAME_PID"
wait_for 15 "the game server to exit" exited "$GAME_PID"
rc=0
wait "$GAME_PID" || rc=$?
[ "$rc" -eq 0 ] || fail "game server exited with $rc"
rc=0
registrar get world "$GAME_ID" >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fail "game server's key still there after SIGTERM (get exit $rc)"
echo "game server deregistered"

step "transport and authentication failures are refused"
bad() {  # bad DESCRIPTION PATTERN ENV... : discoveryctl list with the given environment
  local what=$1 pattern=$2
  shift 2
  expect_refused "$what" "$pattern" env "$@" "$DISCOVERYCTL" --timeout 2 list
}
good_env=(ETCD_CACERT="$P/ca.pem" ETCD_CERT="$P/discovery-reader.pem"
  ETCD_KEY="$P/discovery-reader.key" ETCD_USER=discovery-reader ETCD_PASSWORD="$READER_PW")
# The control: this environment works.
env ETCD_ENDPOINTS="$ENDPOINTS" "${good_env[@]}" "$DISCOVERYCTL" --timeout 2 list >/dev/null ||
  fail "the reader's environment does not work"
plain=${ENDPOINTS//https:/http:}
bad "plain text to the TLS port" "unreachable" ETCD_ENDPOINTS="$plain" "${good_env[@]}"
bad "server certificate from an unknown CA" "unreachable" ETCD_ENDPOINTS="$ENDPOINTS" \
  "${good_env[@]}" ETCD_CACERT="$T/rogue/ca.pem"
bad "client certificate from another CA" "unreachable" ETCD_ENDPOINTS="$ENDPOINTS" \
  "${good_env[@]}" ETCD_CERT="$T/rogue/discovery-registrar.pem" \
  ETCD_KEY="$T/rogue/discovery-registrar.key"
bad "no client certificate" "unreachable" ETCD_ENDPOINTS="$ENDPOINTS" \
  ETCD_CACERT="$P/ca.pem" ETCD_USER=discovery-reader ETCD_PASSWORD="$READER_PW"
bad "wrong password" "authentication failed|refused access" ETCD_ENDPOINTS="$ENDPOINTS" \
  "${good_env[@]}" ETCD_PASSWORD=wrong
# The peer port only accepts certificates of the peer CA. (HTTP/1.1: etcd's peer listener
# closes HTTP/2 streams uncleanly.)
peer_get() {  # peer_get CERT_NAME: GET /members on member 1's peer port with that certificate
  curl -sS --http1.1 --max-time 5 --cacert "$P/peer-ca.pem" --cert "$P/$1.pem" --key "$P/$1.key" \
    "https://127.0.0.1:${PPORT[1]}/members"
}
# Refused in the TLS handshake (how curl reports it varies: bad certificate alert, reset,
# not connected); the control below shows the same request works with a peer certificate.
if out=$(peer_get root 2>&1); then fail "the peer port accepted a client certificate: $out"; fi
out=$(peer_get etcd-2-peer 2>&1) || fail "the peer port refused a peer certificate: $out"
grep -q '"name":"etcd-3"' <<<"$out" || fail "peer port /members: $out"
echo "peer port: client certificate refused, peer certificate accepted"

kill -TERM "$DPID" "$WATCH_PID"
echo "PASS"
