#!/usr/bin/env bash
# End-to-end test of the XDP guard, driven by ctest:  xdp_e2e.sh XDP_CLI E2E_TOOL
#
# Builds two network namespaces of its own joined by a veth pair (10.77.0.0/24 and fd77::/64
# exist only inside them), attaches the guard natively to the server end with the commands an
# operator uses, and checks: allowed sources connect, denied ones cannot, deny edits act live,
# a bounded SYN flood from one source is cut to the bucket's rate while another source still
# connects, the counters agree with each other and with `bpftool map dump pinned`, and detach
# leaves no pin and no program. Needs root; otherwise prints SKIP and exits 77.
set -uo pipefail

CLI=${1:?usage: xdp_e2e.sh XDP_CLI E2E_TOOL}
TOOL=${2:?usage: xdp_e2e.sh XDP_CLI E2E_TOOL}
PIN=/sys/fs/bpf/offload
RATE=5     # SYNs per second per source
BURST=5
FLOOD_COUNT=3000
FLOOD_MS=1500

skip() { echo "SKIP: $*"; exit 77; }
[[ $(id -u) -eq 0 ]] || skip "needs root to create network namespaces and attach XDP"
for tool in ip nsenter ethtool bpftool; do
  command -v "$tool" >/dev/null || skip "needs $tool"
done
[[ ! -e $PIN/xdp_link ]] || skip "an XDP guard is already attached on this host ($PIN/xdp_link)"

SRV=xge-srv-$$
CLN=xge-cli-$$
SIF=xges$$
CIF=xgec$$
WORK=$(mktemp -d)
PIDS=()
FAILURES=0

in_srv() { nsenter --net=/run/netns/"$SRV" "$@"; }
in_cli() { nsenter --net=/run/netns/"$CLN" "$@"; }

