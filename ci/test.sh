#!/usr/bin/env bash
# Installs the dependencies, builds, and runs every test (unit, integration, BPF, fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/deps.sh
BUILD_DIR="${BUILD_DIR:-build}"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
# Raise the descriptor limit for the 1,000-client tests (root may raise the hard limit).
ulimit -Hn 20000 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cd "$BUILD_DIR"
ctest --output-on-failure --timeout 600 "$@"
