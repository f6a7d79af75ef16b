#!/usr/bin/env bash
# Usage: bench/lossy.sh [BIN_DIR [OLD_BIN_DIR]]     (default: target/release)
#
# Goodput through an impaired hop (issue 14): kernel TCP (iperf3) against the wyvern udp
# transport, through the same forwarder, in the same run. Three network namespaces:
#   wyl0 (sender, veth l0 10.78.0.1) -- wylf (forwarder: l0f, l1f) -- wyl1 (receiver, l1 10.78.0.2)
# with every veth offload off (`ethtool -K DEV tx off rx off gso off tso off gro off`: a user-space
# forwarder must see wire-sized frames with real checksums). The forwarder is bench/lossy_fwd.c
# (AF_PACKET, a two-port bridge in user space) that drops LOSS %, drops CORRUPT % as damaged,
# duplicates DUP % and holds back REORDER % behind 1-3 later frames (at most 2 ms), both
# directions, seeded (seed SEED + run). Cells (loss/reorder/dup/corrupt): 0/0/0/0 (clean: the
# forwarder's own rate is printed there), 1/25/2/1, 5/25/2/1, 0/50/0/0, 5/0/0/0.
# Per cell and run: iperf3 for IPERF_SECS s (goodput = received bits/s; its retransmits), then
# wyvern udp agents (fresh per cell) moving BULK_MIB MiB in 1 MiB messages (goodput = bytes /
# receiver's seconds) and the sending agent's counters (resent, spurious, undos, tail probes,
# timeouts, RACK resends, loss episodes read as random / as congestion); with OLD_BIN_DIR the same with those
# binaries (before/after in one run). Medians of RUNS runs (default 3), ratio to iperf3.
# TRANSPORTS="udp dpdk" adds the dpdk transport through the same hop (net_af_packet on l0/l1, EAL args as
# bench/dpdk_veth.sh, binaries built with --features dpdk); IDLE=spin|adaptive (default adaptive).
# Per wyvern cell the log line also shows where the sending agent's time went (its tx_us_* counters:
# sending / held by the congestion window / by the peer's credits / by the send window / drained / idle;
# stalls ended by a tail probe / a timeout; mean window) and both agents' polling threads' time on a CPU and
# waiting for one (/proc/PID/schedstat), involuntary switches.
#
#   cargo build --release --bins && RUNS=3 bench/lossy.sh
#
# Needs root, iperf3, ethtool, cc, python3. Every process is bounded by `timeout`; the
# namespaces are removed on exit. Agents are pinned to cores 0 and 1; the forwarder and iperf3
# are not (2 cores: everything shares them; the clean cell shows what the hop carries).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release}"
old="${2:-}"
RUNS="${RUNS:-3}"
IPERF_SECS="${IPERF_SECS:-8}"
BULK_MIB="${BULK_MIB:-200}"
SEED="${SEED:-14}"
CELLS="${CELLS:-0/0/0/0 1/25/2/1 5/25/2/1 0/50/0/0 5/0/0/0}"
IDLE="${IDLE:-adaptive}"
TRANSPORTS="${TRANSPORTS:-udp}"
EAL_COMMON="--no-pci --no-huge -m 256 --no-telemetry --no-shconf --log-level=lib.eal:warning"
for b in "$bin/wyvern" "$bin/wyvern-peer" ${old:+"$old/wyvern" "$old/wyvern-peer"}; do
    [ -x "$b" ] || { echo "lossy: no $b (cargo build --release --bins)" >&2; exit 1; }
done
for c in iperf3 ethtool cc python3; do
    command -v "$c" >/dev/null || { echo "lossy: needs $c" >&2; exit 1; }
done
dir="$(mktemp -d "${TMPDIR:-/tmp}/wyvern-lossy.XXXXXX")"
cc -O2 -o "$dir/fwd" bench/lossy_fwd.c
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    for n in wyl0 wylf wyl1; do ip netns del "$n" 2>/dev/null || true; done
    if [ "${KEEP_TMP:-0}" = 1 ]; then echo "scratch kept in $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for n in wyl0 wylf wyl1; do ip netns del "$n" 2>/dev/null || true; ip netns add "$n"; done
