#!/usr/bin/env bash
# offload-agent with one shard and with two, in one run, in front of the same
# backend on loopback. A benchmark: it prints figures and asserts nothing.
#
#   bench/proxy/shards.sh [BUILD_DIR]        (default: build)
#
# For workers=1 and workers=2 (in that order, ROUNDS times), a bounded wrk
# run of GET /size/100 through the agent; prints req/s and the agent's CPU
# time per request (utime+stime of the whole process, every shard thread
# included, from /proc/PID/stat), and the workers=2 / workers=1 ratios.
# Nothing is pinned unless PIN=1 (then shard i runs on CPU i and wrk and the
# backend are left to the scheduler). On a machine with few cores the second
# shard competes with wrk and the backend for the same CPUs: read the
# figures with the core count this prints.
#
# Knobs (environment): WRK_SECONDS=8 WRK_THREADS=2 WRK_CONNECTIONS=64 ROUNDS=1
#   PIN=0 BACKEND_WORKERS=64 MAX_UPSTREAM=16
# Needs: wrk, python3.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD_DIR=${1:-build}
[[ $BUILD_DIR = /* ]] || BUILD_DIR="$ROOT/$BUILD_DIR"
WRK_SECONDS=${WRK_SECONDS:-8}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-64}
ROUNDS=${ROUNDS:-1}
PIN=${PIN:-0}
BACKEND_WORKERS=${BACKEND_WORKERS:-64}
MAX_UPSTREAM=${MAX_UPSTREAM:-16}
AGENT="$BUILD_DIR/agent/offload-agent"
SERVER="$BUILD_DIR/server/offload-demo-server"

for tool in wrk python3 "$AGENT" "$SERVER"; do
  command -v "$tool" >/dev/null 2>&1 || [[ -x $tool ]] || { echo "shards.sh: missing $tool" >&2; exit 1; }
done

BENCH_NAME=shards
# shellcheck source=bench/proxy/lib.sh
source "$HERE/lib.sh"

"$SERVER" --listen 127.0.0.1:0 --workers "$BACKEND_WORKERS" 2>"$TMP/backend.err" &
PIDS+=($!)
BPORT=$(port_of "$(wait_line "$TMP/backend.err" "offload-demo-server: listening on" 10)")

start_agent() {  # WORKERS ROUND (a log of its own: a reused one could show the last agent's port)
  local cpus=() log="$TMP/agent.w$1.r$2.err"
  if [[ $PIN = 1 ]]; then cpus=(--cpus "$(seq -s, 0 $(($1 - 1)))"); else cpus=(--workers "$1"); fi
  "$AGENT" run --listen 127.0.0.1:0 --upstream "tcp://127.0.0.1:$BPORT" --admin off \
    --max-clients 20000 --max-upstream "$MAX_UPSTREAM" --persistent "$MAX_UPSTREAM" \
    "${cpus[@]}" 2>"$log" &
  AGENT_PID=$!
  PIDS+=("$AGENT_PID")
  AGENT_PORT=$(port_of "$(wait_line "$log" "offload-agent: listening on" 10)")
}

run_wrk() {  # PORT SECONDS OUT
  timeout $(($2 + 10)) wrk -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d"$2s" --timeout 2s \
    "http://127.0.0.1:$1/size/100" >"$3" 2>&1 || true
}

# measure WORKERS ROUND: prints one line, leaves RPS and CPU_US set
measure() {
  local w=$1 out="$TMP/w$1.r$2.wrk" c0 c1 requests errors
  start_agent "$w" "$2"
  run_wrk "$AGENT_PORT" 1 "$TMP/warm"  # pools and upstream connections
  c0=$(cpu_ticks "$AGENT_PID")
  run_wrk "$AGENT_PORT" "$WRK_SECONDS" "$out"
  c1=$(cpu_ticks "$AGENT_PID")
  stop_pid "$AGENT_PID"
  requests=$(awk '/requests in/ {print $1}' "$out")
  errors=$(awk '/Non-2xx|Socket errors/ {print}' "$out" | tr '\n' ' ')
  RPS=$(awk '/Requests\/sec/ {print $2}' "$out")
  CPU_US=$(awk -v t=$((c1 - c0)) -v n="${requests:-0}" -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", n ? t / hz / n * 1e6 : 0}')
  printf "  workers=%s round %s: %10s req/s  %6s us CPU/request  (%s requests, agent CPU %.2f s)%s\n" \
    "$w" "$2" "${RPS:-0}" "$CPU_US" "${requests:-0}" "$(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" 'BEGIN {print t / hz}')" \
    "${errors:+  wrk: $errors}"
}

echo "shards.sh: $(nproc) CPUs; wrk -t$WRK_THREADS -c$WRK_CONNECTIONS ${WRK_SECONDS}s GET /size/100;" \
  "backend offload-demo-server ($BACKEND_WORKERS workers); max_upstream $MAX_UPSTREAM; pinned: $([[ $PIN = 1 ]] && echo yes || echo no)"
declare -A SUM_RPS SUM_CPU
for w in 1 2; do SUM_RPS[$w]=0; SUM_CPU[$w]=0; done
for r in $(seq 1 "$ROUNDS"); do
  for w in 1 2; do
    measure "$w" "$r"
    SUM_RPS[$w]=$(awk -v a="${SUM_RPS[$w]}" -v b="${RPS:-0}" 'BEGIN {print a + b}')
    SUM_CPU[$w]=$(awk -v a="${SUM_CPU[$w]}" -v b="$CPU_US" 'BEGIN {print a + b}')
  done
done
awk -v r1="${SUM_RPS[1]}" -v r2="${SUM_RPS[2]}" -v c1="${SUM_CPU[1]}" -v c2="${SUM_CPU[2]}" -v n="$ROUNDS" 'BEGIN {
  printf "mean over %d round(s):\n", n
  printf "  workers=1: %10.0f req/s  %6.2f us CPU/request\n", r1 / n, c1 / n
  printf "  workers=2: %10.0f req/s  %6.2f us CPU/request\n", r2 / n, c2 / n
  printf "  ratio workers=2 / workers=1: req/s %.2f, CPU/request %.2f\n", r1 ? r2 / r1 : 0, c1 ? c2 / c1 : 0
}'
