#!/usr/bin/env bash
# Installs the build, test and benchmark dependencies from Debian's packages.
# Idempotent and quiet when everything is already there.
set -euo pipefail

packages=(
  build-essential cmake pkg-config git
  clang llvm libclang-rt-14-dev          # BPF objects, libFuzzer
  libbpf-dev bpftool libelf-dev zlib1g-dev
  liburing-dev libcli11-dev doctest-dev libtomlplusplus-dev libfmt-dev libbenchmark-dev
  iproute2 ethtool procps python3 curl
  python3-websockets                     # a real WebSocket client and server (tests)
  wrk nginx-light haproxy                # side-by-side benchmarks
  prometheus                             # promtool: the /metrics test runs `promtool check metrics`
  libsystemd-dev                         # sd_notify for the Type=notify unit (optional at build time)
  systemd                                # systemd-analyze verify for packaging/systemd/offload-agent.service
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "ci/deps.sh: installing ${missing[*]}"
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# policy-rc.d keeps package scripts from starting nginx/haproxy services on install.
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