ip link add l0 netns wyl0 type veth peer name l0f netns wylf
ip link add l1 netns wyl1 type veth peer name l1f netns wylf
ip -n wyl0 addr add 10.78.0.1/24 dev l0
ip -n wyl1 addr add 10.78.0.2/24 dev l1
for x in "wyl0 l0" "wylf l0f" "wylf l1f" "wyl1 l1"; do
    set -- $x
    ip -n "$1" link set "$2" up
    ip netns exec "$1" ethtool -K "$2" tx off rx off gso off tso off gro off >/dev/null 2>&1 || true
done
for n in wyl0 wylf wyl1; do ip -n "$n" link set lo up; done

commit="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty')"
echo "== bench/lossy.sh: kernel TCP vs wyvern udp through one impairing forwarder hop"
echo "date $(date -u +%FT%TZ), commit $commit, binaries $bin${old:+, old binaries $old}, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "RUNS=$RUNS IPERF_SECS=$IPERF_SECS BULK_MIB=$BULK_MIB SEED=$SEED"

fwd_pid=
start_fwd() { # cell run
    IFS=/ read -r lo re du co <<<"$1"
    # (No `timeout` wrapper: the forwarder bounds itself to 900 s and must get the TERM itself.)
    ip netns exec wylf "$dir/fwd" l0f l1f "$lo" "$re" "$du" "$co" $((SEED + $2)) 900 \
        >"$dir/fwd.out" 2>&1 &
    fwd_pid=$!
    pids+=("$fwd_pid")
    sleep 0.2
}
stop_fwd() {
    kill -TERM "$fwd_pid" 2>/dev/null || true
    wait "$fwd_pid" 2>/dev/null || true
    cat "$dir/fwd.out"
}

iperf_cell() { # -> "MB/s retransmits"
    ip netns exec wyl1 timeout $((IPERF_SECS + 30)) iperf3 -s -1 -p 5299 >/dev/null 2>&1 &
    local s=$!
    sleep 0.3
    ip netns exec wyl0 timeout $((IPERF_SECS + 20)) iperf3 -c 10.78.0.2 -p 5299 -t "$IPERF_SECS" -J \
        >"$dir/iperf.json" 2>/dev/null || true
    wait "$s" 2>/dev/null || true
    python3 - "$dir/iperf.json" <<'EOF'
import json, sys
try:
    j = json.load(open(sys.argv[1]))["end"]
    print(j["sum_received"]["bits_per_second"] / 8e6, j["sum_sent"].get("retransmits", 0))
except Exception:
    print("nan nan")
EOF
}

