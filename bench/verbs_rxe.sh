#!/usr/bin/env bash
# Usage: bench/verbs_rxe.sh            (on the host; boots the Soft-RoCE VM once)
#        VERBS_BENCH_PLAN_ONLY=1 bench/verbs_rxe.sh   (print the configuration and plan, boot nothing)
#
# wyvern's verbs transport against perftest (and UCX, if it takes rxe) on the same two Soft-RoCE
# devices, measured in the same run: boots scripts/rxe-vm.sh ONCE and runs
# bench/verbs_rxe_guest.sh inside it (rxe0 on veth0 10.77.0.1 <-> rxe1 on veth1 10.77.0.2, GID
# index 1, 256 x 2 MiB hugepages), which measures, RUNS times (default 3), wyvern and the peer
# one after the other (wyvern first in odd runs, the peer first in even runs):
#   - 8 B ping-pong, half round trip p50 and p99: two agents --transport verbs (agent 0 on rxe0,
#     agent 1 on rxe1), wyvern-peer ping/echo, vs ib_send_lat -s 8;
#   - bandwidth at 64 KiB, 1 MiB, 4 MiB: wyvern-peer --raw send/recv (large messages go by RDMA
#     READ rendezvous) vs ib_write_bw and ib_read_bw;
#   - 8 B message rate: 4 senders -> 1 receiver through the agents (aggregated) vs ib_send_bw -s 8;
#   - UCX: ucx_perftest with UCX_TLS=rc_verbs, tried once; if UCX refuses rxe the reason is
#     printed and the UCT level (-x rc_verbs am_lat/am_bw, no wire-up) is measured instead.
# It prints the configuration (host, VM, core layout), each run's figures, the medians and the
# ratios wyvern / peer, and keeps the whole output in target/verbs-bench/verbs_rxe-DATE.log.
# Emulated RDMA: the figures say nothing about a real NIC's absolute speed, only about relative
# overheads measured on the same emulated devices in the same run.
#
# Build first: cargo build --release --features verbs --bins
# Environment (passed to the guest; see bench/verbs_rxe_guest.sh): RUNS (3), LAT_COUNT (500),
# BW_SIZES ("65536 1048576 4194304"), BW_MIB (16), BW_PEERS, RATE_SENDERS (4), RATE_COUNT (25000
# per sender), PEER_RATE_COUNT (10000), SPIN_LAT_COUNT (200), UCX (1), IDLE (adaptive), PIN (0;
# 1 = node 0 on vCPU 0, node 1 on vCPU 1), BLOCK_MIB (64); and for the VM: SMP (2 vCPUs), VM_MEM (2048 MiB), VM_TIMEOUT (900 s), BIN
# (target/release, must be outside /tmp). The VM and everything in it run under timeouts; the
# VM is killed on every way out (scripts/rxe-vm.sh). Needs scripts/rxe-vm.sh's prerequisites
# and perftest (scripts/install-deps.sh core); ucx_perftest optional.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd -P)"
BIN="${BIN:-$ROOT/target/release}"
SMP="${SMP:-2}"
VM_MEM="${VM_MEM:-2048}"
VM_TIMEOUT="${VM_TIMEOUT:-900}"
GUEST_VARS=(RUNS LAT_COUNT BW_SIZES BW_MIB BW_PEERS RATE_SENDERS RATE_COUNT PEER_RATE_COUNT SPIN_LAT_COUNT UCX IDLE PIN BLOCK_MIB)

log() { printf '[verbs_rxe] %s\n' "$*" >&2; }
die() { printf '[verbs_rxe] ERROR: %s\n' "$*" >&2; exit 1; }

commit="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src 2>/dev/null || echo ' + uncommitted changes in src/')"
echo "== bench/verbs_rxe.sh: wyvern verbs transport vs perftest on Soft-RoCE (emulated VM)"
echo "host: $(date -u +%FT%TZ), commit $commit, binaries $BIN, $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "VM: scripts/rxe-vm.sh --smp $SMP --mem $VM_MEM --hugepages 256 --timeout $VM_TIMEOUT (qemu TCG: each vCPU a host thread on the host's $(nproc) cores, shared with whatever else runs here)"
if [ "${VERBS_BENCH_PLAN_ONLY:-0}" = 1 ]; then
    VCPUS="$SMP" PLAN_ONLY=1 BIN="$BIN" bash bench/verbs_rxe_guest.sh
    exit 0
fi

for b in "$BIN/wyvern" "$BIN/wyvern-peer"; do
    [ -x "$b" ] || die "no $b: cargo build --release --features verbs --bins"
done
ldd "$BIN/wyvern" 2>/dev/null | grep -q libibverbs \
    || die "$BIN/wyvern was built without the verbs feature: cargo build --release --features verbs --bins"
command -v ib_send_lat >/dev/null || die "perftest is not installed (scripts/install-deps.sh core)"
case "$BIN" in /tmp|/tmp/*|/run|/run/*) die "BIN=$BIN is under /tmp or /run, which the guest cannot see" ;; esac

echo "busiest processes at start:"
ps -eo pcpu,comm --sort=-pcpu | sed -n '2,5p' | sed 's/^/    /'
mkdir -p target/verbs-bench
out="target/verbs-bench/verbs_rxe-$(date -u +%Y%m%dT%H%M%SZ).log"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/verbs-rxe.XXXXXX")"
cleanup() { rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

HZ="$(getconf CLK_TCK)"
cpu_busy() { awk -v hz="$HZ" '/^cpu / {print ($2+$3+$4)/hz, $9/hz}' /proc/stat; }
my_cpu() { times >"$tmp/times"; awk '{for (i=1;i<=NF;i++) {split($i,t,/[ms]/); s+=t[1]*60+t[2]}} END {print s}' "$tmp/times"; }

env_args=(--env "BIN=$BIN" --env "VCPUS=$SMP")
for v in "${GUEST_VARS[@]}"; do
    if [ -n "${!v:-}" ]; then env_args+=(--env "$v=${!v}"); fi
done
t0="$(date +%s.%N)"; read -r busy0 steal0 <<<"$(cpu_busy)"; my_cpu >"$tmp/my0"; my0="$(cat "$tmp/my0")"
set +e
timeout $((VM_TIMEOUT + 120)) scripts/rxe-vm.sh --smp "$SMP" --mem "$VM_MEM" --hugepages 256 \
    --timeout "$VM_TIMEOUT" "${env_args[@]}" bench/verbs_rxe_guest.sh 2>&1 | tee "$out"
rc="${PIPESTATUS[0]}"
set -e
t1="$(date +%s.%N)"; read -r busy1 steal1 <<<"$(cpu_busy)"; my_cpu >"$tmp/my1"; my1="$(cat "$tmp/my1")"
python3 - <<EOF | tee -a "$out"
w = ($t1 - $t0) * $(nproc)
f = max(0.0, ($busy1 - $busy0) - ($my1 - $my0))
print(f"host noise: {$t1 - $t0:.0f} s in all; other processes used {100*f/w:.0f}% of the host's CPU time, "
      f"hypervisor steal {100*($steal1 - $steal0)/w:.1f}%; load average at the end $(cut -d' ' -f1-3 /proc/loadavg)")
EOF
echo "output kept in $out"
[ "$rc" = 0 ] || die "the VM run exited $rc (77: the VM could not start; 124: --timeout; 125: the guest died)"
