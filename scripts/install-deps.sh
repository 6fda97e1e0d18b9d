#!/usr/bin/env bash
# Installs everything shmsched needs to build, test and benchmark on Debian 12.
# Idempotent: packages already present are skipped; apt lists are refreshed only when needed.
set -euo pipefail

packages=(
  build-essential cmake pkg-config git ca-certificates
  clang libclang-rt-14-dev clang-format
  libboost-dev libboost-program-options-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libzmq3-dev cppzmq-dev libmsgpack-cxx-dev
  libspdlog-dev libfmt-dev
  librdkafka-dev kcat
  libsystemd-dev
  libssl-dev
  libconcurrentqueue-dev libabsl-dev
  dpkg-dev file systemd
  redis-server libhiredis-dev
  etcd-server etcd-client libcurl4-openssl-dev nlohmann-json3-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  python3 python3-zmq python3-msgpack python3-pytest
  python3-prometheus-client python3-selenium chromium chromium-driver
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

# etcd's v3 .proto files (the etcd transport compiles them): Debian ships them in
# golang-etcd-server-dev, which depends on ~400 MB of Go packages. Its .deb alone is under 1 MB:
# the three files are extracted from it, unless the package is installed anyway.
etcd_protos() {
  local have=/usr/share/gocode/src/go.etcd.io/etcd/etcdserver/etcdserverpb/rpc.proto
  local dest=/usr/local/share/shmsched/etcd-protos
  [[ -f $have || -f $dest/go.etcd.io/etcd/etcdserver/etcdserverpb/rpc.proto ]] && return 0
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: etcd's .proto files are missing: run as root to extract them" >&2
    return 1
  fi
  local tmp
  tmp=$(mktemp -d)
  chmod 755 "$tmp"  # apt-get download runs as _apt
  (cd "$tmp" && apt-get download -qq golang-etcd-server-dev 2>/dev/null ||
    { apt-get update -qq && apt-get download -qq golang-etcd-server-dev; })
  dpkg-deb -x "$tmp"/golang-etcd-server-dev_*.deb "$tmp/x"
  local src=$tmp/x/usr/share/gocode/src/go.etcd.io/etcd
  for f in mvcc/mvccpb/kv.proto auth/authpb/auth.proto etcdserver/etcdserverpb/rpc.proto; do
    install -D -m 0644 "$src/$f" "$dest/go.etcd.io/etcd/$f"
  done
  rm -rf "$tmp"
  echo "install-deps: extracted etcd's .proto files into $dest"
}

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
  etcd_protos
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps: missing packages: ${missing[*]}" >&2
  echo "install-deps: run as root (or: sudo $0) to install them" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
etcd_protos
