#!/usr/bin/env bash
# Usage: bench/dpdk_veth.sh [PROFILE_DIR]      (default: target/release; e.g. target/debug)
#
# The dpdk transport between two "nodes" on this machine, against its peers, measured in the
# same run. scripts/testbed.sh makes two network namespaces (wyvb0, wyvb1) joined by one veth
# pair (veth0 in each, 10.77.0.1 and 10.77.0.2). Each of RUNS runs (default 5) measures, in
# this order (the dpdk/tcp order alternates between runs):
#   (a) frame rate at full-size frames over that veth pair with net_af_packet:
#       - peer: dpdk-testpmd --forward-mode=txonly (1514 B frames) in wyvb0 against
#         dpdk-testpmd --forward-mode=rxonly in wyvb1, TESTPMD_SECS seconds; the figure is the
#         median of rxonly's per-second Rx-pps once it is steady (the first 2 s dropped);
#       - peer, the issue's reference: dpdk-testpmd --forward-mode=io (--port-topology=loop:
#         what comes in on veth0 goes back out of it) in wyvb1, fed by txonly in wyvb0; the
#         figure is the median of io's per-second Tx-pps, steady;
#       - wyvern: one sender streams BULK_MIB MiB in 1 MiB messages from wyvb0 to wyvb1 over the
#         dpdk transport; frames/s = frames the receiving agent took from its port
#         (`frames_rx`) / the receiver's time; every data frame is full size (1514 B).
#   (b) small messages, dpdk transport against the tcp transport over the same veth pair
#       (kernel TCP between 10.77.0.1 and 10.77.0.2): RATE_COUNT messages of RATE_SIZE bytes
#       from one sender to one receiver (msgs/s), and PING_COUNT 8 B ping-pongs (half round
#       trip p50 and p99); and BULK_MIB MiB in 1 MiB messages (MB/s) on each.
#   (c) the same as (b) on the dpdk transport with jumbo frames (`dpdk-jumbo`): --dpdk-mtu
#       JUMBO_MTU (default 9000; 0 = skip), net_af_packet with framesz=16384,blocksz=16384.
#       The veth pair's MTU is JUMBO_MTU for the whole run (testpmd's 1514 B frames and the
#       1500-MTU dpdk agents do not care; kernel TCP over veth sends 64 KiB GSO segments
#       whatever the MTU).
# Prints its configuration (core layout, build, load), every run's figures, the medians and
# the ratios (wyvern ÷ peer). No agent runs while testpmd does (both would read veth0).
#
# Core layout (2 cores): agent 0 and testpmd txonly's forwarding lcore on CPU 0, agent 1 and
# testpmd rxonly's on CPU 1 (EAL --lcores and the agents' --cores); clients unpinned. Agents
# use the adaptive idle policy, no hugepages (normal pages for pools and EAL memory).
# testpmd: --no-pci, --vdev only, its own --file-prefix. Needs root, dpdk-testpmd (Debian:
# dpdk), python3, and binaries built with --features dpdk:
#   cargo build --release --features dpdk --bins && RUNS=5 bench/dpdk_veth.sh
# Every process is wrapped in `timeout`; the namespaces are removed on exit (also on failure
# or Ctrl-C). KEEP_TMP=1 keeps the scratch directory (agent logs per transport and run, testpmd
# output); AGENT_LOG sets the agents' RUST_LOG (default warn; e.g. info,wyvern::transport::datagram=debug).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release}"
RUNS="${RUNS:-5}"
TESTPMD_SECS="${TESTPMD_SECS:-6}"
BULK_MIB="${BULK_MIB:-1024}"
RATE_COUNT="${RATE_COUNT:-2000000}"
RATE_SIZE="${RATE_SIZE:-64}"
PING_COUNT="${PING_COUNT:-2000}"
JUMBO_MTU="${JUMBO_MTU:-9000}"
case "$JUMBO_MTU" in ''|*[!0-9]*) echo "dpdk_veth: JUMBO_MTU must be a number" >&2; exit 2 ;; esac
wyvern="$bin/wyvern"
peer="$bin/wyvern-peer"
for b in "$wyvern" "$peer"; do
    [ -x "$b" ] || { echo "dpdk_veth: no $b (cargo build --release --features dpdk --bins)" >&2; exit 1; }
