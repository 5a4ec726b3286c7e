#!/usr/bin/env bash
# Whole-path benchmark of the bus: what the application server spends per
# request when clients reach it directly, through the agent over TCP, and
# through the agent over the shared-memory ring. In one run, on loopback.
# A benchmark: it prints figures and asserts nothing.
#
#   bench/ring/whole_path.sh [BUILD_DIR]        (default: build)
#
# Modes (offload-demo-server is the server in all of them, WORKERS workers):
#   direct    wrk -> offload-demo-server --listen
#   tcp       wrk -> offload-agent --upstream tcp://... -> offload-demo-server --listen
#   ring      wrk -> offload-agent --upstream shm:NAME  -> offload-demo-server --ring
#   ring-spin the same with the server busy-polling 50 us before it sleeps
#             (--spin-us 50; the default is to sleep at once)
#   ring-w2   ring with the agent in two shards (--workers 2): the bus's
#             channels divided between them (not in the default MODES; with
#             both ring and ring-w2 a last line compares the two)
# Workloads: GET /size/100 and GET /spin/20 (20 us of work per request), each a
# bounded wrk run of WRK_SECONDS after a WARM_SECONDS warm-up.
#
# CPU is utime+stime from /proc/PID/stat before and after each run (all
# threads), in clock ticks (usually 10 ms; runs are long enough for that).
# The server is pinned to SERVER_CPU, the agent to AGENT_CPU, wrk to LOAD_CPU
# (taskset). On a 2-core machine wrk shares the agent's core, so req/s is a
# floor; the CPU per request figures are what this measures.
#
# CONNECTIONS=64 clients against WORKERS=4 workers is the case the agent is
# for: many clients, few workers. Through the agent each ring channel then
# carries several requests at once and a worker takes a batch per wake-up;
# with CONNECTIONS=4 there is nothing to batch and the ring is close to TCP.
#
# Knobs (environment): WRK_SECONDS=5 WARM_SECONDS=1 CONNECTIONS=64 WORKERS=4
#   SERVER_CPU=0 AGENT_CPU=1 LOAD_CPU=1 (default: last core for agent and load)
#   PATHS="/size/100 /spin/20" MODES="direct tcp ring ring-spin" (or add ring-w2)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD_DIR=${1:-build}
[[ $BUILD_DIR = /* ]] || BUILD_DIR="$ROOT/$BUILD_DIR"
WRK_SECONDS=${WRK_SECONDS:-5}
WARM_SECONDS=${WARM_SECONDS:-1}
CONNECTIONS=${CONNECTIONS:-64}
WORKERS=${WORKERS:-4}
NCPU=$(nproc)
SERVER_CPU=${SERVER_CPU:-0}
AGENT_CPU=${AGENT_CPU:-$((NCPU > 1 ? NCPU - 1 : 0))}
LOAD_CPU=${LOAD_CPU:-$AGENT_CPU}
PATHS=${PATHS:-"/size/100 /spin/20"}
MODES=${MODES:-"direct tcp ring ring-spin"}
AGENT="$BUILD_DIR/agent/offload-agent"
DEMO="$BUILD_DIR/server/offload-demo-server"

for tool in wrk taskset "$AGENT" "$DEMO"; do
  command -v "$tool" >/dev/null 2>&1 || [[ -x $tool ]] || { echo "whole_path.sh: missing $tool" >&2; exit 1; }
done

TMP=$(mktemp -d /tmp/offload-whole-path.XXXXXX)
PIDS=()
forget() {
  local keep=() pid
  for pid in "${PIDS[@]}"; do [[ $pid == "$1" ]] || keep+=("$pid"); done
  PIDS=("${keep[@]}")
}
stop_pid() {  # SIGTERM, then SIGKILL after 5 s; reaps and forgets it (by PID only)
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  forget "$pid"
}
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  rm -rf "$TMP"
}
trap cleanup EXIT

# Waits up to 10 s for a line matching $2 in file $1; prints the line.
wait_line() {
  local file=$1 pattern=$2 i line
  for i in $(seq 200); do
    line=$(grep -m1 -- "$pattern" "$file" 2>/dev/null || true)
    [[ -n $line ]] && { echo "$line"; return 0; }
    sleep 0.05
  done
  echo "whole_path.sh: no '$pattern' in $file:" >&2
  cat "$file" >&2
  return 1
}
port_of() { grep -o '[0-9.]*:[0-9]*$' <<<"$1" | sed 's/.*://'; }

# utime+stime of a process, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
TCK=$(getconf CLK_TCK)

SERVER_PID=0 AGENT_PID=0 PORT=0
start_server() {  # $1: listen | ring NAME [spin]
  local log="$TMP/server.log"
  : >"$log"
  if [[ $1 == listen ]]; then
    taskset -c "$SERVER_CPU" "$DEMO" --listen 127.0.0.1:0 --workers "$WORKERS" 2>"$log" &
  else
    taskset -c "$SERVER_CPU" "$DEMO" --ring "$2" --workers "$WORKERS" --spin-us "${3:-0}" 2>"$log" &
  fi
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  if [[ $1 == listen ]]; then
    PORT=$(port_of "$(wait_line "$log" 'listening on')")
  else
    wait_line "$log" 'serving ring' >/dev/null
  fi
}
start_agent() {  # $1: upstream, $2: shards (default 1)
  local log="$TMP/agent.log"
  : >"$log"
  taskset -c "$AGENT_CPU" "$AGENT" run --listen 127.0.0.1:0 --upstream "$1" --admin off --workers "${2:-1}" \
    --max-upstream "$WORKERS" --persistent "$WORKERS" --max-clients 10000 2>"$log" &
  AGENT_PID=$!
  PIDS+=("$AGENT_PID")
  PORT=$(port_of "$(wait_line "$log" 'listening on')")
}

# One bounded wrk run; sets REQS, NON2XX, RPS, SERVER_S, AGENT_S.
measure() {  # $1: path
  local out s0 s1 a0=0 a1=0
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${WARM_SECONDS}s" "http://127.0.0.1:$PORT$1" >/dev/null
  s0=$(cpu_ticks "$SERVER_PID")
  ((AGENT_PID > 0)) && a0=$(cpu_ticks "$AGENT_PID")
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${WRK_SECONDS}s" "http://127.0.0.1:$PORT$1")
  s1=$(cpu_ticks "$SERVER_PID")
  ((AGENT_PID > 0)) && a1=$(cpu_ticks "$AGENT_PID")
  REQS=$(awk '/requests in/ { print $1 }' <<<"$out")
  NON2XX=$(awk '/Non-2xx/ { print $NF }' <<<"$out")
  NON2XX=${NON2XX:-0}
  RPS=$(awk '/Requests\/sec/ { printf "%.0f", $2 }' <<<"$out")
  SERVER_S=$(awk -v a="$s0" -v b="$s1" -v t="$TCK" 'BEGIN { printf "%.3f", (b - a) / t }')
  AGENT_S=$(awk -v a="$a0" -v b="$a1" -v t="$TCK" 'BEGIN { printf "%.3f", (b - a) / t }')
}

declare -A SRV_PER_100K AGT_US RPS_OF REQS_OF ERR_OF
run_mode() {  # $1: mode
  local mode=$1 name path
  SERVER_PID=0 AGENT_PID=0
  case $mode in
    direct) start_server listen ;;
    tcp)
      start_server listen
      local upstream_port=$PORT
      start_agent "tcp://127.0.0.1:$upstream_port"
      ;;
    ring | ring-spin | ring-w2)
      name="wp-$$-$mode"
      if [[ $mode == ring-w2 ]]; then start_agent "shm:$name" 2; else start_agent "shm:$name"; fi
      if [[ $mode == ring-spin ]]; then start_server ring "$name" 50; else start_server ring "$name"; fi
      wait_line "$TMP/agent.log" 'attached with' >/dev/null
      ;;
  esac
  for path in $PATHS; do
    measure "$path"
    SRV_PER_100K[$mode,$path]=$(awk -v s="$SERVER_S" -v n="$REQS" 'BEGIN { printf "%.3f", (n > 0 ? s * 100000 / n : 0) }')
    AGT_US[$mode,$path]=$(awk -v s="$AGENT_S" -v n="$REQS" 'BEGIN { printf "%.2f", (n > 0 ? s * 1e6 / n : 0) }')
    RPS_OF[$mode,$path]=$RPS
    REQS_OF[$mode,$path]=$REQS
    ERR_OF[$mode,$path]=$NON2XX
    echo "  $mode $path: $REQS requests, $RPS req/s, server ${SERVER_S}s, agent ${AGENT_S}s, non-2xx $NON2XX" >&2
  done
  ((AGENT_PID > 0)) && stop_pid "$AGENT_PID"
  stop_pid "$SERVER_PID"
  AGENT_PID=0 SERVER_PID=0
}

echo "whole_path.sh: $(nproc) cores, server on cpu $SERVER_CPU, agent on cpu $AGENT_CPU, wrk on cpu $LOAD_CPU;" \
  "wrk -t1 -c$CONNECTIONS ${WRK_SECONDS}s per run; demo server $WORKERS workers" >&2
for mode in $MODES; do run_mode "$mode"; done

echo
printf '%-12s %-10s %10s %10s %16s %10s %14s %8s\n' mode path requests 'req/s' 'server s/100k' 'vs direct' 'agent us/req' non-2xx
for path in $PATHS; do
  direct=${SRV_PER_100K[direct,$path]:-}
  for mode in $MODES; do
    s=${SRV_PER_100K[$mode,$path]}
    ratio='-'
    [[ -n $direct ]] && ratio=$(awk -v a="$s" -v d="$direct" 'BEGIN { if (d > 0) printf "%.2fx", a / d; else print "-" }')
    agent='-'
    [[ $mode != direct ]] && agent=${AGT_US[$mode,$path]}
    printf '%-12s %-10s %10s %10s %16s %10s %14s %8s\n' "$mode" "$path" "${REQS_OF[$mode,$path]}" \
      "${RPS_OF[$mode,$path]}" "$s" "$ratio" "$agent" "${ERR_OF[$mode,$path]}"
  done
done
echo
echo "server s/100k: server CPU seconds (user+sys) per 100,000 requests; vs direct: that divided by the"
echo "direct figure for the same path (the aim: at most 0.50x behind the agent); agent us/req: agent CPU"
echo "microseconds per request. ring sleeps at once when idle (the default); ring-spin busy-polls 50 us first."
if [[ " $MODES " == *" ring "* && " $MODES " == *" ring-w2 "* ]]; then
  for path in $PATHS; do
    awk -v p="$path" -v r1="${RPS_OF[ring,$path]}" -v r2="${RPS_OF[ring-w2,$path]}" \
      -v a1="${AGT_US[ring,$path]}" -v a2="${AGT_US[ring-w2,$path]}" 'BEGIN {
        printf "ring-w2 / ring, %s: req/s %.2fx, agent us/req %.2fx\n", p, (r1 > 0 ? r2 / r1 : 0), (a1 > 0 ? a2 / a1 : 0) }'
  done
fi
