#!/usr/bin/env bash
# Enables etcd authentication and creates the roles and users discovery needs. Idempotent:
# run it again at any time (after adding a user, or on a new cluster); it only adds what is
# missing and never changes an existing user's password (see "rotation" in deploy/README.md).
#
#   role discovery-registrar   readwrite on the prefix  -> user discovery-registrar
#                              (game servers, discoveryctl register sidecars, discoveryd)
#                              and on the single key <prefix without '/'>.epoch (e.g.
#                              /services.epoch): discoveryd's SSE epoch, shared by replicas
#   role discovery-reader      read on the prefix       -> user discovery-reader
#                              (gateways, matchmakers, dashboards: Range + Watch only)
#   user root with role root   (etcd requires it before `auth enable`; administration only)
#
# Lease calls (grant, keepalive, time-to-live, revoke) need no extra role: etcd checks them
# against the keys attached to the lease, i.e. the prefix (tests/deploy proves it).
#
# Connection: the usual etcdctl variables, e.g.
#   ETCDCTL_ENDPOINTS=https://10.0.0.11:2379,https://10.0.0.12:2379,https://10.0.0.13:2379
#   ETCDCTL_CACERT=pki/ca.pem ETCDCTL_CERT=pki/root.pem ETCDCTL_KEY=pki/root.key
# Passwords (read from the environment, passed to etcdctl on stdin, never on a command line):
#   ETCD_ROOT_PASSWORD             root's password, also used to log in once auth is on
#   DISCOVERY_REGISTRAR_PASSWORD   discovery-registrar's password
#   DISCOVERY_READER_PASSWORD      discovery-reader's password
# An empty password creates the user without one (etcd --no-password): it can then only
# authenticate with a client certificate whose CN is its name (mTLS).
#   DISCOVERY_PREFIX               key prefix, default /services/ (must end with '/')
#   ETCDCTL                        etcdctl binary, default etcdctl
set -euo pipefail

PREFIX=${DISCOVERY_PREFIX:-/services/}
ETCDCTL=${ETCDCTL:-etcdctl}
ROOT_PW=${ETCD_ROOT_PASSWORD:-}
REGISTRAR_PW=${DISCOVERY_REGISTRAR_PASSWORD:-}
READER_PW=${DISCOVERY_READER_PASSWORD:-}

case "$PREFIX" in
  /*/) ;;
  *) echo "rbac.sh: DISCOVERY_PREFIX \"$PREFIX\" must start and end with '/'" >&2; exit 1 ;;
esac
EPOCH_KEY="${PREFIX%/}.epoch"
# Credentials come from the variables above, not from an ETCDCTL_USER left in the shell.
unset ETCDCTL_USER ETCDCTL_PASSWORD

# Before `auth enable` (or when root's client certificate authenticates us by its CN)
# plain calls work; afterwards log in as root with the password.
AUTH=()
ctl() { "$ETCDCTL" "${AUTH[@]}" "$@"; }
if ! err=$(ctl user list 2>&1 >/dev/null); then
  if [ -z "$ROOT_PW" ]; then
    echo "rbac.sh: etcd refused an anonymous call ($err);" \
      "set ETCD_ROOT_PASSWORD or use root's client certificate" >&2
    exit 1
  fi
  export ETCDCTL_PASSWORD="$ROOT_PW"
  AUTH=(--user root)
  ctl user list >/dev/null
fi

# ensure_user NAME PASSWORD ROLE
ensure_user() {
  local name=$1 pw=$2 role=$3
  if ctl user get "$name" >/dev/null 2>&1; then
    echo "user $name: exists (password unchanged)"
  elif [ -n "$pw" ]; then
    printf '%s\n' "$pw" | ctl user add "$name" --interactive=false >/dev/null
    echo "user $name: created"
  else
    ctl user add "$name" --no-password >/dev/null
    echo "user $name: created without password (client-certificate CN only)"
  fi
  if ctl user get "$name" | grep -qx "Roles: .*\b$role\b.*"; then
    echo "user $name: has role $role"
  else
    ctl user grant-role "$name" "$role" >/dev/null
    echo "user $name: granted role $role"
  fi
}

# ensure_role NAME PERMISSION: PERMISSION (read|readwrite) on [PREFIX, prefix end).
ensure_role() {
  local name=$1 perm=$2
  if ctl role get "$name" >/dev/null 2>&1; then
    echo "role $name: exists"
  else
    ctl role add "$name" >/dev/null
    echo "role $name: created"
  fi
  # Granting the same permission again is a no-op in etcd.
  ctl role grant-permission "$name" --prefix=true "$perm" "$PREFIX" >/dev/null
  echo "role $name: $perm on $PREFIX (prefix)"
  if [ "$perm" = readwrite ]; then
    ctl role grant-permission "$name" readwrite "$EPOCH_KEY" >/dev/null
    echo "role $name: readwrite on $EPOCH_KEY (discoveryd's SSE epoch)"
  fi
}

ensure_user root "$ROOT_PW" root
ensure_role discovery-registrar readwrite
ensure_role discovery-reader read
ensure_user discovery-registrar "$REGISTRAR_PW" discovery-registrar
ensure_user discovery-reader "$READER_PW" discovery-reader

if [ ${#AUTH[@]} -gt 0 ]; then
  echo "auth: already enabled"  # we had to log in
elif ! out=$(ctl auth enable 2>&1); then
  echo "rbac.sh: auth enable: $out" >&2
  exit 1
else
  echo "auth: enabled"
fi
