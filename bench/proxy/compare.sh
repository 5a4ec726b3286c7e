#!/usr/bin/env bash
# offload-agent and nginx side by side, in one run, in front of the same
# backend on loopback. A benchmark: it prints figures and asserts nothing.
#
#   bench/proxy/compare.sh [BUILD_DIR]        (default: build)
#
# Measures, for each proxy:
#   1. proxy CPU time per request: utime+stime of the proxy process (from
#      /proc/PID/stat) across a bounded wrk run of GET /size/100, the proxy
#      pinned with taskset to PROXY_CPU, wrk and the backend to LOAD_CPU;
#   2. memory per idle keep-alive connection: the proxy's RSS before and after
#      IDLE connections that each made one request and then stay open;
#   3. normal clients' throughput (wrk -c16) while SLOW slowloris connections
#      are open.
# nginx runs as one worker process (master_process off), upstream keepalive,
# proxy_buffering on, its configuration generated into a temporary directory.
#
# Knobs (environment): WRK_SECONDS=8 IDLE=5000 SLOW=2000 PROXY_CPU=0 LOAD_CPU=1
#   NGINX=/usr/sbin/nginx BACKEND_WORKERS=64 SETTLE_SECONDS=3.5
# Needs: wrk, nginx, python3, taskset (ci/deps.sh installs them).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD_DIR=${1:-build}
[[ $BUILD_DIR = /* ]] || BUILD_DIR="$ROOT/$BUILD_DIR"
WRK_SECONDS=${WRK_SECONDS:-8}
IDLE=${IDLE:-5000}
SLOW=${SLOW:-2000}
NCPU=$(nproc)
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-$((NCPU > 1 ? 1 : 0))}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
BACKEND_WORKERS=${BACKEND_WORKERS:-64}
SETTLE_SECONDS=${SETTLE_SECONDS:-3.5}
AGENT="$BUILD_DIR/agent/offload-agent"

for tool in wrk python3 taskset "$NGINX" "$AGENT"; do
  command -v "$tool" >/dev/null 2>&1 || [[ -x $tool ]] || { echo "compare.sh: missing $tool" >&2; exit 1; }
done
if [[ -x "$BUILD_DIR/server/offload-demo-server" ]]; then
  BACKEND=("$BUILD_DIR/server/offload-demo-server" --listen 127.0.0.1:0 --workers "$BACKEND_WORKERS")
  BACKEND_READY="offload-demo-server: listening on"
elif [[ -x "$BUILD_DIR/tests/integration/recording-backend" ]]; then
  BACKEND=("$BUILD_DIR/tests/integration/recording-backend" --listen 127.0.0.1:0
           --workers "$BACKEND_WORKERS" --record-max 0)
  BACKEND_READY="recording-backend: listening on"
else
  echo "compare.sh: build offload-demo-server or recording-backend in $BUILD_DIR first" >&2
  exit 1
fi

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
BENCH_NAME=compare
# shellcheck source=bench/proxy/lib.sh
source "$HERE/lib.sh"
cpu_split() { awk '{print $14, $15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# ---------------------------------------------------------------- backend
taskset -c "$LOAD_CPU" "${BACKEND[@]}" 2>"$TMP/backend.err" &
PIDS+=($!)
BPORT=$(port_of "$(wait_line "$TMP/backend.err" "$BACKEND_READY" 10)")

# ---------------------------------------------------------------- proxies
start_agent() {
  taskset -c "$PROXY_CPU" "$AGENT" run --listen 127.0.0.1:0 --upstream "tcp://127.0.0.1:$BPORT" \
    --admin off --max-clients 20000 --max-upstream 16 --persistent 16 \
    --header-timeout-ms 60000 --keepalive-timeout-ms 120000 2>"$TMP/agent.err" &
  PROXY_PID=$!
  PIDS+=("$PROXY_PID")
  PROXY_PORT=$(port_of "$(wait_line "$TMP/agent.err" "offload-agent: listening on" 10)")
}


run_wrk() {  # PORT SECONDS OUT
  taskset -c "$LOAD_CPU" wrk -t1 -c16 -d"$2s" --timeout 2s "http://127.0.0.1:$1/size/100" >"$3" 2>&1 || true
}
wrk_requests() { awk '/requests in/ {print $1}' "$1"; }
wrk_rps() { awk '/Requests\/sec/ {print $2}' "$1"; }

# measure NAME: fills R_<metric>_<NAME>
measure() {
  local name=$1
  "start_$name"
  run_wrk "$PROXY_PORT" 1 "$TMP/$name.warm"  # warm-up: pools, upstream connections

  # 1. CPU per request.
  local t0 t1 s0 s1 requests
  read -r u0 s0 < <(cpu_split "$PROXY_PID")
  run_wrk "$PROXY_PORT" "$WRK_SECONDS" "$TMP/$name.wrk"
  read -r u1 s1 < <(cpu_split "$PROXY_PID")
  requests=$(wrk_requests "$TMP/$name.wrk")
  eval "R_rps_$name=$(wrk_rps "$TMP/$name.wrk")"
  eval "R_cpu_$name=$(awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v n="$requests" -v hz="$CLK_TCK" \
    'BEGIN {printf "%.2f", n ? (u + s) / hz / n * 1e6 : 0}')"
  eval "R_usr_$name=$(awk -v u=$((u1 - u0)) -v n="$requests" -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", n ? u / hz / n * 1e6 : 0}')"
  eval "R_sys_$name=$(awk -v s=$((s1 - s0)) -v n="$requests" -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", n ? s / hz / n * 1e6 : 0}')"

  # 2. Memory per idle keep-alive connection, each reading taken once the
  # proxy has settled: the agent gives memory kept for reuse back once a
  # second when nothing used it (a burst's blocks are back within 2 to 3 s).
  sleep "$SETTLE_SECONDS"
  local rss0 rss1 ready
  rss0=$(rss_kb "$PROXY_PID")
  taskset -c "$LOAD_CPU" python3 "$HERE/idle_clients.py" --port "$PROXY_PORT" --connections "$IDLE" \
    --hold 120 >"$TMP/$name.idle" 2>&1 </dev/null &
  local idle_pid=$!
  PIDS+=("$idle_pid")
  ready=$(wait_line "$TMP/$name.idle" "idle: " 90 | sed -n 's/idle: \([0-9]*\) ready.*/\1/p')
  sleep "$SETTLE_SECONDS"
  rss1=$(rss_kb "$PROXY_PID")
  stop_pid "$idle_pid"
  eval "R_idle_$name=${ready:-0}"
  eval "R_mem_$name=$(awk -v a="$rss0" -v b="$rss1" -v n="${ready:-0}" 'BEGIN {printf "%.0f", n ? (b - a) * 1024 / n : 0}')"
  eval "R_rss_$name=$rss1"

  # 3. Throughput while slowloris connections are open.
  sleep 1
  python3 "$HERE/slowloris.py" --port "$PROXY_PORT" --connections "$SLOW" --interval 1 \
    --duration $((WRK_SECONDS + 10)) >"$TMP/$name.slow" 2>&1 &
  local slow_pid=$!
  PIDS+=("$slow_pid")
  local open
  open=$(wait_line "$TMP/$name.slow" "slowloris: " 30 | sed -n 's/slowloris: \([0-9]*\) open.*/\1/p')
  run_wrk "$PROXY_PORT" "$WRK_SECONDS" "$TMP/$name.storm"
  eval "R_storm_$name=$(wrk_rps "$TMP/$name.storm")"
  eval "R_slow_$name=${open:-0}"
  stop_pid "$slow_pid"
  stop_pid "$PROXY_PID"
}

echo "compare.sh: backend ${BACKEND[0]##*/} ($BACKEND_WORKERS workers); proxy on CPU $PROXY_CPU," \
  "wrk and backend on CPU $LOAD_CPU; wrk -t1 -c16 ${WRK_SECONDS}s GET /size/100"
measure agent
measure nginx

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b + 0 == 0) print "-"; else printf "%.2f", a / b}'; }
row() { printf '%-44s %12s %12s %10s\n' "$1" "$2" "$3" "$(ratio "$2" "$3")"; }
echo
printf '%-44s %12s %12s %10s\n' "" "agent" "nginx" "agent/nginx"
row "proxy CPU per request (us)" "$R_cpu_agent" "$R_cpu_nginx"
row "  of which user (us)" "$R_usr_agent" "$R_usr_nginx"
row "  of which system (us)" "$R_sys_agent" "$R_sys_nginx"
row "throughput, no slow clients (req/s)" "$R_rps_agent" "$R_rps_nginx"
row "memory per idle keep-alive conn (bytes RSS)" "$R_mem_agent" "$R_mem_nginx"
row "  idle connections held" "$R_idle_agent" "$R_idle_nginx"
row "  RSS with them (KiB)" "$R_rss_agent" "$R_rss_nginx"
row "throughput with slowloris open (req/s)" "$R_storm_agent" "$R_storm_nginx"
row "  slowloris connections open" "$R_slow_agent" "$R_slow_nginx"
