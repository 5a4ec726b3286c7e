# Shared by the bench/proxy scripts: a temporary directory, the processes a
# script started (stopped by PID at exit, never by name), and the waits for
# a process's "listening on" line. Source it after setting BENCH_NAME.
#   TMP             the script's temporary directory (removed at exit)
#   PIDS            processes to stop at exit; stop_pid PID stops one now
#   wait_line FILE TEXT SECONDS   the first line of FILE with TEXT, waiting
#   port_of LINE    the port at the end of an "ADDR:PORT" line
#   cpu_ticks PID   utime+stime of PID, in CLK_TCK ticks
TMP=$(mktemp -d "/tmp/offload-${BENCH_NAME:-bench}.XXXXXX")
PIDS=()
CLK_TCK=$(getconf CLK_TCK)
forget() {
  local keep=() pid
  for pid in "${PIDS[@]}"; do [[ $pid == "$1" ]] || keep+=("$pid"); done
  PIDS=("${keep[@]}")
}
stop_pid() {  # SIGTERM, then SIGKILL after 5 s; reaps and forgets it
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
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
wait_line() {  # FILE TEXT SECONDS
  local tries=$(($3 * 10))
  for _ in $(seq 1 "$tries"); do
    if grep -q -- "$2" "$1" 2>/dev/null; then grep -m1 -- "$2" "$1"; return 0; fi
    sleep 0.1
  done
  echo "${BENCH_NAME:-bench}: timed out waiting for '$2' in $1:" >&2
  cat "$1" >&2 || true
  return 1
}
port_of() { sed -n 's/.*:\([0-9][0-9]*\)[^0-9]*$/\1/p' <<<"$1"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