cleanup() {
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  [[ -e $PIN/xdp_link ]] && in_srv "$CLI" detach --iface "$SIF" >/dev/null 2>&1
  ip netns del "$SRV" 2>/dev/null
  ip netns del "$CLN" 2>/dev/null
  # Still pinned (the interface went with its namespace): detach removes the pins anyway.
  [[ -e $PIN/xdp_link ]] && "$CLI" detach --iface "$SIF" >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT

pass() { echo "ok   - $*"; }
fail() { echo "FAIL - $*"; FAILURES=$((FAILURES + 1)); }
check() {  # check DESCRIPTION COMMAND...: the command must succeed
  local what=$1; shift
  if "$@" >"$WORK/out" 2>&1; then pass "$what"; else fail "$what: $(head -c 300 "$WORK/out")"; fi
}
check_fails_one_line() {  # the command must fail with exactly one line on stderr
  local what=$1; shift
  "$@" >"$WORK/out" 2>"$WORK/err"
  local rc=$? lines
  lines=$(wc -l <"$WORK/err")
  if [[ $rc -ne 0 && $lines -eq 1 ]]; then
    pass "$what (exit $rc: $(cat "$WORK/err"))"
  else
    fail "$what: exit $rc, $lines stderr lines: $(head -c 300 "$WORK/err")"
  fi
}
counter() {  # counter NAME: from `stats --json`
  "$CLI" stats --json | grep -o "\"$1\":[0-9]*" | head -1 | cut -d: -f2
}
bpftool_sum() {  # bpftool_sum MAP FIELD: summed over CPUs from bpftool's own dump
  bpftool -j map dump pinned "$PIN/$1" | grep -o "\"$2\":[0-9]*" | cut -d: -f2 |
    awk '{ s += $1 } END { print s + 0 }'
}

# --- the rig -------------------------------------------------------------------------
ip netns add "$SRV" && ip netns add "$CLN" || { echo "FAIL - cannot create namespaces"; exit 1; }
ip link add "$SIF" netns "$SRV" type veth peer name "$CIF" netns "$CLN" || exit 1
in_srv ip link set lo up
in_srv ip addr add 10.77.0.1/24 dev "$SIF"
in_srv ip -6 addr add fd77::1/64 dev "$SIF" nodad
in_srv ip link set "$SIF" up
in_cli ip link set lo up
for a in 2 3 4 5; do in_cli ip addr add 10.77.0.$a/24 dev "$CIF"; done
for a in 2 3; do in_cli ip -6 addr add fd77::$a/64 dev "$CIF" nodad; done
in_cli ip link set "$CIF" up
# cpumap-redirected frames lose veth's "checksum not done yet" state: finish checksums on send.
in_srv ethtool -K "$SIF" tx off >/dev/null
in_cli ethtool -K "$CIF" tx off >/dev/null
CPU=$(( $(nproc) - 1 ))

is_bpffs() { [[ $(stat -f -c %T /sys/fs/bpf 2>/dev/null) == bpf_fs ]]; }
had_bpffs=no
is_bpffs && had_bpffs=yes
check_fails_one_line "attach to a missing interface" in_srv "$CLI" attach --iface nosuch0
check "attach natively, steering port 8080 to CPU $CPU" \
  in_srv "$CLI" attach --iface "$SIF" --mode native --cpu "$CPU" --ports 8080 \
  --syn-rate "$RATE" --syn-burst "$BURST"
cat "$WORK/out"
# Where bpffs was missing (a fresh machine; without_bpffs.sh), attach mounts it and says so.
if [[ $had_bpffs == no ]]; then
  if is_bpffs && grep -qx "xdp: mounted bpffs at /sys/fs/bpf" "$WORK/out"; then
    pass "attach mounted the missing bpffs at /sys/fs/bpf and said so"
  else
    fail "bpffs was missing: attach did not mount it, or did not say so"
  fi
fi
check_fails_one_line "attaching twice" in_srv "$CLI" attach --iface "$SIF"
check "the program is on the interface (native)" sh -c "ip -n $SRV link show $SIF | grep -q 'prog/xdp id'"
check "maps and link are pinned with mode 0600" \
  sh -c "[ \$(stat -c %a $PIN/xdp_link) = 600 ] && [ \$(stat -c %a $PIN/xdp_stats) = 600 ]"

# Started without the in_srv function, so that $! is the listener itself (nsenter execs it).
nsenter --net=/run/netns/"$SRV" "$TOOL" serve 8080 90 "$WORK/ready" >"$WORK/served" &
PIDS+=($!)
for _ in $(seq 50); do [[ -e $WORK/ready ]] && break; sleep 0.1; done
[[ -e $WORK/ready ]] || { fail "listener did not start"; exit 1; }

# --- deny ---------------------------------------------------------------------------
check "allowed 10.77.0.2 connects (through the cpumap)" in_cli "$TOOL" connect 10.77.0.2 10.77.0.1 8080 3000
check "allowed fd77::2 connects" in_cli "$TOOL" connect fd77::2 fd77::1 8080 3000
check "deny add 10.77.0.3" "$CLI" deny add 10.77.0.3
check "deny add fd77::3/128" "$CLI" deny add fd77::3/128
check "deny add 10.77.0.128/25 (a prefix)" "$CLI" deny add 10.77.0.128/25
check_fails_one_line "deny add with host bits set" "$CLI" deny add 10.77.0.1/24
if in_cli "$TOOL" connect 10.77.0.3 10.77.0.1 8080 1200 >/dev/null; then
  fail "denied 10.77.0.3 connected"
else
  pass "denied 10.77.0.3 cannot connect"
fi
if in_cli "$TOOL" connect fd77::3 fd77::1 8080 1200 >/dev/null; then
  fail "denied fd77::3 connected"
else
  pass "denied fd77::3 cannot connect"
fi
check "allowed 10.77.0.2 still connects" in_cli "$TOOL" connect 10.77.0.2 10.77.0.1 8080 3000
DENY_LIST=$("$CLI" deny list)
echo "$DENY_LIST" | sed 's/^/     deny list: /'
ENTRY_DROPS=$(echo "$DENY_LIST" | grep -o 'packets=[0-9]*' | cut -d= -f2 | awk '{ s += $1 } END { print s + 0 }')
DROP_DENY=$(counter drop_deny)
if [[ $DROP_DENY -ge 2 && $DROP_DENY -eq $ENTRY_DROPS ]]; then
  pass "drop_deny ($DROP_DENY) equals the deny entries' packets ($ENTRY_DROPS)"
else
  fail "drop_deny $DROP_DENY vs deny entries' packets $ENTRY_DROPS"
fi
check "deny del 10.77.0.3" "$CLI" deny del 10.77.0.3
check "10.77.0.3 connects once removed" in_cli "$TOOL" connect 10.77.0.3 10.77.0.1 8080 3000

# --- SYN flood ----------------------------------------------------------------------
RATE_DROPS_BEFORE=$(counter drop_syn_rate)
SYNS_BEFORE=$(counter syns)
nsenter --net=/run/netns/"$CLN" "$TOOL" synflood 10.77.0.4 10.77.0.1 8080 "$FLOOD_COUNT" "$FLOOD_MS" >"$WORK/flood" &
FLOOD_PID=$!
PIDS+=($FLOOD_PID)
sleep 0.4
check "10.77.0.2 connects during the flood" in_cli "$TOOL" connect 10.77.0.2 10.77.0.1 8080 3000
wait "$FLOOD_PID"
read -r SENT ELAPSED <"$WORK/flood"
RATE_DROPS=$(( $(counter drop_syn_rate) - RATE_DROPS_BEFORE ))
ADMITTED=$(( SENT - RATE_DROPS ))
MAX_ADMITTED=$(awk -v b="$BURST" -v r="$RATE" -v t="$ELAPSED" 'BEGIN { printf "%d", b + r * (t + 1) }')
echo "     flood: $SENT SYNs in ${ELAPSED}s; dropped $RATE_DROPS, admitted $ADMITTED (bucket allows <= $MAX_ADMITTED)"
if [[ $SENT -eq $FLOOD_COUNT && $ADMITTED -ge $BURST && $ADMITTED -le $MAX_ADMITTED ]]; then
  pass "the flood is cut to the bucket's rate"
else
  fail "flood: sent $SENT, admitted $ADMITTED, expected $BURST..$MAX_ADMITTED"
fi
SYNS=$(( $(counter syns) - SYNS_BEFORE ))
if [[ $SYNS -ge $((ADMITTED + 1)) && $SYNS -le $((ADMITTED + 3)) ]]; then
  pass "port 8080 counted the admitted SYNs ($SYNS = $ADMITTED from the flood + the other client's)"
else
  fail "port 8080 syns $SYNS, admitted flood SYNs $ADMITTED"
fi

# --- counters, as the kernel's own tool shows them ------------------------------------
"$CLI" stats | sed 's/^/     stats: /'
for field in drop_syn_rate drop_deny redirect_service; do
  from_bpftool=$(bpftool_sum xdp_stats "$field")
  from_stats=$(counter "$field")
  if [[ $from_bpftool -eq $from_stats && $from_stats -gt 0 ]]; then
    pass "bpftool map dump pinned $PIN/xdp_stats: $field = $from_bpftool"
  else
    fail "$field: bpftool $from_bpftool, stats $from_stats"
  fi
done
REDIRECTED=$(bpftool_sum xdp_port_stats redirected)
if [[ $REDIRECTED -eq $(counter redirect_service) ]]; then
  pass "port 8080 redirected ($REDIRECTED) = redirect_service"
else
  fail "port 8080 redirected $REDIRECTED vs redirect_service $(counter redirect_service)"
fi
check "bpftool shows the deny entries with named fields" \
  sh -c "bpftool map dump pinned $PIN/xdp_deny_lpm_v4 | grep -q '\"prefixlen\": 25'"

# --- detach ---------------------------------------------------------------------------
check "deny add 10.77.0.3 again" "$CLI" deny add 10.77.0.3
check_fails_one_line "detach from the wrong interface" in_srv "$CLI" detach --iface lo
check "detach" in_srv "$CLI" detach --iface "$SIF"
check "no pins are left" sh -c "! ls $PIN/xdp_* >/dev/null 2>&1"
check "no program is left on the interface" sh -c "! ip -n $SRV link show $SIF | grep -q xdp"
check "10.77.0.3 connects once the guard is gone" in_cli "$TOOL" connect 10.77.0.3 10.77.0.1 8080 3000
check_fails_one_line "detaching what is not attached" in_srv "$CLI" detach --iface "$SIF"
check_fails_one_line "stats with nothing attached" "$CLI" stats
check_fails_one_line "deny list with nothing attached" "$CLI" deny list

# --- the agent's own guard: one rule set, mirrored into the guard's maps ---------------
cat >"$WORK/agent.toml" <<EOF
admin = "127.0.0.1:0"
[security]
deny = ["10.77.0.3/32"]
[[upstream]]
servers = ["tcp://127.0.0.1:9"]
[[listener]]
listen = "10.77.0.1:8081"
EOF
nsenter --net=/run/netns/"$SRV" "$CLI" run -c "$WORK/agent.toml" --xdp-iface "$SIF" --xdp-mode native \
  2>"$WORK/agent.err" &
AGENT_PID=$!
PIDS+=($AGENT_PID)
for _ in $(seq 100); do grep -q "admin on" "$WORK/agent.err" && break; sleep 0.1; done
ADMIN=$(grep -o "admin on [0-9.:]*" "$WORK/agent.err" | awk '{ print $3 }')
check "the agent attached the guard and mirrored its configured deny" \
  grep -q "1 deny prefixes mirrored into the guard" "$WORK/agent.err"
check "an allowed source reaches the agent's listener" in_cli "$TOOL" connect 10.77.0.2 10.77.0.1 8081 3000
if in_cli "$TOOL" connect 10.77.0.3 10.77.0.1 8081 1200 >/dev/null; then
  fail "configured-denied 10.77.0.3 completed a handshake: the guard did not drop it"
else
  pass "configured-denied 10.77.0.3 is dropped by the guard (no handshake)"
fi
in_srv "$CLI" deny add 10.77.0.4 --admin "$ADMIN" >"$WORK/mirror" 2>&1
if grep -qx "agent: deny 10.77.0.4/32: added" "$WORK/mirror" && grep -qx "guard: added 10.77.0.4/32" "$WORK/mirror"; then
  pass "deny add changed the running agent and its guard, and said so"
else
  fail "deny add through the agent: $(head -c 300 "$WORK/mirror")"
fi
if in_cli "$TOOL" connect 10.77.0.4 10.77.0.1 8081 1200 >/dev/null; then
  fail "live-denied 10.77.0.4 completed a handshake"
else
  pass "live-denied 10.77.0.4 is dropped by the guard"
fi
in_srv "$CLI" deny list --admin "$ADMIN" >"$WORK/mirror" 2>&1
check "deny list shows it in the agent and in the guard" \
  sh -c "grep -qx 'agent: 10.77.0.4/32' $WORK/mirror && grep -q '^guard: 10.77.0.4/32 packets=' $WORK/mirror"
check "deny del through the agent" in_srv "$CLI" deny del 10.77.0.4 --admin "$ADMIN"
check "10.77.0.4 reaches the agent once removed" in_cli "$TOOL" connect 10.77.0.4 10.77.0.1 8081 3000
# An allow inside a deny the guard holds: longest wins in the agent, and the
# guard drops a deny whole, so the deny must leave the guard (and come back).
check "deny add 10.77.0.4/31 through the agent" in_srv "$CLI" deny add 10.77.0.4/31 --admin "$ADMIN"
if in_cli "$TOOL" connect 10.77.0.5 10.77.0.1 8081 1200 >/dev/null; then
  fail "10.77.0.5, inside the live-denied 10.77.0.4/31, completed a handshake"
else
  pass "10.77.0.5 inside the live-denied 10.77.0.4/31 is dropped by the guard"
fi
in_srv "$CLI" allow add 10.77.0.5 --admin "$ADMIN" >"$WORK/mirror" 2>&1
check "allow add inside it takes the deny out of the guard, and says so" \
  grep -qx "guard: removed 10.77.0.4/31" "$WORK/mirror"
check "the allowed 10.77.0.5 reaches the agent as the agent's rules say" \
  in_cli "$TOOL" connect 10.77.0.5 10.77.0.1 8081 3000
in_srv "$CLI" allow del 10.77.0.5 --admin "$ADMIN" >"$WORK/mirror" 2>&1
check "allow del puts the deny back into the guard" grep -qx "guard: added 10.77.0.4/31" "$WORK/mirror"
if in_cli "$TOOL" connect 10.77.0.5 10.77.0.1 8081 1200 >/dev/null; then
  fail "10.77.0.5 completed a handshake once its allow was gone"
else
  pass "10.77.0.5 is dropped by the guard again once its allow is gone"
fi
kill -TERM "$AGENT_PID"
wait "$AGENT_PID"
check "the agent's guard left no pins behind" sh -c "! ls $PIN/xdp_* >/dev/null 2>&1"

if [[ $FAILURES -ne 0 ]]; then
  echo "$FAILURES check(s) failed"
  exit 1
fi
echo "all checks passed"
