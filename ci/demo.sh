#!/usr/bin/env bash
# The main demo: an application server with 4 workers, hit by a slow-client
# storm (slowloris) while normal clients (wrk) try to get served — first
# directly, then through offload-agent. Prints one table:
#
#   normal clients' req/s and errors, and the connections the backend holds,
#   directly vs through the agent.
#
# Installs what is missing (ci/deps.sh), builds into build/, runs on loopback
# only, stops everything it started by PID, and takes about a minute.
#   STORM=500 STORM_SECONDS=12 WRK_SECONDS=5 ci/demo.sh   (the defaults)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD_DIR="${BUILD_DIR:-build}"
STORM="${STORM:-500}"
STORM_SECONDS="${STORM_SECONDS:-12}"
WRK_SECONDS="${WRK_SECONDS:-5}"
WORKERS=4

bash ci/deps.sh
if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
echo "demo: building offload-agent and offload-demo-server in $BUILD_DIR"
cmake --build "$BUILD_DIR" --target offload-agent offload-demo-server -j"$(nproc)" >/dev/null

AGENT="$ROOT/$BUILD_DIR/agent/offload-agent"
BACKEND=("$ROOT/$BUILD_DIR/server/offload-demo-server" --listen 127.0.0.1:0 --workers "$WORKERS")
BACKEND_READY="offload-demo-server: listening on"

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
TMP=$(mktemp -d /tmp/offload-demo.XXXXXX)
PIDS=()
cleanup() {
  [[ ${#PIDS[@]} -eq 0 ]] && { rm -rf "$TMP"; return; }
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT

# forget PID: drop a reaped child from PIDS so cleanup never signals a reused PID.
forget() {
  local keep=() pid
  for pid in "${PIDS[@]}"; do [[ $pid == "$1" ]] || keep+=("$pid"); done
  PIDS=("${keep[@]}")
}

# wait_line FILE TEXT SECONDS: the first line of FILE containing TEXT.
wait_line() {
  local file=$1 text=$2 tries=$(($3 * 10))
  for _ in $(seq 1 "$tries"); do
    if grep -q -- "$text" "$file" 2>/dev/null; then
      grep -m1 -- "$text" "$file"
      return 0
    fi
    sleep 0.1
  done
  echo "demo: timed out waiting for '$text' in $file:" >&2
  cat "$file" >&2 || true
  return 1
}

port_of() { sed -n 's/.*:\([0-9][0-9]*\)[^0-9]*$/\1/p' <<<"$1"; }

# Established TCP connections whose local port is PORT (what the backend holds,
# including the ones waiting in its accept queue).
backend_connections() {
  ss -Htn state established "( sport = :$1 )" 2>/dev/null | wc -l
}

# run_phase NAME: starts a backend (and the agent unless NAME is direct), the
# storm, then wrk; appends one row to $TMP/rows.
run_phase() {
  local name=$1
  local backend_pid="" bport="" target_port agent_pid=""
  if [[ $name != ring ]]; then
    "${BACKEND[@]}" 2>"$TMP/$name.backend.err" &
    backend_pid=$!
    PIDS+=("$backend_pid")
    bport=$(port_of "$(wait_line "$TMP/$name.backend.err" "$BACKEND_READY" 10)")
    target_port=$bport
  fi
  if [[ $name == agent ]]; then
    "$AGENT" run --listen 127.0.0.1:0 --upstream "tcp://127.0.0.1:$bport" --admin 127.0.0.1:0 \
      --max-upstream 4 --persistent 4 --header-timeout-ms 30000 2>"$TMP/agent.err" &
    agent_pid=$!
    PIDS+=("$agent_pid")
    target_port=$(port_of "$(wait_line "$TMP/agent.err" "offload-agent: listening on" 10)")
  elif [[ $name == ring ]]; then
    # The same server, attached over the shared-memory bus instead of TCP.
    local bus="demo-$$"
    "$AGENT" run --listen 127.0.0.1:0 --upstream "shm:$bus" --admin 127.0.0.1:0 \
      --max-upstream "$WORKERS" --header-timeout-ms 30000 2>"$TMP/ring.err" &
    agent_pid=$!
    PIDS+=("$agent_pid")
    target_port=$(port_of "$(wait_line "$TMP/ring.err" "offload-agent: listening on" 10)")
    "$ROOT/$BUILD_DIR/server/offload-demo-server" --ring "$bus" --workers "$WORKERS" 2>"$TMP/ring.backend.err" &
    backend_pid=$!
    PIDS+=("$backend_pid")
    wait_line "$TMP/ring.err" "attached with" 10 >/dev/null
  fi

  python3 bench/proxy/slowloris.py --port "$target_port" --connections "$STORM" --interval 1 \
    --duration "$STORM_SECONDS" >"$TMP/$name.storm.out" 2>&1 &
  local storm_pid=$!
  PIDS+=("$storm_pid")
  wait_line "$TMP/$name.storm.out" "slowloris: " 15 >/dev/null

  wrk -t2 -c16 -d"${WRK_SECONDS}s" --timeout 2s "http://127.0.0.1:$target_port/size/100" \
    >"$TMP/$name.wrk" 2>&1 &
  local wrk_pid=$!
  PIDS+=("$wrk_pid")
  sleep $((WRK_SECONDS / 2))
  local held="0 (ring)"
  [[ -n $bport ]] && held=$(backend_connections "$bport")
  wait "$wrk_pid" || true
  forget "$wrk_pid"
  local rps errors requests
  rps=$(awk '/Requests\/sec/ {print $2}' "$TMP/$name.wrk")
  requests=$(awk '/requests in/ {print $1}' "$TMP/$name.wrk")
  errors=$(awk '/Socket errors/ {gsub(",", ""); s += $4 + $6 + $8 + $10} /Non-2xx/ {s += $5} END {print s + 0}' \
    "$TMP/$name.wrk")
  local storm_open
  storm_open=$(sed -n 's/^slowloris: \([0-9]*\) open$/\1/p' "$TMP/$name.storm.out" | head -1)
  printf '%-10s %10s %10s %8s %21s %14s\n' "$name" "${rps:-0}" "${requests:-0}" "$errors" "$held" \
    "${storm_open:-?}" >>"$TMP/rows"
  kill -TERM "$storm_pid" 2>/dev/null || true
  [[ -n $agent_pid ]] && kill -TERM "$agent_pid" 2>/dev/null || true
  kill -TERM "$backend_pid" 2>/dev/null || true
  wait "$storm_pid" 2>/dev/null || true
  forget "$storm_pid"
  if [[ -n $agent_pid ]]; then
    wait "$agent_pid" 2>/dev/null || true
    forget "$agent_pid"
  fi
  wait "$backend_pid" 2>/dev/null || true
  forget "$backend_pid"
}

echo "demo: backend ${BACKEND[0]##*/} with $WORKERS workers; $STORM slowloris connections" \
  "(one header byte a second) plus wrk -c16 for ${WRK_SECONDS}s on /size/100"
: >"$TMP/rows"
run_phase direct
run_phase agent
run_phase ring

echo
printf '%-10s %10s %10s %8s %21s %14s\n' "" "req/s" "requests" "errors" "backend connections" "slow clients"
printf '%-10s %10s %10s %8s %21s %14s\n' "----------" "-----" "--------" "------" "-------------------" "------------"
cat "$TMP/rows"
echo
echo "req/s, requests: what wrk's 16 normal clients completed in ${WRK_SECONDS}s."
echo "errors: wrk socket errors (connect/read/write/timeout) plus non-2xx responses; wrk counts"
echo "  nothing for a connection that never got an answer, so 0 requests means all 16 starved."
echo "backend connections: established TCP connections to the backend's port during the run"
echo "  (ring: the agent reaches the server over the shared-memory bus, no TCP at all)."