done
command -v dpdk-testpmd >/dev/null || { echo "dpdk_veth: no dpdk-testpmd (apt-get install dpdk)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "dpdk_veth: needs python3" >&2; exit 1; }
export TESTBED_PREFIX=wyvb TESTBED_HUGEPAGES=skip
if [ "$JUMBO_MTU" -gt 0 ]; then export TESTBED_MTU="$JUMBO_MTU"; fi
dir="$(mktemp -d "${TMPDIR:-/tmp}/wyvern-dpdk-bench.XXXXXX")"
pids=()
agent_pid=()
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
HZ="$(getconf CLK_TCK)"
cpu_busy() { awk -v hz="$HZ" '/^cpu / {print ($2+$3+$4)/hz, $9/hz}' /proc/stat; }
# `times` must run in this shell (a $(...) subshell would report its own, empty, children).
my_cpu() { times > "$dir/times"; awk '{for (i=1;i<=NF;i++) {split($i,t,/[ms]/); s+=t[1]*60+t[2]}} END {print s}' "$dir/times"; }
# CPU seconds of every process alive now (pid comm seconds), to name the other processes that
# ran meanwhile (those alive at both ends: others' builds, kernel threads moving our packets).
cpu_by_process() {
    python3 - "$HZ" <<'PY'
import os, sys
hz = int(sys.argv[1])
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        st = open(f"/proc/{pid}/stat").read()
    except OSError:
        continue
    comm = st[st.index("(") + 1:st.rindex(")")].replace(" ", "_")
    f = st[st.rindex(")") + 2:].split()
    print(pid, comm, (int(f[11]) + int(f[12])) / hz)
PY
}

# ------------------------------------------------------------------ testpmd
# testpmd in wyvb1 (mode arguments: the rest), fed by txonly (1514 B frames) from wyvb0 for
# TESTPMD_SECS seconds; prints the median of wyvb1's per-second COUNTER (Rx-pps or Tx-pps)
# once steady (from the third busy second on).
testpmd_pair() { # run tag counter mode-args...
    local run="$1" tag="$2" counter="$3"
    shift 3
    ip netns exec wyvb1 timeout $((TESTPMD_SECS + 15)) dpdk-testpmd $EAL_COMMON --lcores='0@1,1@1' \
        --file-prefix="wyvb-$tag$run" --vdev=net_af_packet0,iface=veth0 -- \
        "$@" --auto-start --stats-period=1 --nb-cores=1 --total-num-mbufs=8192 \
        </dev/null >"$dir/$tag$run.txt" 2>&1 &
    local peer_pid=$!
    pids+=("$peer_pid")
    sleep 2
    ip netns exec wyvb0 timeout "$TESTPMD_SECS" dpdk-testpmd $EAL_COMMON --lcores='0@0,1@0' \
        --file-prefix="wyvb-${tag}tx$run" --vdev=net_af_packet0,iface=veth0 -- \
        --forward-mode=txonly --txpkts=1514 --auto-start --stats-period=1 --nb-cores=1 \
        --total-num-mbufs=8192 </dev/null >"$dir/${tag}tx$run.txt" 2>&1 || true
    sleep 1
    kill -INT "$peer_pid" 2>/dev/null || true
    wait "$peer_pid" 2>/dev/null || true
    python3 - "$dir/$tag$run.txt" "$counter" <<'EOF'
import re, statistics, sys
v = [int(m.group(1)) for m in re.finditer(sys.argv[2] + r":\s+(\d+)", open(sys.argv[1]).read())]
v = [x for x in v if x > 0][2:]   # from the third busy second on
print(int(statistics.median(v)) if v else 0)
EOF
}
# txonly -> rxonly: the rate the receiving testpmd takes frames from veth0.
testpmd_rate() { testpmd_pair "$1" rx Rx-pps --forward-mode=rxonly; }
# The issue's reference: io-forwarding in wyvb1 (its one port looped onto itself: every frame
# received on veth0 is sent back out of it), fed by txonly; its forwarding (Tx-pps) rate.
testpmd_io_rate() { testpmd_pair "$1" io Tx-pps --forward-mode=io --port-topology=loop; }

# ------------------------------------------------------------------ agents
start_agents() { # transport run
    local t="$1" run="$2" i extra
    for i in 0 1; do
        if [ "$t" = dpdk ]; then
            extra=(--nodes 127.0.0.1:0,127.0.0.1:0 --connect all --transport dpdk --dpdk-eal-args "$EAL_COMMON \
                --vdev=net_af_packet0,iface=veth0 --file-prefix=wyvb-agent$i --lcores=0@$i")
        elif [ "$t" = dpdk-jumbo ]; then
            extra=(--nodes 127.0.0.1:0,127.0.0.1:0 --connect all --transport dpdk --dpdk-mtu "$JUMBO_MTU" \
                --dpdk-eal-args "$EAL_COMMON --vdev=net_af_packet0,iface=veth0,framesz=16384,blocksz=16384 \
                --file-prefix=wyvb-agent$i --lcores=0@$i")
        else
            extra=(--nodes 10.77.0.1:7470,10.77.0.2:7470 --transport tcp)
        fi
        RUST_LOG="${AGENT_LOG:-warn}" ip netns exec "wyvb$i" timeout 600 "$wyvern" agent --node-id "$i" \
            --socket "$dir/agent$i.sock" --no-hugepages --idle adaptive --cores "$i" \
            --job wyvern-dpdk-bench "${extra[@]}" >"$dir/ready$t$i" 2>"$dir/agent$t$i-run$run.log" &
        pids+=($!)
        agent_pid[$i]=$!
    done
    for _ in $(seq 100); do
        if "$wyvern" stat --json --socket "$dir/agent0.sock" 2>/dev/null | grep -q '"state": "up"' \
            && "$wyvern" stat --json --socket "$dir/agent1.sock" 2>/dev/null | grep -q '"state": "up"'; then
            return 0
        fi
        sleep 0.1
    done
    echo "dpdk_veth: the $t agents did not connect; logs:" >&2
    cat "$dir"/agent"$t"*-run"$run".log >&2
    exit 1
}
stop_agents() {
    kill "${agent_pid[0]}" "${agent_pid[1]}" 2>/dev/null || true
    wait "${agent_pid[0]}" "${agent_pid[1]}" 2>/dev/null || true
    rm -f "$dir/agent0.sock" "$dir/agent1.sock"
}
frames_rx() { "$wyvern" stat --json --socket "$dir/agent1.sock" | python3 -c \
    'import json,sys; print(json.load(sys.stdin)["transport"].get("frames_rx", 0))'; }
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

stream() { # size count -> prints the receiver's JSON line
    local size="$1" count="$2" ep=$((RANDOM % 1000 + 100))
    ip netns exec wyvb1 timeout 120 "$peer" --socket "$dir/agent1.sock" --ep "$ep" --raw \
        --sizes "$size" recv --count "$count" >"$dir/rx.json" &
    local rx=$!
    sleep 0.3
    ip netns exec wyvb0 timeout 120 "$peer" --socket "$dir/agent0.sock" --raw --sizes "$size" \
        send --to "1:$ep" --count "$count" >"$dir/tx.json"
    wait "$rx"
    local line
    line="$(grep '^{' "$dir/rx.json" | tail -n1)"
    [ "$(field "$line" received)" = "$count" ] || { echo "dpdk_veth: $line" >&2; exit 1; }
    printf '%s\n' "$line"
}
pingpong() { # prints "p50 p99" of the half round trip, µs
    local ep=$((RANDOM % 1000 + 1100))
    ip netns exec wyvb1 timeout 120 "$peer" --socket "$dir/agent1.sock" --ep "$ep" --sizes 8 \
        echo --count $((PING_COUNT + 100)) >/dev/null &
    local e=$!
    sleep 0.3
    local line
    line="$(ip netns exec wyvb0 timeout 120 "$peer" --socket "$dir/agent0.sock" --sizes 8 \
        ping --to "1:$ep" --count "$PING_COUNT" --warmup 100 | grep '^{' | tail -n1)"
    wait "$e"
    python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print(j["rtt_p50_us"]/2, j["rtt_p99_us"]/2)' "$line"
}

measure() { # transport run -> appends "run transport key value" lines to $dir/results
    local t="$1" run="$2" f0 f1 line secs
    start_agents "$t" "$run"
    [ "$t" = tcp ] || f0="$(frames_rx)"
    line="$(stream 1048576 "$BULK_MIB")"
    secs="$(field "$line" secs)"
    if [ "$t" != tcp ]; then
        f1="$(frames_rx)"
        echo "$run $t frames_per_s $(python3 -c "print(($f1 - $f0) / $secs)")" >>"$dir/results"
    fi
    echo "$run $t bulk_mb_per_s $(python3 -c "print($BULK_MIB * 1048576 / $secs / 1e6)")" >>"$dir/results"
    line="$(stream "$RATE_SIZE" "$RATE_COUNT")"
    echo "$run $t msgs_per_s $(python3 -c "print($RATE_COUNT / $(field "$line" secs))")" >>"$dir/results"
    read -r p50 p99 <<<"$(pingpong)"
    echo "$run $t lat_p50_us $p50" >>"$dir/results"
    echo "$run $t lat_p99_us $p99" >>"$dir/results"
    stop_agents
}

# ------------------------------------------------------------------ configuration
commit="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty')"
echo "== bench/dpdk_veth.sh: dpdk transport vs testpmd and vs the tcp transport, one veth pair"
echo "date $(date -u +%FT%TZ), commit $commit, binaries from $bin, $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
echo "kernel $(uname -r), DPDK $(pkg-config --modversion libdpdk 2>/dev/null || echo '?'), load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "core layout: agent 0 --cores 0 (EAL --lcores=0@0), agent 1 --cores 1 (0@1); testpmd txonly lcores 0,1@CPU0, rxonly 0,1@CPU1; clients unpinned"
echo "agents: --idle adaptive --no-hugepages; EAL $EAL_COMMON; tcp agents on 10.77.0.1/2:7470 over the same veth"
echo "RUNS=$RUNS TESTPMD_SECS=$TESTPMD_SECS BULK_MIB=$BULK_MIB RATE_COUNT=$RATE_COUNT RATE_SIZE=$RATE_SIZE PING_COUNT=$PING_COUNT JUMBO_MTU=$JUMBO_MTU (veth MTU ${TESTBED_MTU:-1500})"
echo "busiest other processes at start:"
ps -eo pcpu,comm --sort=-pcpu | sed -n '2,5p' | sed 's/^/    /'
t0="$(date +%s.%N)"
read -r busy0 steal0 <<<"$(cpu_busy)"
my_cpu >"$dir/my0"
my0="$(cat "$dir/my0")"
cpu_by_process >"$dir/cpu0"

: >"$dir/results"
for run in $(seq 1 "$RUNS"); do
    echo "$run testpmd frames_per_s $(testpmd_rate "$run")" >>"$dir/results"
    echo "$run testpmd-io frames_per_s $(testpmd_io_rate "$run")" >>"$dir/results"
    if [ $((run % 2)) = 1 ]; then order="dpdk tcp"; else order="tcp dpdk"; fi
    if [ "$JUMBO_MTU" -gt 0 ]; then
        if [ $((run % 2)) = 1 ]; then order="$order dpdk-jumbo"; else order="dpdk-jumbo $order"; fi
    fi
    for t in $order; do measure "$t" "$run"; done
    grep "^$run " "$dir/results" | sed 's/^/  run /'
done

t1="$(date +%s.%N)"
read -r busy1 steal1 <<<"$(cpu_busy)"
my_cpu >"$dir/my1"
my1="$(cat "$dir/my1")"
cpu_by_process >"$dir/cpu1"
python3 - "$dir/results" "$RUNS" <<EOF
import collections, statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
by = collections.defaultdict(list)
for run, who, key, val in rows:
    by[(who, key)].append(float(val))
med = {k: statistics.median(v) for k, v in by.items()}
def fmt(x): return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"
print(f"\nmedians of {sys.argv[2]} runs (every run above):")
print("| measurement | wyvern dpdk | peer | peer figure | ratio (dpdk ÷ peer) |")
print("|---|---|---|---|---|")
d, p = med[("dpdk", "frames_per_s")], med[("testpmd", "frames_per_s")]
print(f"| frames/s, 1514 B frames, net_af_packet | {fmt(d)} | testpmd txonly→rxonly | {fmt(p)} | {d/p:.2f}× |")
io = med.get(("testpmd-io", "frames_per_s"), 0)
if io:
    print(f"| frames/s, 1514 B frames, net_af_packet | {fmt(d)} | testpmd io-forwarding (fed by txonly) | {fmt(io)} | {d/io:.2f}× |")
rows = [("msgs_per_s", "messages/s, ${RATE_SIZE} B, 1 → 1", "higher"),
        ("bulk_mb_per_s", "MB/s, 1 MiB messages", "higher"),
        ("lat_p50_us", "8 B half round trip p50, µs", "lower"),
        ("lat_p99_us", "8 B half round trip p99, µs", "lower")]
for variant, label in [("dpdk", "MTU 1500"), ("dpdk-jumbo", "MTU $JUMBO_MTU")]:
    if (variant, "msgs_per_s") not in med:
        continue
    for key, name, better in rows:
        d, t = med[(variant, key)], med[("tcp", key)]
        print(f"| {name}, dpdk {label} ({better} is better) | {fmt(d)} | wyvern tcp transport | {fmt(t)} | {d/t:.2f}× |")
w = ($t1 - $t0) * $(nproc)
f = max(0.0, ($busy1 - $busy0) - ($my1 - $my0))
print(f"\nnoise: other processes used {100*f/w:.0f}% of the machine's CPU time during the runs, hypervisor steal {100*($steal1-$steal0)/w:.1f}%; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)")
def snap(path):
    out = {}
    for line in open(path):
        pid, comm, sec = line.split()
        out[pid] = (comm, float(sec))
    return out
a, b = snap("$dir/cpu0"), snap("$dir/cpu1")
used = collections.Counter()
for pid, (comm, sec) in b.items():
    if pid in a and a[pid][0] == comm:
        used[comm] += sec - a[pid][1]
top = [(c, s) for c, s in used.most_common(6) if s >= 0.05 * w / 100]
print("of which (processes alive at both ends, CPU seconds over %.0f s):" % ($t1 - $t0),
      ", ".join(f"{c} {s:.1f}" for c, s in top) or "none above 0.05 %")
EOF
