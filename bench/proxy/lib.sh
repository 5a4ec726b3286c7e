# Shared by the bench/proxy scripts: a temporary directory, the processes a
# script started (stopped by PID at exit, never by name), and the waits for
# a process's "listening on" line. Source it after setting BENCH_NAME.
#   TMP             the script's temporary directory (removed at exit)
#   PIDS            processes to stop at exit; stop_pid PID stops one now
#   wait_line FILE TEXT SECONDS   the first line of FILE with TEXT, waiting
#   port_of LINE    the port at the end of an "ADDR:PORT" line
#   cpu_ticks PID   utime+stime of PID, in CLK_TCK ticks
#   free_port, wait_listening PORT SECONDS
#   start_nginx [BACKEND_PORT]  nginx as the users' baseline (1 worker,
#                   upstream keepalive 16, buffering on) on CPU $PROXY_CPU;
#                   sets PROXY_PORT and PROXY_PID
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
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_listening() {  # PORT SECONDS
  local tries=$(($2 * 10))
  for _ in $(seq 1 "$tries"); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2).close()" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
start_nginx() {  # [BACKEND_PORT], default $BPORT
  local d="$TMP/nginx"
  rm -rf "$d"
  mkdir -p "$d"
  PROXY_PORT=$(free_port)
  cat >"$d/nginx.conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
error_log $d/error.log warn;
pid $d/nginx.pid;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path $d/body;
  proxy_temp_path $d/proxy;
  fastcgi_temp_path $d/fastcgi;
  uwsgi_temp_path $d/uwsgi;
  scgi_temp_path $d/scgi;
  keepalive_timeout 120s;
  keepalive_requests 1000000;
  client_header_timeout 60s;
  upstream backend {
    server 127.0.0.1:${1:-$BPORT};
    keepalive 16;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
  }
  server {
    listen 127.0.0.1:$PROXY_PORT;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering on;
    }
  }
}
EOF
  taskset -c "${PROXY_CPU:-0}" "${NGINX:-nginx}" -p "$d" -c "$d/nginx.conf" 2>"$TMP/nginx.err" &
  PROXY_PID=$!
  PIDS+=("$PROXY_PID")
  wait_listening "$PROXY_PORT" 10 || {
    echo "${BENCH_NAME:-bench}: nginx did not start:" >&2
    cat "$TMP/nginx.err" "$d/error.log" >&2 2>/dev/null
    exit 1
  }
}
