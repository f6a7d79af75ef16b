#!/usr/bin/env bash
# Usage: bench/verbs_rails.sh          (on the host; boots the Soft-RoCE VM once)
#
# Multi-rail on the verbs transport (issue 18): ONE rail (rxe0 <-> rxe1) against TWO rails
# (rxe0,rxe2 <-> rxe1,rxe3) in the same run, inside scripts/rxe-vm.sh's VM, by
# bench/verbs_rails_guest.sh (see there for what is measured and its environment: RUNS, SIZE,
# COUNT, SENDERS, CHUNK, IDLE, BLOCK_MIB). Emulated RDMA (rxe under qemu TCG, on cores shared
# with whatever else runs here): the figures mean something only as ratios within one run.
# Run it under `flock /work/bench.lock` on a shared machine.
#
# Build first: cargo build --release --features verbs --bins
# Environment for the VM: SMP (2 vCPUs), VM_MEM (2048 MiB), VM_TIMEOUT (900 s), BIN
# (target/release, must be outside /tmp); BIN_B (another build's directory, outside /tmp too:
# every measurement with both, see bench/verbs_rails_guest.sh), PERFTEST (1: the ib_read_bw
# control), DELAY (tc netem on node 0's ends of both rails, e.g. 2ms).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd -P)"
BIN="${BIN:-$ROOT/target/release}"
GUEST_VARS=(RUNS SIZE COUNT SENDERS CHUNK IDLE BLOCK_MIB PERFTEST BIN_B DELAY)
for b in "$BIN/wyvern" "$BIN/wyvern-peer" ${BIN_B:+"$BIN_B/wyvern" "$BIN_B/wyvern-peer"}; do
    [ -x "$b" ] || { echo "verbs_rails: no $b: cargo build --release --features verbs --bins" >&2; exit 1; }
done
for d in "$BIN" ${BIN_B:+"$BIN_B"}; do
    case "$d" in /tmp|/tmp/*|/run|/run/*) echo "verbs_rails: $d is under /tmp or /run, which the guest cannot see" >&2; exit 1 ;; esac
done
commit="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src 2>/dev/null || echo ' + uncommitted changes in src/')"
echo "== bench/verbs_rails.sh: host $(date -u +%FT%TZ), commit $commit, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
env_args=(--env "BIN=$BIN")
for v in "${GUEST_VARS[@]}"; do
    if [ -n "${!v:-}" ]; then env_args+=(--env "$v=${!v}"); fi
done
exec scripts/rxe-vm.sh --smp "${SMP:-2}" --mem "${VM_MEM:-2048}" --timeout "${VM_TIMEOUT:-900}" \
    "${env_args[@]}" bash bench/verbs_rails_guest.sh
