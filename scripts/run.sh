#!/usr/bin/env bash
# Installs dependencies, builds, and runs shmschedd in the foreground with its embedded default
# configuration (zeromq transport) in a local runtime directory, ./run.
# Extra arguments go to shmschedd, e.g.: scripts/run.sh --max-active-executions=20
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
# The same configuration as the test suite's first build (scripts/test.sh), so the two share it.
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr >/dev/null
cmake --build build -j "$(nproc)" --target shmschedd shmschedctl shmsched_transport_zeromq

mkdir -p run
echo "shmschedd: runtime directory $(pwd)/run; Ctrl-C (SIGTERM) stops it, SIGHUP reloads"
exec build/bin/shmschedd --runtime-dir="$(pwd)/run" --plugin-dir="$(pwd)/build/plugins" "$@"
