#!/usr/bin/env bash
# The XDP guard's benchmark, in one run:  xdp_guard_bench.sh XDP_GUARD_BENCH XDP_CLI E2E_TOOL
#  1. ns per packet on the allow, deny and SYN-limit paths (BPF_PROG_TEST_RUN, repeat);
#  2. packets per second the guard drops on a veth pair flooded from a denied source
#     (bounded: at most FLOOD_COUNT frames and FLOOD_SECONDS);
#  3. the server core's softirq time while CLIENTS concurrent clients hammer a listener,
#     with steering off and on (/proc/stat, /proc/softirqs).
# The rig is two namespaces of its own (10.77.0.0/24 inside them only), removed on exit.
set -uo pipefail

BENCH=${1:?usage: xdp_guard_bench.sh XDP_GUARD_BENCH XDP_CLI E2E_TOOL}
CLI=${2:?}
TOOL=${3:?}
PIN=/sys/fs/bpf/offload
FLOOD_COUNT=${FLOOD_COUNT:-20000000}
FLOOD_SECONDS=${FLOOD_SECONDS:-3}
CLIENTS=${CLIENTS:-2000}
HAMMER_SECONDS=${HAMMER_SECONDS:-5}

[[ $(id -u) -eq 0 ]] || { echo "SKIP: needs root"; exit 77; }
[[ ! -e $PIN/xdp_link ]] || { echo "SKIP: an XDP guard is already attached ($PIN/xdp_link)"; exit 77; }

echo "== 1. per-packet cost (test-run) =="
"$BENCH" || exit 1

SRV=xgb-srv-$$
CLN=xgb-cli-$$
SIF=xgbs$$
CIF=xgbc$$
WORK=$(mktemp -d)
PIDS=()
in_srv() { nsenter --net=/run/netns/"$SRV" "$@"; }
in_cli() { nsenter --net=/run/netns/"$CLN" "$@"; }
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  [[ -e $PIN/xdp_link ]] && in_srv "$CLI" detach --iface "$SIF" >/dev/null 2>&1
  ip netns del "$SRV" 2>/dev/null
  ip netns del "$CLN" 2>/dev/null
  [[ -e $PIN/xdp_link ]] && "$CLI" detach --iface "$SIF" >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT
counter() { "$CLI" stats --json | grep -o "\"$1\":[0-9]*" | head -1 | cut -d: -f2; }

ip netns add "$SRV" && ip netns add "$CLN" || exit 1
ip link add "$SIF" netns "$SRV" type veth peer name "$CIF" netns "$CLN" || exit 1
in_srv ip link set lo up
in_srv ip addr add 10.77.0.1/24 dev "$SIF"
in_srv ip link set "$SIF" up
in_cli ip link set lo up
in_cli ip addr add 10.77.0.2/24 dev "$CIF"
in_cli ip link set "$CIF" up
in_srv ethtool -K "$SIF" tx off >/dev/null
in_cli ethtool -K "$CIF" tx off >/dev/null
MAC=$(ip -n "$SRV" link show "$SIF" | awk '/link\/ether/ { print $2 }')

echo
echo "== 2. drop rate on the veth pair (native XDP), flood from a denied source =="
in_srv "$CLI" attach --iface "$SIF" --mode native --ports 8080 >/dev/null || exit 1
"$CLI" deny add 10.66.0.0/16 >/dev/null || exit 1
BEFORE=$(counter drop_deny)
read -r SENT ELAPSED < <(in_cli taskset -c 0 "$TOOL" ethflood "$CIF" "$MAC" 10.66.0.9 10.77.0.1 8080 \
  "$FLOOD_COUNT" "$FLOOD_SECONDS")
DROPPED=$(( $(counter drop_deny) - BEFORE ))
awk -v s="$SENT" -v d="$DROPPED" -v t="$ELAPSED" 'BEGIN {
  printf "sent %d frames in %.2f s; the guard dropped %d: %.0f packets/s (%.0f ns each, sender included)\n",
         s, t, d, d / t, t * 1e9 / d }'
in_srv "$CLI" detach --iface "$SIF" >/dev/null || exit 1

echo
echo "== 3. server core softirq time, $CLIENTS clients for ${HAMMER_SECONDS}s, steering off vs on =="
NCPU=$(nproc)
SERVER_CPU=0
AGENT_CPU=$(( NCPU - 1 ))
echo "server (listener) and clients on CPU $SERVER_CPU; the agent core is CPU $AGENT_CPU"
ulimit -n 65536 2>/dev/null || ulimit -n 8192
nsenter --net=/run/netns/"$SRV" taskset -c "$SERVER_CPU" "$TOOL" serve 8080 120 "$WORK/ready" >/dev/null &
PIDS+=($!)
for _ in $(seq 50); do [[ -e $WORK/ready ]] && break; sleep 0.1; done

cpu_fields() {  # cpu_fields CPU: "softirq_ticks system_ticks" from /proc/stat
  awk -v c="cpu$1" '$1 == c { print $8, $4 }' /proc/stat
}
net_rx() {  # net_rx CPU: NET_RX softirqs raised on CPU so far
  awk -v col=$(( $1 + 2 )) '$1 == "NET_RX:" { print $col }' /proc/softirqs
}
HZ=$(getconf CLK_TCK)
run_load() {  # run_load LABEL ATTACH_ARGS...
  local label=$1; shift
  in_srv "$CLI" attach --iface "$SIF" --mode native --ports 8080 "$@" >/dev/null || exit 1
  read -r s0 y0 < <(cpu_fields "$SERVER_CPU")
  read -r a0 b0 < <(cpu_fields "$AGENT_CPU")
  local r0 ra0
  r0=$(net_rx "$SERVER_CPU"); ra0=$(net_rx "$AGENT_CPU")
  read -r done failed elapsed < <(in_cli taskset -c "$SERVER_CPU" "$TOOL" hammer 10.77.0.2 10.77.0.1 8080 \
    "$CLIENTS" "$HAMMER_SECONDS")
  read -r s1 y1 < <(cpu_fields "$SERVER_CPU")
  read -r a1 b1 < <(cpu_fields "$AGENT_CPU")
  local r1 ra1 redirected
  r1=$(net_rx "$SERVER_CPU"); ra1=$(net_rx "$AGENT_CPU")
  redirected=$(counter redirect_service)
  in_srv "$CLI" detach --iface "$SIF" >/dev/null || exit 1
  awk -v l="$label" -v hz="$HZ" -v t="$elapsed" -v d="$done" -v f="$failed" \
      -v s=$((s1 - s0)) -v a=$((a1 - a0)) -v b=$((b1 - b0)) -v r=$((r1 - r0)) -v ra=$((ra1 - ra0)) \
      -v red="$redirected" 'BEGIN {
    printf "%-13s %6.0f conn/s (%d failed) | server CPU softirq %5.1f%% (%d NET_RX) | agent CPU softirq %5.1f%% system %5.1f%% (%d NET_RX) | redirected %d\n",
           l, d / t, f, 100 * s / hz / t, r, 100 * a / hz / t, 100 * b / hz / t, ra, red }'
}
run_load "steering off"
run_load "steering on" --cpu "$AGENT_CPU"
