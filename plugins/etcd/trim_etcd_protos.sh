#!/bin/sh
# Copies etcd's v3 API .proto files (kv, auth, rpc) from an etcd source tree into <out>/etcd/...,
# without the gogoproto and google.api.http annotations: those only steer Go code generation and
# the HTTP gateway, and would need protos we do not ship. Fails if any annotation is left.
# Usage: trim_etcd_protos.sh <etcd source tree> <out>
set -eu
src=$1
out=$2
mkdir -p "$out/etcd/mvcc/mvccpb" "$out/etcd/auth/authpb" "$out/etcd/etcdserver/etcdserverpb"
trim() {
  sed -e '/^import "gogoproto\/gogo.proto";/d' \
      -e '/^option (gogoproto\.[a-z_]*) = [a-z]*;/d' \
      -e '/^import "google\/api\/annotations.proto";/d' \
      -e '/option (google\.api\.http) = {/,/^[[:space:]]*};[[:space:]]*$/d' \
      -e 's/ *\[(gogoproto\.[^]]*\]//g' \
      "$1" > "$2.tmp"
  if grep -nE 'gogoproto|google\.api' "$2.tmp"; then
    echo "trim_etcd_protos.sh: annotations left in $2 (a new etcd layout?): adapt the script" >&2
    exit 1
  fi
  mv "$2.tmp" "$2"
}
trim "$src/mvcc/mvccpb/kv.proto" "$out/etcd/mvcc/mvccpb/kv.proto"
trim "$src/auth/authpb/auth.proto" "$out/etcd/auth/authpb/auth.proto"
trim "$src/etcdserver/etcdserverpb/rpc.proto" "$out/etcd/etcdserver/etcdserverpb/rpc.proto"
