#!/usr/bin/env bash
# Does the upstream pool fit the server? Behind the anchor benchmark's model
# backend (a fixed number of blocking workers, 4 here, each serving one
# connection at a time; with `--keepalive yield` it answers "Connection:
# close" whenever connections wait in its accept queue), one wrk run per
# proxy: direct, nginx, and the agent in one or more configurations.
# A benchmark: it prints figures and asserts nothing.
#
#   bench/proxy/pool_fit.sh [BUILD_DIR]        (default: build)
#
# For each proxy, over one bounded wrk run (-t1 -c64, SECONDS long, GET
# /size/100) started right after the proxy (its start-up connections count):
#   requests, req/s, wrk timeouts and errors, max latency;
#   backend connections accepted per 100,000 requests (the backend's own
#     count of accept()s, from its SIGUSR1 snapshot);
#   backend CPU per request (its getrusage utime+stime delta over the run /
#     requests it served), and that as a ratio to direct;
#   for the agent, its own upstream_connects and timeouts_response (/stats).
# The proxy is pinned to PROXY_CPU, wrk and the backend to LOAD_CPU.
#
# Knobs (environment): SECONDS_RUN=10 WRK_CONNS=64 WORKERS=4 PROXY_CPU=0 LOAD_CPU=1
#   BASE_AGENT=path   also run this agent binary (e.g. main's) as "main ..." rows
#   AGENT_CONFIGS='defaults=|p16-m64=--persistent 16 --max-upstream 64'
#   BACKEND_SRC=/work/shared/anchor-bench/backend/backend.cpp
# Needs: wrk, nginx, g++, python3, taskset.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD_DIR=${1:-build}
[[ $BUILD_DIR = /* ]] || BUILD_DIR="$ROOT/$BUILD_DIR"
SECONDS_RUN=${SECONDS_RUN:-10}
WRK_CONNS=${WRK_CONNS:-64}
WORKERS=${WORKERS:-4}
NCPU=$(nproc)
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-$((NCPU > 1 ? 1 : 0))}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
AGENT="$BUILD_DIR/agent/offload-agent"
BASE_AGENT=${BASE_AGENT:-}
AGENT_CONFIGS=${AGENT_CONFIGS:-"defaults=|p16-m64=--persistent 16 --max-upstream 64"}
BACKEND_SRC=${BACKEND_SRC:-/work/shared/anchor-bench/backend/backend.cpp}

for tool in wrk g++ python3 taskset curl "$NGINX" "$AGENT"; do
  command -v "$tool" >/dev/null 2>&1 || [[ -x $tool ]] || { echo "pool_fit.sh: missing $tool" >&2; exit 1; }
done

BENCH_NAME=pool_fit
# shellcheck source=bench/proxy/lib.sh
source "$HERE/lib.sh"


# The model server is the shared anchor benchmark's (not in this repository).
if [[ ! -f $BACKEND_SRC ]]; then
  echo "pool_fit.sh: needs the anchor benchmark's model backend at BACKEND_SRC=$BACKEND_SRC (a server with a" \
    "fixed number of blocking workers and a SIGUSR1 snapshot of its accepts and CPU)" >&2
  exit 2
fi
g++ -O2 -pthread -o "$TMP/backend" "$BACKEND_SRC"

# ---------------------------------------------------------------- backend
# One backend per proxy, so no connection of an earlier proxy lingers.
start_backend() {
  BPORT=$(free_port)
  : >"$TMP/backend.out"
  taskset -c "$LOAD_CPU" "$TMP/backend" --host 127.0.0.1 --port "$BPORT" --workers "$WORKERS" \
    --backlog 1024 --keepalive yield >"$TMP/backend.out" 2>"$TMP/backend.err" &
  BACKEND_PID=$!
  PIDS+=("$BACKEND_PID")
  for _ in $(seq 1 50); do grep -q '"listening"' "$TMP/backend.out" && break; sleep 0.1; done
  grep -q '"listening"' "$TMP/backend.out" || { echo "pool_fit.sh: backend did not start" >&2; exit 1; }
}
# snapshot FIELD...: prints the fields of a fresh SIGUSR1 snapshot
snapshot() {
  local before after
  before=$(grep -c '"snapshot"' "$TMP/backend.out" || true)
  kill -USR1 "$BACKEND_PID"
  for _ in $(seq 1 50); do
    after=$(grep -c '"snapshot"' "$TMP/backend.out" || true)
    [[ $after -gt $before ]] && break
    sleep 0.05
  done
  grep '"snapshot"' "$TMP/backend.out" | tail -1 |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["requests"], d["connections"], d["cpu_s"])'
}

# ---------------------------------------------------------------- proxies
start_direct() { PROXY_PID=""; PROXY_PORT=$BPORT; }


start_agent() {  # BINARY EXTRA-FLAGS
  PROXY_PORT=$(free_port)
  ADMIN_PORT=$(free_port)
  # shellcheck disable=SC2086
  taskset -c "$PROXY_CPU" "$1" run --listen "127.0.0.1:$PROXY_PORT" --upstream "tcp://127.0.0.1:$BPORT" \
    --admin "127.0.0.1:$ADMIN_PORT" $2 2>"$TMP/agent.err" &
  PROXY_PID=$!
  PIDS+=("$PROXY_PID")
  wait_listening "$PROXY_PORT" 10 || { echo "pool_fit.sh: agent did not start:" >&2; cat "$TMP/agent.err" >&2; exit 1; }
}
agent_stat() { curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/stats" | awk -v k="$1" '$1 == k {print $2}'; }

ROWS=()
DIRECT_CPU=""
# measure LABEL START-COMMAND...
measure() {
  local label=$1; shift
  start_backend
  ADMIN_PORT=""
  "$@"
  local r0 c0 cpu0 r1 c1 cpu1
  read -r r0 c0 cpu0 < <(snapshot)
  taskset -c "$LOAD_CPU" wrk -t1 -c"$WRK_CONNS" -d"${SECONDS_RUN}s" --timeout 5s --latency \
    "http://127.0.0.1:$PROXY_PORT/size/100" >"$TMP/wrk.out" 2>&1 || true
  read -r r1 c1 cpu1 < <(snapshot)
  local requests rps timeouts errors maxlat ups="-" uto="-"
  requests=$(awk '/requests in/ {print $1}' "$TMP/wrk.out")
  rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$TMP/wrk.out")
  timeouts=$(awk '/Socket errors/ {gsub(",", ""); print $NF}' "$TMP/wrk.out"); timeouts=${timeouts:-0}
  errors=$(awk '/Non-2xx/ {print $NF}' "$TMP/wrk.out"); errors=${errors:-0}
  maxlat=$(awk '/^    Latency/ {print $4}' "$TMP/wrk.out")
  if [[ -n $ADMIN_PORT ]]; then
    ups=$(agent_stat upstream_connects)
    uto=$(agent_stat timeouts_response)
  fi
  local be_reqs=$((r1 - r0)) conns=$((c1 - c0))
  local per100k cpu_us ratio
  per100k=$(awk -v c="$conns" -v n="$be_reqs" 'BEGIN {printf "%.0f", n ? c / n * 1e5 : 0}')
  cpu_us=$(awk -v a="$cpu0" -v b="$cpu1" -v n="$be_reqs" 'BEGIN {printf "%.2f", n ? (b - a) / n * 1e6 : 0}')
  [[ -n $DIRECT_CPU ]] || DIRECT_CPU=$cpu_us
  ratio=$(awk -v a="$cpu_us" -v b="$DIRECT_CPU" 'BEGIN {printf "%.2f", b ? a / b : 0}')
  ROWS+=("$(printf '%-22s %9s %8s %8s %7s %9s %11s %10s %8s %10s %8s' "$label" "${requests:-0}" "${rps:-0}" \
    "$timeouts" "$errors" "${maxlat:--}" "$per100k" "$cpu_us" "$ratio" "$ups" "$uto")")
  echo "pool_fit.sh: $label done: ${requests:-0} requests, $conns backend connections" >&2
  [[ -z $PROXY_PID ]] || stop_pid "$PROXY_PID"
  stop_pid "$BACKEND_PID"
}

measure direct start_direct
measure nginx start_nginx
IFS='|' read -r -a configs <<<"$AGENT_CONFIGS"
if [[ -n $BASE_AGENT ]]; then
  for c in "${configs[@]}"; do measure "main ${c%%=*}" start_agent "$BASE_AGENT" "${c#*=}"; done
fi
for c in "${configs[@]}"; do measure "agent ${c%%=*}" start_agent "$AGENT" "${c#*=}"; done

echo
echo "pool_fit.sh: backend $WORKERS workers (--keepalive yield), wrk -t1 -c$WRK_CONNS -d${SECONDS_RUN}s GET /size/100;" \
  "proxy on CPU $PROXY_CPU, wrk and backend on CPU $LOAD_CPU"
printf '%-22s %9s %8s %8s %7s %9s %11s %10s %8s %10s %8s\n' "" "requests" "req/s" "wrk t/o" "non2xx" \
  "max lat" "be conn/100k" "be us/req" "vs direct" "up_conns" "resp t/o"
for r in "${ROWS[@]}"; do echo "$r"; done
for c in "${configs[@]}"; do echo "  ${c%%=*}: ${c#*=}"; done
