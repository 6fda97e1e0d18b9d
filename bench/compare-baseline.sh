#!/usr/bin/env bash
# Builds another revision's shmschedd and zeromq plugin in build-baseline/ and runs this tree's
# dispatch_bench against both, in the same run: the latency phases of the baseline are printed
# beside this build's, with the ratios.
#
#   bench/compare-baseline.sh REV [dispatch_bench arguments...]
#   e.g. bench/compare-baseline.sh d72ec05 --latency 2000 --throughput 200000
#
# Needs build/ (scripts/test.sh --quick, or cmake) for this tree's binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: bench/compare-baseline.sh REV [dispatch_bench arguments...]}
shift
src=build-baseline/src
rm -rf "$src"
mkdir -p "$src"
git archive "$rev" | tar -x -C "$src"
cmake -S "$src" -B build-baseline/build -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSHMSCHED_BUILD_TESTS=OFF -DSHMSCHED_BUILD_BENCH=OFF >/dev/null
cmake --build build-baseline/build -j "$(nproc)" --target shmschedd shmsched_transport_zeromq
exec build/bench/dispatch_bench --baseline-bin-dir build-baseline/build/bin \
  --baseline-plugin-dir build-baseline/build/plugins "$@"