wyvern_cell() { # bindir tag transport -> "MB/s resent spurious undos probes timeouts rack random"
    local b="$1" tag="$2" t="$3" i
    local ap=() extra
    for i in 0 1; do
        if [ "$t" = dpdk ]; then
            # net_af_packet on the namespace's veth (the forwarder bridges the raw frames too).
            extra=(--nodes 127.0.0.1:0,127.0.0.1:0 --transport dpdk --dpdk-eal-args "$EAL_COMMON \
                --vdev=net_af_packet0,iface=l$i --file-prefix=wyl-agent$i --lcores=0@$i")
        else
            extra=(--transport udp --nodes 10.78.0.1:7480,10.78.0.2:7480)
        fi
        RUST_LOG=warn ip netns exec "wyl$i" timeout 600 "$b/wyvern" agent --node-id "$i" \
            --socket "$dir/a$i.sock" --no-hugepages --idle "$IDLE" --cores "$i" \
            --job wyvern-lossy --connect all "${extra[@]}" \
            >/dev/null 2>"$dir/agent$tag$t$i.log" &
        ap+=($!)
        pids+=($!)
    done
    local up=0
    for _ in $(seq 100); do
        if "$b/wyvern" stat --json --socket "$dir/a0.sock" 2>/dev/null | grep -q '"state": "up"' \
            && "$b/wyvern" stat --json --socket "$dir/a1.sock" 2>/dev/null | grep -q '"state": "up"'; then
            up=1; break
        fi
        sleep 0.1
    done
    local line="{}"
    if [ "$up" = 1 ]; then
        ip netns exec wyl1 timeout 300 "$b/wyvern-peer" --socket "$dir/a1.sock" --ep 77 --raw \
            --sizes 1048576 recv --count "$BULK_MIB" >"$dir/rx.json" 2>/dev/null &
        local rx=$!
        sleep 0.3
        ip netns exec wyl0 timeout 300 "$b/wyvern-peer" --socket "$dir/a0.sock" --raw --sizes 1048576 \
            send --to 1:77 --count "$BULK_MIB" >"$dir/tx.json" 2>/dev/null || true
        wait "$rx" 2>/dev/null || true
        line="$(grep '^{' "$dir/rx.json" | tail -n1 || echo '{}')"
        "$b/wyvern" stat --json --socket "$dir/a0.sock" >"$dir/stat0.json" 2>/dev/null || echo '{}' >"$dir/stat0.json"
        "$b/wyvern" stat --json --socket "$dir/a1.sock" >"$dir/stat1.json" 2>/dev/null || echo '{}' >"$dir/stat1.json"
        # The agents' main (polling) threads: on-CPU ms, ms waiting for a CPU, involuntary switches.
        local sched=""
        for i in 0 1; do
            local c; c="$(pgrep -P "${ap[$i]}" | head -n1 || true)"
            if [ -n "$c" ] && [ -r "/proc/$c/schedstat" ]; then
                read -r oncpu waitq _ <"/proc/$c/schedstat"
                sched+=" a$i cpu/runq-wait ms $((oncpu / 1000000))/$((waitq / 1000000)) invol $(awk '/nonvoluntary/{print $2}' "/proc/$c/status")"
            fi
        done
        echo "$tag$sched" >>"$dir/sched"
    else
        echo '{}' >"$dir/stat0.json"
        echo '{}' >"$dir/stat1.json"
    fi
    kill "${ap[@]}" 2>/dev/null || true
    wait "${ap[@]}" 2>/dev/null || true
    rm -f "$dir/a0.sock" "$dir/a1.sock"
    python3 - "$line" "$dir/stat0.json" "$BULK_MIB" "$dir/stat1.json" "$dir/detail" "$tag" "$dir/tx.json" <<'EOF'
import json, sys
r = json.loads(sys.argv[1] or "{}")
s0 = json.load(open(sys.argv[2]))
s1 = json.load(open(sys.argv[4]))
try:
    tx = json.loads([l for l in open(sys.argv[7]) if l.startswith("{")][-1])
except Exception:
    tx = {}
t = s0.get("transport", {})
# Where the sender's time went (ms) and the agents' own scheduling: written to the detail log.
def ms(k):
    v = t.get(k)
    return "-" if v is None else f"{v / 1000:.0f}"
det = ("sending/cwnd/peer-window/send-window/drained/idle ms "
       + "/".join(ms("tx_us_" + k) for k in ["sending", "cwnd_limited", "peer_window_limited",
                                             "send_window_limited", "drained", "idle"])
       + " stalled before probe/timeout ms " + ms("tx_us_stalled_before_probe") + "/"
       + ms("tx_us_stalled_before_timeout") + f" cwnd mean {t.get('tx_cwnd_mean', '-')}"
       + f" | sender preemptions {s0.get('preempted', '-')} sleeps {s0.get('sleeps', '-')}"
       + f" | receiver preemptions {s1.get('preempted', '-')} sleeps {s1.get('sleeps', '-')}"
       + f" dup {s1.get('transport', {}).get('packets_duplicate', '-')}"
       + f" rx {s1.get('transport', {}).get('packets_rx', '-')} acks-sent? tx {s1.get('transport', {}).get('packets_tx', '-')}"
       + f" | receiving client s {r.get('secs', '-')} sending client s {tx.get('secs', '-')}")
with open(sys.argv[5], "a") as f:
    f.write(sys.argv[6] + " " + det + "\n")
n = int(sys.argv[3])
ok = r.get("received") == n
mbs = n * 1048576 / r["secs"] / 1e6 if ok and r.get("secs") else float("nan")
keys = ["packets_resent", "packets_resent_spurious", "congestion_undos", "packets_resent_tail_probe",
        "packets_resent_timeout", "packets_resent_fast", "loss_episodes_random",
        "loss_episodes_congestion"]
print(mbs, *[t.get(k, "-") for k in keys])
EOF
}

