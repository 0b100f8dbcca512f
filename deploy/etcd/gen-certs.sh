#!/usr/bin/env bash
# Creates the TLS material for a 3-member etcd cluster and its clients with openssl:
#
#   ca.pem / ca.key                  client CA: signs the members' client-facing server
#                                    certificates and every client certificate
#   peer-ca.pem / peer-ca.key        peer CA: signs only the peer certificates, so a client
#                                    certificate can never join the Raft traffic
#   <member>.pem / .key              client-facing server certificate of each member
#                                    (serverAuth + clientAuth: etcd's gRPC gateway dials itself
#                                    with it when --client-cert-auth is on)
#   <member>-peer.pem / .key         peer (member <-> member) certificate, mTLS
#   <user>.pem / .key                client certificates, CN = etcd user name (clientAuth)
#
# Keep ca.key and peer-ca.key offline once you are done.
#
# Usage: deploy/etcd/gen-certs.sh [OUT_DIR]          (default ./pki)
#   MEMBERS   "NAME:ADDR[,ADDR...] ..."  default "etcd-1:10.0.0.11 etcd-2:10.0.0.12 etcd-3:10.0.0.13"
#             each ADDR is an IPv4 address or a DNS name; every member certificate also
#             carries DNS:<NAME>, DNS:localhost and IP:127.0.0.1
#   CLIENTS   client certificates to create (CN = name), default
#             "root discovery-registrar discovery-reader"
#   CA_DAYS   validity of the CA (default 3650), CERT_DAYS of the others (default 825)
#   KEY_ALG   "ec" (P-256, default) or "rsa" (2048 bit)
#
# Idempotent: existing files are kept (re-running adds what is missing, e.g. a new client);
# delete a certificate and its key to re-issue it. Never regenerate the CA of a running
# cluster: every member and client trusts it.
#
# With --client-cert-auth, etcd authenticates a client whose certificate it trusts as the
# user named by the certificate's CN when no password token is sent: whoever holds
# root.key is root. Hand out client keys like passwords.
set -euo pipefail

OUT=${1:-pki}
MEMBERS=${MEMBERS:-"etcd-1:10.0.0.11 etcd-2:10.0.0.12 etcd-3:10.0.0.13"}
CLIENTS=${CLIENTS:-"root discovery-registrar discovery-reader"}
CA_DAYS=${CA_DAYS:-3650}
CERT_DAYS=${CERT_DAYS:-825}
KEY_ALG=${KEY_ALG:-ec}

command -v openssl >/dev/null || { echo "gen-certs.sh: openssl not found" >&2; exit 1; }
umask 077
mkdir -p "$OUT"
cd "$OUT"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

newkey() {  # newkey FILE
  case "$KEY_ALG" in
    ec) openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null ;;
    rsa) openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null ;;
    *) echo "gen-certs.sh: KEY_ALG must be ec or rsa" >&2; exit 1 ;;
  esac
}

# make_ca NAME CN: NAME.pem/NAME.key, a self-signed CA, unless they exist.
make_ca() {
  if [ -f "$1.pem" ] && [ -f "$1.key" ]; then
    return 0
  fi
  newkey "$1.key"
  openssl req -x509 -new -key "$1.key" -sha256 -days "$CA_DAYS" -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$1.pem"
  echo "created $OUT/$1.pem (CA $2)"
}
make_ca ca discovery-etcd-client-ca
make_ca peer-ca discovery-etcd-peer-ca

# issue CA NAME CN EKU [SAN]: NAME.pem/NAME.key signed by CA, unless they exist.
issue() {
  local ca=$1 name=$2 cn=$3 eku=$4 san=${5:-}
  if [ -f "$name.pem" ] && [ -f "$name.key" ]; then
    return 0
  fi
  newkey "$name.key"
  openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$tmp/$name.csr" 2>/dev/null
  {
    echo "basicConstraints = critical, CA:FALSE"
    echo "keyUsage = critical, digitalSignature, keyEncipherment"
    echo "extendedKeyUsage = $eku"
    echo "authorityKeyIdentifier = keyid"
    if [ -n "$san" ]; then echo "subjectAltName = $san"; fi
  } >"$tmp/$name.ext"
  openssl x509 -req -in "$tmp/$name.csr" -CA "$ca.pem" -CAkey "$ca.key" -CAcreateserial \
    -days "$CERT_DAYS" -sha256 -extfile "$tmp/$name.ext" -out "$name.pem" 2>/dev/null
  echo "created $OUT/$name.pem (CN=$cn${san:+, $san})"
}

for spec in $MEMBERS; do
  name=${spec%%:*}
  addrs=${spec#*:}
  if [ "$name" = "$spec" ] || [ -z "$name" ] || [ -z "$addrs" ]; then
    echo "gen-certs.sh: MEMBERS entry \"$spec\" is not NAME:ADDR[,ADDR...]" >&2
    exit 1
  fi
  san="DNS:$name,DNS:localhost,IP:127.0.0.1"
  IFS=, read -r -a list <<<"$addrs"
  for a in "${list[@]}"; do
    case ",$san," in *",IP:$a,"* | *",DNS:$a,"*) continue ;; esac
    if [[ $a =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]]; then san="$san,IP:$a"; else san="$san,DNS:$a"; fi
  done
  issue ca "$name" "$name" "serverAuth, clientAuth" "$san"
  issue peer-ca "$name-peer" "$name" "serverAuth, clientAuth" "$san"
done

for user in $CLIENTS; do
  issue ca "$user" "$user" "clientAuth"
done
rm -f ./*.srl
chmod 0644 ./*.pem
chmod 0600 ./*.key
