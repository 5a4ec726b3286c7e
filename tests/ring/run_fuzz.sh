#!/usr/bin/env bash
# Builds the ring fuzzer with libFuzzer + ASan + UBSan and runs it for
# ${FUZZ_SECONDS:-30} seconds. Exit 0: no finding; non-zero: a crash (the
# reproducer is left as crash-* in the work directory); 77: no clang++ with
# libFuzzer here (ctest shows a SKIP).
#   run_fuzz.sh [WORK_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="${1:-$root/build-fuzz/ring}"
mkdir -p "$work/corpus"
if ! command -v clang++ >/dev/null; then
  echo "run_fuzz.sh: SKIP: clang++ not found" >&2
  exit 77
fi
clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I"$root/include" "$here/fuzz_ring.cpp" "$root/server/ring_queue.cpp" "$root/server/ring_codec.cpp" \
  -o "$work/fuzz_ring" || { echo "run_fuzz.sh: SKIP: cannot build with libFuzzer" >&2; exit 77; }
# Seeds: honest records (a request, a body) and a record crossing the ring
# end, each after the consumer was moved off position 0.
python3 - "$work/corpus" <<'PY'
import struct, sys
def rec(t, flags, payload):
    b = struct.pack('<IHH', 8 + len(payload), t, flags) + payload
    return b + b'\0' * (-len(b) % 8)
def seed(name, skip_units, body):
    open(f"{sys.argv[1]}/seed-{name}", "wb").write(bytes([skip_units]) + b'\0' * 8 + b'\0' + body)
text = b"GET /abc HTTP/1.1\r\nHost: x\r\n\r\n"
req = struct.pack('<QIHBB', 1, len(text), 1, 0, 1) + struct.pack('<IIII', 0, 3, 4, 4)
req += struct.pack('<IIII', len(text), 0, 0, 0) + struct.pack('<IIII', 19, 4, 25, 1) + text
seed("request", 2, rec(2, 0, req))
seed("body", 2, rec(4, 1, struct.pack('<Q', 7) + b"abcdefgh"))
seed("crossing", 255, rec(4, 1, struct.pack('<Q', 7) + b"x" * 2100))
PY
cd "$work"
exec ./fuzz_ring -max_total_time="${FUZZ_SECONDS:-30}" -max_len=8192 -timeout=10 -use_value_profile=1 \
  -print_final_stats=1 corpus
