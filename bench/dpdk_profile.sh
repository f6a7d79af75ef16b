#!/usr/bin/env bash
# Usage: bench/dpdk_profile.sh [PROFILE_DIR]      (default: target/release)
#
# Profiles the frame-rate case of bench/dpdk_veth.sh once: two dpdk agents in namespaces
# wyvp0/wyvp1 (one veth pair, net_af_packet, the same EAL arguments and core layout as
# dpdk_veth.sh), one sender streams BULK_MIB MiB in 1 MiB messages from node 0 to node 1, and
# `perf record -e cpu-clock` (the VM has no hardware counters) samples both agents meanwhile (PERF_SECS seconds, from 1 s into the stream).
# Prints frames/s, each agent's CPU time per frame over the whole stream (user + system, from
# /proc: less sensitive to other processes than the rate), both agents' `wyvern stat`
# transport counters and `perf report` (self time, per agent). PERF_SECS=0: no perf. Needs root, perf, binaries built with --features dpdk (with debug symbols the
# report names functions: CARGO_PROFILE_RELEASE_DEBUG=line-tables-only). KEEP_TMP=1 keeps the
# scratch directory (perf.data files).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release}"
BULK_MIB="${BULK_MIB:-2048}"
# SIZE=64 COUNT=2000000: that many messages of that size instead (the small-message case).
SIZE="${SIZE:-1048576}"
COUNT="${COUNT:-$((BULK_MIB * 1048576 / SIZE))}"
PERF_SECS="${PERF_SECS:-3}"
wyvern="$bin/wyvern"
peer="$bin/wyvern-peer"
command -v perf >/dev/null || { echo "dpdk_profile: no perf (apt-get install linux-perf)" >&2; exit 1; }
# DPDK_MTU=9000: jumbo frames (the veth pair's MTU, net_af_packet's ring frames, --dpdk-mtu).
DPDK_MTU="${DPDK_MTU:-}"
vdev_extra="" mtu_arg=""
if [ -n "$DPDK_MTU" ]; then
    export TESTBED_MTU="$DPDK_MTU"
    vdev_extra=",framesz=16384,blocksz=16384"
    mtu_arg="--dpdk-mtu $DPDK_MTU"
fi
export TESTBED_PREFIX=wyvp TESTBED_HUGEPAGES=skip
dir="$(mktemp -d "${TMPDIR:-/tmp}/wyvern-dpdk-prof.XXXXXX")"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    scripts/testbed.sh down >/dev/null || true
    if [ "${KEEP_TMP:-0}" = 1 ]; then echo "scratch kept in $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
scripts/testbed.sh up 2 >/dev/null
EAL_COMMON="--no-pci --no-huge -m 256 --no-telemetry --no-shconf --log-level=lib.eal:warning"
apid=()
for i in 0 1; do
    RUST_LOG=warn ip netns exec "wyvp$i" timeout 300 "$wyvern" agent --node-id "$i" \
        --socket "$dir/agent$i.sock" --no-hugepages --idle adaptive --cores "$i" \
        --job wyvern-dpdk-prof --nodes 127.0.0.1:0,127.0.0.1:0 --connect all --transport dpdk \
        --dpdk-eal-args "$EAL_COMMON --vdev=net_af_packet0,iface=veth0$vdev_extra --file-prefix=wyvp-agent$i --lcores=0@$i" \
        $mtu_arg ${WYVERN_AGENT_ARGS:-} >"$dir/ready$i" 2>"$dir/agent$i.log" &
    pids+=($!)
    apid[$i]=$!
done
for _ in $(seq 100); do
    if "$wyvern" stat --json --socket "$dir/agent0.sock" 2>/dev/null | grep -q '"state": "up"' \
        && "$wyvern" stat --json --socket "$dir/agent1.sock" 2>/dev/null | grep -q '"state": "up"'; then
        break
    fi
    sleep 0.1
done
stat() { "$wyvern" stat --json --socket "$dir/agent$1.sock" | python3 -c \
    'import json,sys; t=json.load(sys.stdin)["transport"]; print(" ".join(f"{k}={v}" for k,v in t.items() if not isinstance(v,(dict,list))))'; }
# The agents run under `timeout` (its child): sample the wyvern processes themselves.
agent_of() { pgrep -P "$1" | head -n1; }
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{sub(/.*\) /, ""); split($0, f, " "); print (f[12] + f[13]) / hz}' "/proc/$1/stat"; }
a0="$(agent_of "${apid[0]}")"
a1="$(agent_of "${apid[1]}")"
c0="$(cpu_s "$a0") $(cpu_s "$a1")"
f0="$("$wyvern" stat --json --socket "$dir/agent1.sock" | python3 -c 'import json,sys; print(json.load(sys.stdin)["transport"].get("frames_rx",0))')"
ip netns exec wyvp1 timeout 120 "$peer" --socket "$dir/agent1.sock" --ep 300 --raw \
    --sizes "$SIZE" recv --count "$COUNT" >"$dir/rx.json" &
rx=$!
sleep 0.3
ip netns exec wyvp0 timeout 120 "$peer" --socket "$dir/agent0.sock" --raw --sizes "$SIZE" \
    send --to 1:300 --count "$COUNT" >"$dir/tx.json" &
tx=$!
sleep 1
if [ "$PERF_SECS" != 0 ]; then
perf record -e cpu-clock -F "${PERF_FREQ:-4000}" ${PERF_ARGS:-} -o "$dir/perf0.data" -p "$a0" -- sleep "$PERF_SECS" >/dev/null 2>&1 &
p0=$!
perf record -e cpu-clock -F "${PERF_FREQ:-4000}" ${PERF_ARGS:-} -o "$dir/perf1.data" -p "$a1" -- sleep "$PERF_SECS" >/dev/null 2>&1 &
p1=$!
wait "$p0" "$p1" || true
fi
wait "$tx" "$rx"
c1="$(cpu_s "$a0") $(cpu_s "$a1")"
f1="$("$wyvern" stat --json --socket "$dir/agent1.sock" | python3 -c 'import json,sys; print(json.load(sys.stdin)["transport"].get("frames_rx",0))')"
secs="$(grep '^{' "$dir/rx.json" | tail -n1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["secs"])')"
echo "== frames/s $(python3 -c "print(int(($f1 - $f0) / $secs))"), $COUNT x $SIZE B in $secs s ($(python3 -c "print(int($COUNT / $secs))") msgs/s); load average $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - $c0 $c1 "$f0" "$f1" <<'PY'
import sys
a0, a1, b0, b1, f0, f1 = map(float, sys.argv[1:])
n = f1 - f0
print(f"== CPU per frame over the stream: sender {1e6 * (b0 - a0) / n:.2f} µs, receiver {1e6 * (b1 - a1) / n:.2f} µs "
      f"({b0 - a0:.2f} s and {b1 - a1:.2f} s for {n:.0f} frames; perf adds its share while it samples)")
PY
for i in 0 1; do echo "== agent $i: $(stat "$i")"; done
[ "$PERF_SECS" = 0 ] && exit 0
for i in 0 1; do
    echo "== agent $i ($([ "$i" = 0 ] && echo sender || echo receiver)): perf report, self time"
    perf report -i "$dir/perf$i.data" --no-children --sort dso,symbol --stdio 2>/dev/null \
        | grep -E '^ +[0-9]' | head -n "${TOP:-30}" || true
done
