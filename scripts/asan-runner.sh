#!/usr/bin/env bash
# Cargo test runner for the AddressSanitizer build of the emulator: preloads GCC's ASan
# runtime (it must come first) and runs the test binary.
set -euo pipefail
export LD_PRELOAD="$(gcc -print-file-name=libasan.so)"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}"
exec "$@"
