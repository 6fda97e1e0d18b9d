#!/usr/bin/env bash
# The whole test suite: installs dependencies, then builds and runs ctest four times:
#   build/       Release (-O3, as most people build it), every test except the long label
#   build-asan/  ASan + UBSan, every test (except the long kill storm)
#   build-tsan/  TSan: the queue's and the journal's threads racing, the supervisor end to end
#   build-fuzz/  clang + libFuzzer: smoke runs of the request decoder, the audit record decoder and
#                the journal's record decoder
# Usage: scripts/test.sh [--quick]   (--quick: only the first build)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[[ "${1:-}" == "--quick" ]] && quick=1

scripts/install-deps.sh
jobs=$(nproc)

# run_suite DIR SANITIZER TARGETS CTEST-ARGS...   (TARGETS: "all" or a space-separated list)
# BUILD_TYPE (default RelWithDebInfo) chooses the CMake build type.
run_suite() {
  local dir=$1 sanitize=$2 targets=$3 ctest_args=("${@:4}")
  echo "=== ${dir} (sanitizer: ${sanitize:-none}, ${BUILD_TYPE:-RelWithDebInfo}) ==="
  # Sanitizer builds: -g1 (line tables, enough for the reports' stack traces) compiles about 15%
  # faster than -g; ASan at -O1 (what its documentation suggests) builds in 5 minutes here
  # instead of 8. TSan stays at -O2: at -O1 GCC 12 warns of a maybe-uninitialized optional.
  local flags=() opt=-O2
  [[ $sanitize == address ]] && opt=-O1
  [[ -n $sanitize ]] && flags=(-DCMAKE_CXX_FLAGS_RELWITHDEBINFO="$opt -g1 -DNDEBUG"
    -DCMAKE_C_FLAGS_RELWITHDEBINFO="$opt -g1 -DNDEBUG")
  echo "=== ${dir}: configure at $(date +%T)"
  cmake -S . -B "$dir" -DSHMSCHED_SANITIZE="$sanitize" -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" -DSHMSCHED_WERROR=ON \
    "${flags[@]}" ${EXTRA_CMAKE_ARGS:-} >/dev/null
  if [[ $targets == all ]]; then
    cmake --build "$dir" -j "$jobs"
  else
    # shellcheck disable=SC2086
    cmake --build "$dir" -j "$jobs" --target $targets
  fi
  echo "=== ${dir}: built at $(date +%T)"
  (cd "$dir" && ctest --output-on-failure -j "$jobs" "${ctest_args[@]}")
}

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$(pwd)/tests/tsan.supp"

# The first build is configured for /usr, so that its package test builds a standard .deb.
# The benchmarks are not built here (they are not tests, and the suite has 20 minutes): build
# them with cmake --build build --target queue_bench dispatch_bench ... (docs/benchmarks.md).
BUILD_TYPE=Release EXTRA_CMAKE_ARGS="-DCMAKE_INSTALL_PREFIX=/usr -DSHMSCHED_BUILD_BENCH=OFF" \
  run_suite build "" all -LE long
if ((quick == 0)); then
  # The simulation runs 10,000 seeds in the first build; a thousand suffice under the sanitizers.
  # The package is tested once, in the first build.
  # The claim race runs 10,000 rounds in the first build; 1,000 under the sanitizers.
  # The browser test runs once, in the first build (the page is the same; Chromium under load is
  # slow).
  # etcd's footprint (100,000 executions through the plugin, a minute of etcd's CPU) is measured
  # in the first build only. (Not SHMSCHED_ETCD_*: shmschedd reads those as the etcd transport's
  # options, and refuses an unknown one.)
  SHMSCHED_SIM_SEEDS=1000 SHMSCHED_CLAIM_ROUNDS=1000 SHMSCHED_FOOTPRINT_EXECUTIONS=0 \
    run_suite build-asan address all -LE "long|package|browser"
  SHMSCHED_CLAIM_ROUNDS=1000 run_suite build-tsan thread \
    "queue_concurrency_test queue_durable_marks_test daemon_e2e_test daemon_robustness_test daemon_workers_test daemon_http_test daemon_journal_test claim_racer audit_log_test shmschedctl journal_test" \
    -L "tsan|e2e|audit|journal"
  CXX=clang++ EXTRA_CMAKE_ARGS=-DSHMSCHED_FUZZ=ON run_suite build-fuzz "" "request_decoder_fuzz audit_record_fuzz journal_record_fuzz" -L fuzz
fi
echo "test.sh: all suites passed; the dashboard's screenshot from the browser test: build/artifacts/dashboard.png"
