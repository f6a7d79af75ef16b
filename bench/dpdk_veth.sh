#!/usr/bin/env bash
# Usage: bench/dpdk_veth.sh [PROFILE_DIR]      (default: target/release; e.g. target/debug)
#
# Throughput of the dpdk transport between two "nodes" on this machine: scripts/testbed.sh
# makes two network namespaces joined by a veth pair (prefix wyvb), an agent runs in each on
# net_af_packet (no hugepages), and one wyvern-peer sender on node 0 streams to one receiver
# on node 1, per message size. Prints one line per size; removes the namespaces on exit
# (also on failure or Ctrl-C). Needs root and binaries built with --features dpdk:
#   cargo build --release --features dpdk --bins && bench/dpdk_veth.sh
# Every wait is bounded (timeout).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release}"
wyvern="$bin/wyvern"
peer="$bin/wyvern-peer"
for b in "$wyvern" "$peer"; do
    [ -x "$b" ] || { echo "dpdk_veth: no $b (cargo build --release --features dpdk --bins)" >&2; exit 1; }
done
export TESTBED_PREFIX=wyvb TESTBED_HUGEPAGES=skip
dir="$(mktemp -d "${TMPDIR:-/tmp}/wyvern-dpdk-bench.XXXXXX")"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    scripts/testbed.sh down >/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
scripts/testbed.sh up 2 >/dev/null

for i in 0 1; do
    RUST_LOG=warn ip netns exec "wyvb$i" timeout 300 "$wyvern" agent --node-id "$i" \
        --nodes 127.0.0.1:0,127.0.0.1:0 --socket "$dir/agent$i.sock" --no-hugepages \
        --transport dpdk --dpdk-eal "--no-pci --vdev=net_af_packet0,iface=veth0 \
        --file-prefix=wyvb$i --no-shconf --no-huge -m 64 --no-telemetry --lcores=0@(0-1)" \
        >"$dir/ready$i" 2>"$dir/agent$i.log" &
    pids+=($!)
done
for _ in $(seq 100); do
    if "$wyvern" stat --json --socket "$dir/agent0.sock" 2>/dev/null | grep -q '"state": "up"'; then
        break
    fi
    sleep 0.1
done
"$wyvern" stat --json --socket "$dir/agent0.sock" | grep -q '"state": "up"' \
    || { echo "dpdk_veth: the agents did not connect; logs:" >&2; cat "$dir"/agent*.log >&2; exit 1; }
echo "dpdk transport, net_af_packet on a veth pair, $(nproc) cores, binaries from $bin"
printf '%-10s %8s %10s %12s %10s\n' size count secs "msgs/s" "MB/s"
for run in "1048576 300" "65536 3000" "4096 50000" "64 200000" "8 300000"; do
    set -- $run
    ip netns exec wyvb1 timeout 120 "$peer" --socket "$dir/agent1.sock" --ep 5 --sizes "$1" \
        recv --count "$2" >"$dir/rx" &
    rx=$!
    sleep 0.3
    ip netns exec wyvb0 timeout 120 "$peer" --socket "$dir/agent0.sock" --sizes "$1" \
        send --to 1:5 --count "$2" >"$dir/tx"
    wait "$rx"
    line="$(grep '^{' "$dir/rx" | tail -n1)"
    secs="$(printf '%s' "$line" | sed -n 's/.*"secs":\([0-9.]*\).*/\1/p')"
    got="$(printf '%s' "$line" | sed -n 's/.*"received":\([0-9]*\).*/\1/p')"
    [ "$got" = "$2" ] || { echo "dpdk_veth: size $1: received ${got:-?} of $2: $line" >&2; exit 1; }
    awk -v s="$1" -v n="$2" -v t="$secs" \
        'BEGIN { printf "%-10s %8d %10.3f %12.0f %10.1f\n", s, n, t, n / t, s * n / t / 1e6 }'
done
"$wyvern" stat --socket "$dir/agent0.sock" | sed -n 2p
