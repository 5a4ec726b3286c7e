#!/usr/bin/env bash
# The unit file as systemd reads it: `systemd-analyze verify` on
# packaging/systemd/offload-agent.service with its binary path pointed at the
# agent just built (the installed path need not exist here). Exit 77 (a
# SKIP) without systemd-analyze.
set -euo pipefail
unit=$1 agent=$2
if ! command -v systemd-analyze >/dev/null; then
  echo "SKIP: no systemd-analyze (Debian package systemd)"
  exit 77
fi
dir=$(mktemp -d /tmp/offload-unit-XXXXXX)
trap 'rm -rf "$dir"' EXIT
sed "s|/usr/local/bin/offload-agent|$agent|g" "$unit" > "$dir/offload-agent.service"
grep -q '^Type=notify$' "$dir/offload-agent.service"
grep -q '^KillMode=mixed$' "$dir/offload-agent.service"
grep -q "^ExecStartPre=$agent check " "$dir/offload-agent.service"
grep -q '^ExecReload=/bin/kill -HUP $MAINPID$' "$dir/offload-agent.service"
out=$(cd "$dir" && systemd-analyze verify "$dir/offload-agent.service" 2>&1) || { echo "$out"; exit 1; }
# verify exits 0 on some findings; any line about our unit is one.
if grep -q 'offload-agent.service' <<<"$out"; then echo "$out"; exit 1; fi
# The ExecStartPre line works as written: the shipped example config passes.
config=$(sed -n 's|^ExecStartPre=[^ ]* check --config \(.*\)$|\1|p' "$dir/offload-agent.service")
[[ $config == /etc/offload/offload.toml ]]
"$agent" check --config "$(dirname "$unit")/../../docs/offload.toml" >/dev/null
echo "unit file verified"