: >"$dir/results"
for run in $(seq 1 "$RUNS"); do
    for cell in $CELLS; do
        start_fwd "$cell" "$run"
        read -r mbs re <<<"$(iperf_cell)"
        f="$(stop_fwd)"
        echo "$run $cell iperf3 $mbs retrans=$re | fwd: $f" | tee -a "$dir/log" >&2
        echo "$run $cell iperf3 $mbs $re" >>"$dir/results"
        fps="$(sed -n 's/.*frames_per_s \([0-9.]*\).*/\1/p' <<<"$f")"
        echo "$run $cell fwd_fps ${fps:-nan}" >>"$dir/results"
        tags="new"
        [ -n "$old" ] && { if [ $((run % 2)) = 1 ]; then tags="new old"; else tags="old new"; fi; }
        for t in $TRANSPORTS; do
            for tag in $tags; do
                b="$bin"; [ "$tag" = old ] && b="$old"
                start_fwd "$cell" "$run"
                out="$(wyvern_cell "$b" "$tag" "$t")"
                f="$(stop_fwd)"
                echo "$run $cell $t-$tag $out | fwd: $f | $(tail -n1 "$dir/detail") |$(tail -n1 "$dir/sched" 2>/dev/null | cut -d' ' -f2-)" | tee -a "$dir/log" >&2
                echo "$run $cell $t-$tag $out" >>"$dir/results"
            done
        done
    done
done

python3 - "$dir/results" "$CELLS" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
cells = sys.argv[2].split()
def med(xs):
    xs = [float(x) for x in xs if x not in ("-", "nan", "")]
    return statistics.median(xs) if xs else float("nan")
kinds = sorted({r[2] for r in rows if r[2].startswith(("udp-", "dpdk-"))},
               key=lambda k: (k.split("-")[0] != "udp", k.split("-")[1] != "old"))
print()
print("| loss/reorder/dup/corrupt % | forwarder frames/s (iperf3 cell) | iperf3 MB/s (retrans) | "
      + " | ".join(f"{k} MB/s (× iperf3) | {k} resent / spurious / undos / TLP / RTO / RACK / random / cut" for k in kinds) + " |")
print("|---|---|---|" + "---|---|" * len(kinds))
for c in cells:
    ip = [r for r in rows if r[1] == c and r[2] == "iperf3"]
    ipm = med(r[3] for r in ip)
    line = f"| {c} | {med(r[3] for r in rows if r[1] == c and r[2] == 'fwd_fps'):.0f} | {ipm:.1f} ({med(r[4] for r in ip):.0f}) |"
    for k in kinds:
        w = [r for r in rows if r[1] == c and r[2] == k]
        m = med(r[3] for r in w)
        counters = " / ".join(
            "-" if all(r[i] == "-" for r in w) else f"{med(r[i] for r in w):.0f}" for i in range(4, 12))
        line += f" {m:.1f} ({m / ipm:.2f}×) | {counters} |"
    print(line)
print(f"\nmedians of {max(int(r[0]) for r in rows)} runs; wyvern: 1 MiB messages, counters of the sending agent")
EOF
