#!/usr/bin/env bash
# Static checks of the repository's scripts and of the deploy/ recipes (label `deploy`):
#   1. shellcheck (default severity: info and up) on every shell script: scripts/*, .ci/run,
#      deploy/**/*.sh, tests/**/*.sh.
#   2. `systemd-analyze verify` on the units in deploy/systemd, and on Debian's etcd.service
#      with our drop-in; any message (also a warning such as an unknown key, which verify
#      only prints) fails the test.
#   3. The environment files: every variable a unit expands is set in one of the files the
#      unit reads, and every variable set in an env file is documented by a comment.
# Each checker is first shown a known-bad input, so a checker that silently passes
# everything fails this test instead.
#
# Usage: lint_test.sh DISCOVERYCTL DISCOVERYD
#
# Why the unit copies: `systemd-analyze verify` fails when an ExecStart binary does not
# exist, and ours live in /usr/local/bin only after an install. The test verifies copies of
# the units in a temp dir with /usr/local/bin/discoveryctl and /usr/local/bin/discoveryd
# rewritten to the binaries just built (nothing else is changed), plus a stand-in
# legacy-lobby.service for the sidecar template's BindsTo=%i.service. verify adds the
# directory of the files it is given to the unit search path, so the template instance
# discovery-sidecar@legacy-lobby.service and the etcd.service.d/ drop-in are found there.
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 DISCOVERYCTL DISCOVERYD" >&2
  exit 2
fi
DISCOVERYCTL=$(realpath "$1")
DISCOVERYD=$(realpath "$2")
ROOT=$(realpath "$(dirname "$0")/../..")
T=$(mktemp -d "${TMPDIR:-/tmp}/discovery-lint.XXXXXX")
trap 'rm -rf "$T"' EXIT
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
cd "$ROOT"

# ---- 1. shellcheck ----------------------------------------------------------------------
command -v shellcheck >/dev/null || fail "shellcheck not installed (scripts/install-deps)"
scripts=()
for f in scripts/* scripts/lib/* .ci/run; do
  [ -f "$f" ] && scripts+=("$f")
done
while IFS= read -r f; do scripts+=("$f"); done < <(find deploy tests -name '*.sh' -type f | sort)
[ ${#scripts[@]} -ge 8 ] || fail "found only ${#scripts[@]} scripts: ${scripts[*]}"
# shellcheck disable=SC2016  # the literal $1 is the point: an unquoted expansion
printf '#!/bin/bash\necho $1\n' >"$T/bad.sh"
if shellcheck "$T/bad.sh" >/dev/null 2>&1; then fail "shellcheck accepted a known-bad script"; fi
echo "shellcheck: ${scripts[*]}"
shellcheck "${scripts[@]}" || fail "shellcheck"
echo "shellcheck: ${#scripts[@]} scripts clean"

# ---- 2. systemd-analyze verify ------------------------------------------------------------
command -v systemd-analyze >/dev/null || fail "systemd-analyze not installed (package systemd)"
U=$T/units
mkdir -p "$U"
for f in deploy/systemd/*.service; do
  sed -e "s#/usr/local/bin/discoveryctl#$DISCOVERYCTL#g" \
    -e "s#/usr/local/bin/discoveryd#$DISCOVERYD#g" "$f" >"$U/$(basename "$f")"
done
printf '[Unit]\nDescription=stand-in for a legacy process\n[Service]\nExecStart=/bin/true\n' \
  >"$U/legacy-lobby.service"
# verify ARGS...: runs systemd-analyze verify; any output or a non-zero exit is a failure.
verify() {
  local rc=0
  (cd "$U" && systemd-analyze verify "$@") >"$T/verify.out" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ] || [ -s "$T/verify.out" ]; then
    cat "$T/verify.out" >&2
    return 1
  fi
}
# Known-bad: an unknown key is only a warning (exit 0); the test must still catch it.
sed 's/^Restart=/Restartt=/' "$U/discoveryd.service" >"$U/broken.service"
if verify ./broken.service 2>/dev/null; then fail "verify accepted a unit with an unknown key"; fi
rm "$U/broken.service"
units=(./discoveryd.service ./discovery-sidecar@legacy-lobby.service)
if [ -f /lib/systemd/system/etcd.service ]; then
  # Debian's etcd.service (etcd-server) with our drop-in.
  cp /lib/systemd/system/etcd.service "$U/"
  mkdir -p "$U/etcd.service.d"
  cp deploy/systemd/etcd.service.d/*.conf "$U/etcd.service.d/"
  units+=(./etcd.service)
else
  fail "/lib/systemd/system/etcd.service missing (package etcd-server, scripts/install-deps)"
fi
verify "${units[@]}" || fail "systemd-analyze verify ${units[*]}"
echo "systemd-analyze verify: ${units[*]} clean"

# ---- 3. environment files ---------------------------------------------------------------
# Variables set in an env file, each preceded (possibly through other comment lines and
# other documented variables) by a comment.
check_documented() {
  awk -v f="$1" '
    /^[ \t]*$/ { documented = 0; next }
    /^#/ { documented = 1; next }
    /^[A-Z_][A-Z0-9_]*=/ { if (!documented) { print f ": " $0 " has no comment"; bad = 1 }; next }
    { print f ": not KEY=VALUE: " $0; bad = 1 }
    END { exit bad }' "$1"
}
printf '# ok\nA=1\nB=2\n\nC=3\n' >"$T/bad.env"
if check_documented "$T/bad.env" >/dev/null; then fail "env check accepted an undocumented variable"; fi
for f in deploy/systemd/*.env; do check_documented "$f" || fail "$f"; done
# Variables each unit expands in Exec*= lines must be set by its env files.
# shellcheck disable=SC2016  # literal '$' and '{' to strip
unit_vars() {
  sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$1" | grep -E '^Exec[A-Za-z]*=' |
    grep -oE '\$\{?[A-Za-z_][A-Za-z0-9_]*' | tr -d '${' | sort -u
}
env_vars() { sed -n 's/^\([A-Z_][A-Z0-9_]*\)=.*/\1/p' "$@" | sort -u; }
check_unit_env() {  # check_unit_env UNIT ENVFILES...
  local unit=$1 missing
  shift
  missing=$(comm -23 <(unit_vars "$unit" | grep -vx MAINPID) <(env_vars "$@"))
  [ -z "$missing" ] || fail "$unit expands variables no env file sets: $missing"
}
check_unit_env deploy/systemd/discoveryd.service deploy/systemd/etcd.env \
  deploy/systemd/discoveryd.env
check_unit_env deploy/systemd/discovery-sidecar@.service deploy/systemd/etcd.env \
  deploy/systemd/sidecar.env
# The env files the units read are the ones in deploy/systemd (by name).
grep -q '^EnvironmentFile=/etc/discovery/etcd.env$' deploy/systemd/discoveryd.service ||
  fail "discoveryd.service does not read /etc/discovery/etcd.env"
grep -q '^EnvironmentFile=/etc/discovery/sidecar-%i.env$' "deploy/systemd/discovery-sidecar@.service" ||
  fail "discovery-sidecar@.service does not read /etc/discovery/sidecar-%i.env"
echo "env files: every variable documented, every expanded variable set"
echo "PASS"
