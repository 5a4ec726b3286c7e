#!/usr/bin/env bash
# offload-agent beside nginx and HAProxy on this machine, in one command:
#
#   bench/compare.sh [--quick] [--proxies direct,nginx,haproxy,agent,agent-ring]
#                    [--scenarios throughput,idle,slowloris,slowreaders,split,passthrough]
#                    [--runs 2] [--seconds 10] [--build build-release] ...
#
# Installs nginx, HAProxy and wrk from Debian when they are missing (as root),
# builds the agent, the demo server and the byte mover in Release (build-release)
# unless --build names a build, then runs bench/compare.py (its header lists the
# proxies and scenarios; --help lists every knob). Loopback only; every load is
# bounded in time; what it starts it stops, by PID. Each scenario runs twice and
# both runs are shown. Results: bench/results/<date>-<host>.json, a table on
# stdout, and bench/results/<date>-<host>.png when python3-matplotlib is there.
# The full run takes about 15 minutes on 2 cores; --quick about 3.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=/usr/bin/python3  # Debian's, for matplotlib

missing=()
for tool in nginx haproxy wrk taskset; do
  command -v "$tool" >/dev/null 2>&1 || [[ -x /usr/sbin/$tool ]] || missing+=("$tool")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "compare.sh: installing ${missing[*]} from Debian"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]/taskset/util-linux}" >/dev/null
  else
    echo "compare.sh: missing ${missing[*]}: apt-get install ${missing[*]/taskset/util-linux}" >&2
    exit 1
  fi
fi

build=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [[ ${args[i]} == --build ]] && build=${args[i + 1]:-}
  [[ ${args[i]} == --build=* ]] && build=${args[i]#--build=}
done
if [[ -z $build ]]; then
  build="$ROOT/build-release"
  cmake -S "$ROOT" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build" -j"$(nproc)" --target offload-agent offload-demo-server bulk_tcp >/dev/null
  args+=(--build "$build")
fi

# 10,000 idle clients need as many descriptors in the client and in the proxy.
ulimit -Hn 20000 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if ! "$PY" -c 'import matplotlib' 2>/dev/null && [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "compare.sh: installing python3-matplotlib from Debian (for the picture)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-matplotlib >/dev/null || true
fi

out=$("$PY" "$ROOT/bench/compare.py" "${args[@]}" | tee /dev/stderr | sed -n 's/^compare: results in \([^ ]*\.json\).*/\1/p')
if [[ -n $out ]] && "$PY" -c 'import matplotlib' 2>/dev/null; then
  "$PY" "$ROOT/bench/plot.py" "$out"
elif [[ -n $out ]]; then
  echo "compare.sh: no picture (apt-get install python3-matplotlib, then bench/plot.py $out)"
fi
