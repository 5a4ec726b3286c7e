#!/usr/bin/env bash
# Runs COMMAND... in a private mount namespace where /sys/fs/bpf is not a bpffs, as on a
# fresh machine (bpffs is often not mounted until something mounts it). The host's mounts
# are untouched: whatever the command mounts or pins vanishes with the namespace.
#   without_bpffs.sh COMMAND [ARG...]
# Needs root (unshare, umount); otherwise prints SKIP and exits 77.
set -euo pipefail
[[ $# -gt 0 ]] || { echo "usage: without_bpffs.sh COMMAND [ARG...]" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "SKIP: needs root for a private mount namespace"; exit 77; }
command -v unshare >/dev/null || { echo "SKIP: needs unshare (util-linux)"; exit 77; }

if [[ ${OFFLOAD_IN_PRIVATE_MOUNTS:-} != $$ ]]; then
  # --propagation private: nothing unmounted or mounted in here reaches the host.
  OFFLOAD_IN_PRIVATE_MOUNTS=$$ exec unshare --mount --propagation private -- "$0" "$@"
fi
unset OFFLOAD_IN_PRIVATE_MOUNTS
# Stacked mounts are possible: unmount until none is left.
for _ in 1 2 3 4 5 6 7 8; do
  mountpoint -q /sys/fs/bpf 2>/dev/null || break
  umount /sys/fs/bpf
done
if [[ $(stat -f -c %T /sys/fs/bpf 2>/dev/null) == bpf_fs ]]; then
  echo "FAIL: /sys/fs/bpf is still a bpffs in the private namespace"
  exit 1
fi
echo "without_bpffs.sh: /sys/fs/bpf is not mounted here; running $*"
exec "$@"
