#!/usr/bin/env bash
# Usage: bench/dpdk_mixed_mtu.sh [PROFILE_DIR]   (default: target/release; e.g. target/debug)
#
# Peers with different MTUs on the dpdk transport (issue 18): two "nodes" in network
# namespaces (wyvm0, wyvm1) joined by one veth pair, net_af_packet on each end, and three
# set-ups measured in the same run, their order rotating between RUNS runs (default 3):
#   1500/1500  both veth ends and both agents at 1500;
#   9000/9000  both at 9000 (--dpdk-mtu 9000);
#   9000/1500  node 0's end and agent at 9000, node 1's at 1500: each link's packets are the
#              smaller end's, said in the Hello (before this, node 0's 9000-byte packets were
#              dropped by node 1's interface and nothing larger than ~1400 B arrived).
# Each measures BULK_MIB MiB in 1 MiB messages node 0 -> node 1, then node 1 -> node 0 (MB/s
# from the receiver's time), and the largest packet each agent sent (`frames_tx_largest`).
# Agents: --idle adaptive --cores 0 / 1, no hugepages; the ring frames (framesz=16384) are the
# same in every set-up. Needs root, python3, binaries built with --features dpdk. Every process
# is wrapped in `timeout`; the namespaces are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release}"
RUNS="${RUNS:-3}"
BULK_MIB="${BULK_MIB:-256}"
wyvern="$bin/wyvern"
peer="$bin/wyvern-peer"
for b in "$wyvern" "$peer"; do
    [ -x "$b" ] || { echo "dpdk_mixed_mtu: no $b (cargo build --release --features dpdk --bins)" >&2; exit 1; }
done
export TESTBED_PREFIX=wyvm TESTBED_HUGEPAGES=skip TESTBED_MTU=9000
dir="$(mktemp -d "${TMPDIR:-/tmp}/wyvern-mixed-mtu.XXXXXX")"
agent_pid=()
cleanup() {
    for p in "${agent_pid[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${agent_pid[@]}"; do wait "$p" 2>/dev/null || true; done
    scripts/testbed.sh down >/dev/null || true
    if [ "${KEEP_TMP:-0}" = 1 ]; then echo "scratch kept in $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
scripts/testbed.sh up 2 >/dev/null
EAL="--no-pci --no-huge -m 256 --no-telemetry --no-shconf --log-level=lib.eal:warning"
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
tx_largest() { "$wyvern" stat --json --socket "$dir/agent$1.sock" | python3 -c \
    'import json,sys; print(json.load(sys.stdin)["transport"].get("frames_tx_largest", 0))'; }

start_agents() { # mtu0 mtu1 run
    local i mtu extra
    for i in 0 1; do
        mtu="$1"; [ "$i" = 1 ] && mtu="$2"
        ip -n "wyvm$i" link set dev veth0 mtu "$mtu"
        extra=()
        [ "$mtu" -gt 1500 ] && extra=(--dpdk-mtu "$mtu")
        RUST_LOG=warn ip netns exec "wyvm$i" timeout 600 "$wyvern" agent --node-id "$i" \
            --nodes 127.0.0.1:0,127.0.0.1:0 --connect all --transport dpdk "${extra[@]}" \
            --dpdk-eal-args "$EAL --vdev=net_af_packet0,iface=veth0,framesz=16384,blocksz=16384 \
                --file-prefix=wyvm-agent$i --lcores=0@$i" \
            --socket "$dir/agent$i.sock" --no-hugepages --idle adaptive --cores "$i" \
            --job wyvern-mixed-mtu >"$dir/ready$i" 2>"$dir/agent$i-$1-$2-run$3.log" &
        agent_pid[$i]=$!
    done
    for _ in $(seq 100); do
        if "$wyvern" stat --json --socket "$dir/agent0.sock" 2>/dev/null | grep -q '"state": "up"' \
            && "$wyvern" stat --json --socket "$dir/agent1.sock" 2>/dev/null | grep -q '"state": "up"'; then
            return 0
        fi
        sleep 0.1
    done
    echo "dpdk_mixed_mtu: the agents ($1/$2) did not connect; logs:" >&2
    cat "$dir"/agent*-"$1-$2-run$3".log >&2
    exit 1
}
stop_agents() {
    kill "${agent_pid[0]}" "${agent_pid[1]}" 2>/dev/null || true
    wait "${agent_pid[0]}" "${agent_pid[1]}" 2>/dev/null || true
    agent_pid=()
    rm -f "$dir/agent0.sock" "$dir/agent1.sock"
}
stream() { # from to -> MB/s of BULK_MIB 1 MiB messages
    local from="$1" to="$2" ep=$((RANDOM % 1000 + 100)) line
    ip netns exec "wyvm$to" timeout 120 "$peer" --socket "$dir/agent$to.sock" --ep "$ep" --raw \
        --sizes 1048576 recv --count "$BULK_MIB" >"$dir/rx.json" &
    local rx=$!
    sleep 0.3
    ip netns exec "wyvm$from" timeout 120 "$peer" --socket "$dir/agent$from.sock" --raw \
        --sizes 1048576 send --to "$to:$ep" --count "$BULK_MIB" >/dev/null
    wait "$rx"
    line="$(grep '^{' "$dir/rx.json" | tail -n1)"
    [ "$(field "$line" received)" = "$BULK_MIB" ] || { echo "dpdk_mixed_mtu: $line" >&2; exit 1; }
    python3 -c "print(round($BULK_MIB * 1048576 / $(field "$line" secs) / 1e6))"
}

commit="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty')"
echo "== bench/dpdk_mixed_mtu.sh: peers with different MTUs, one veth pair, net_af_packet"
echo "date $(date -u +%FT%TZ), commit $commit, binaries from $bin, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "RUNS=$RUNS BULK_MIB=$BULK_MIB; agents --idle adaptive --cores 0/1 --no-hugepages"
: >"$dir/results"
setups=("1500 1500" "9000 9000" "9000 1500")
for run in $(seq 1 "$RUNS"); do
    for k in 0 1 2; do
        read -r m0 m1 <<<"${setups[$(((k + run) % 3))]}"
        start_agents "$m0" "$m1" "$run"
        a="$(stream 0 1)"
        b="$(stream 1 0)"
        echo "$m0/$m1 $run $a $b $(tx_largest 0) $(tx_largest 1)" | tee -a "$dir/results" \
            | awk '{printf "run %s %-9s 0->1 %5d MB/s  1->0 %5d MB/s  largest packets sent %s / %s B\n", $2, $1, $3, $4, $5, $6}'
        stop_agents
    done
done
echo "medians (MB/s, 1 MiB messages):"
python3 - "$dir/results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for s in ("1500/1500", "9000/9000", "9000/1500"):
    r = [x for x in rows if x[0] == s]
    a = statistics.median(int(x[2]) for x in r)
    b = statistics.median(int(x[3]) for x in r)
    print(f"  {s:9}  0->1 {a:6.0f}  1->0 {b:6.0f}  largest sent {r[-1][4]} / {r[-1][5]} B")
PY
