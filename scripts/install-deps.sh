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
  python3 python3-zmq python3-msgpack python3-pytest
  python3-prometheus-client python3-selenium chromium chromium-driver
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
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
