#!/usr/bin/env bash
# Builds the HTTP parser fuzzer (libFuzzer + ASan + UBSan, clang) and runs it
# for FUZZ_SECONDS (default 60) on the seed corpus committed in corpus/.
#
#   tests/http/run_fuzz.sh [OUT_DIR]     (OUT_DIR defaults to build-http/tests/http)
#
# Exit status: 0 nothing found; non-zero when the fuzzer found a crash, a
# sanitizer report, a timeout or a broken invariant (the input is kept in
# OUT_DIR/fuzz/artifacts/); 77 (a ctest SKIP) when this clang cannot build
# libFuzzer targets at all.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
out=$(mkdir -p "${1:-$src/build-http/tests/http}" && cd "${1:-$src/build-http/tests/http}" && pwd)/fuzz
cxx=${FUZZ_CXX:-clang++}
seconds=${FUZZ_SECONDS:-60}
flags=(-std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
       -fno-omit-frame-pointer)

mkdir -p "$out/corpus" "$out/artifacts"

# A missing toolchain is a visible skip, not a pass and not a failure.
if ! command -v "$cxx" >/dev/null; then
  echo "SKIP: $cxx not found"
  exit 77
fi
probe="$out/probe.cpp"
printf '%s\n' '#include <cstdint>' '#include <cstddef>' \
  'extern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }' >"$probe"
if ! "$cxx" "${flags[@]}" "$probe" -o "$out/probe" 2>"$out/probe.log"; then
  echo "SKIP: $cxx cannot build libFuzzer targets (libclang-rt-dev missing?):"
  cat "$out/probe.log"
  exit 77
fi

# Our own code failing to build is a failure.
"$cxx" "${flags[@]}" -I"$src/agent" -I"$here" \
  "$here/fuzz_http_parser.cpp" "$src/agent/http/http_parser.cpp" -o "$out/fuzz_http_parser"

# New inputs go to the build tree's corpus; the committed seeds are read only.
# libFuzzer's own exit code for a finding is 77, which ctest would read as
# SKIP: findings exit 1 instead, so the test fails.
exec "$out/fuzz_http_parser" "$out/corpus" "$here/corpus" \
  -dict="$here/http.dict" -error_exitcode=1 -timeout_exitcode=1 \
  -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
  -artifact_prefix="$out/artifacts/" -print_final_stats=1
