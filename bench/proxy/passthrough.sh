#!/usr/bin/env bash
# Pass-through side by side, in one run: a bulk transfer (BYTES, default
# 1 GiB, client to server) and short connections per second, directly, through
# the agent (`proxy = "passthrough"`) with the kernel splice (`splice =
# "kernel"`: sockhash + stream verdict, needs root) and in user space
# (`splice = "user"`, as --no-bpf), and through HAProxy in `mode tcp` with
# `option splice-auto` (it splices in the kernel). A benchmark: it prints
# figures and asserts nothing. Without root the kernel column is left out.
#
#   bench/proxy/passthrough.sh [BUILD_DIR]        (default: build)
#
# Each proxy is pinned to PROXY_CPU, the client and server to LOAD_CPU. The
# proxy's CPU is utime+stime from /proc/PID/stat across the transfer, shown
# as a share of the transfer's wall time. ROUNDS=2 runs each twice.
# Knobs: BYTES=1073741824 CHURN_SECONDS=3 ROUNDS=2 PROXY_CPU=0 LOAD_CPU=1
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD_DIR=${1:-build}
[[ $BUILD_DIR = /* ]] || BUILD_DIR="$ROOT/$BUILD_DIR"
BYTES=${BYTES:-1073741824}
CHURN_SECONDS=${CHURN_SECONDS:-3}
ROUNDS=${ROUNDS:-2}
NCPU=$(nproc)
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-$((NCPU > 1 ? 1 : 0))}
AGENT="$BUILD_DIR/agent/offload-agent"
BULK="$BUILD_DIR/bench/proxy/bulk_tcp"
HAPROXY=${HAPROXY:-$(command -v haproxy || echo /usr/sbin/haproxy)}
BENCH_NAME=passthrough
source "$HERE/lib.sh"

for tool in "$AGENT" "$BULK" taskset python3; do
  command -v "$tool" >/dev/null 2>&1 || [[ -x $tool ]] || { echo "passthrough.sh: missing $tool" >&2; exit 1; }
done
HAVE_HAPROXY=1
[[ -x $HAPROXY ]] || { echo "passthrough.sh: no haproxy ($HAPROXY): its column is left out" >&2; HAVE_HAPROXY=0; }

BPORT=$(free_port)
taskset -c "$LOAD_CPU" "$BULK" serve "$BPORT" 2>"$TMP/server.log" &
PIDS+=($!)
wait_line "$TMP/server.log" "listening on" 10 >/dev/null

# start_agent MODE: MODE is the splice setting, kernel or user.
start_agent() {
  PROXY_PORT=$(free_port)
  cat >"$TMP/agent.toml" <<EOF
admin = "off"
splice = "$1"
[[upstream]]
name = "bulk"
servers = ["tcp://127.0.0.1:$BPORT"]
[[listener]]
listen = "127.0.0.1:$PROXY_PORT"
proxy = "passthrough"
upstream = "bulk"
EOF
  taskset -c "$PROXY_CPU" "$AGENT" run -c "$TMP/agent.toml" 2>"$TMP/agent.log" &
  PROXY_PID=$!
  PIDS+=("$PROXY_PID")
  wait_line "$TMP/agent.log" "listening on" 10 >/dev/null
}

start_haproxy() {
  PROXY_PORT=$(free_port)
  cat >"$TMP/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4000
defaults
  mode tcp
  option splice-auto
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend f
  bind 127.0.0.1:$PROXY_PORT
  default_backend b
backend b
  server s1 127.0.0.1:$BPORT
EOF
  taskset -c "$PROXY_CPU" "$HAPROXY" -f "$TMP/haproxy.cfg" -db 2>"$TMP/haproxy.log" &
  PROXY_PID=$!
  PIDS+=("$PROXY_PID")
  wait_listening "$PROXY_PORT" 10
}

# measure NAME PORT [PID]: one bulk transfer and one churn run.
declare -A GBPS CPU CPS
measure() {
  local name=$1 port=$2 pid=${3:-} t0=0 t1=0 out secs
  [[ -n $pid ]] && t0=$(cpu_ticks "$pid")
  out=$(taskset -c "$LOAD_CPU" "$BULK" send "$port" "$BYTES")
  [[ -n $pid ]] && t1=$(cpu_ticks "$pid")
  secs=${out%% *}
  GBPS[$name]+="${out##* } "
  if [[ -n $pid ]]; then
    CPU[$name]+="$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v s="$secs" 'BEGIN {printf "%.1f", t / hz / s * 100}') "
  else
    CPU[$name]+="- "
  fi
  CPS[$name]+="$(taskset -c "$LOAD_CPU" "$BULK" churn "$port" "$CHURN_SECONDS") "
}

HAVE_KERNEL=1
[[ $(id -u) == 0 ]] || { echo "passthrough.sh: not root: the kernel splice column is left out" >&2; HAVE_KERNEL=0; }

echo "passthrough.sh: $((BYTES >> 20)) MiB client to server, proxy on CPU $PROXY_CPU, client and server on CPU $LOAD_CPU, $ROUNDS round(s)"
for _ in $(seq 1 "$ROUNDS"); do
  measure direct "$BPORT"
  if [[ $HAVE_KERNEL == 1 ]]; then
    start_agent kernel
    measure kernel "$PROXY_PORT" "$PROXY_PID"
    stop_pid "$PROXY_PID"
  fi
  start_agent user
  measure agent "$PROXY_PORT" "$PROXY_PID"
  stop_pid "$PROXY_PID"
  if [[ $HAVE_HAPROXY == 1 ]]; then
    start_haproxy
    measure haproxy "$PROXY_PORT" "$PROXY_PID"
    stop_pid "$PROXY_PID"
  fi
done

row() { printf "%-44s %-20s %-20s %-20s %-20s\n" "$@"; }
echo
row "" direct "agent (kernel splice)" "agent (user space)" "haproxy (splice)"
row "bulk throughput (GB/s), each round" "${GBPS[direct]}" "${GBPS[kernel]:-}" "${GBPS[agent]}" "${GBPS[haproxy]:-}"
row "proxy CPU during the transfer (% of wall)" "${CPU[direct]}" "${CPU[kernel]:-}" "${CPU[agent]}" "${CPU[haproxy]:-}"
row "short connections per second" "${CPS[direct]}" "${CPS[kernel]:-}" "${CPS[agent]}" "${CPS[haproxy]:-}"
echo "(the agent's CPU is its own process's; the kernel splice's redirect work runs in softirq and kworkers, not counted)"
