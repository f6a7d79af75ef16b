#!/usr/bin/env bash
# Usage: bench/dpdk_memif.sh [BIN_DIR]     (BIN_DIR default target/release)
#
# The dpdk transport on a memif pair (net_memif: DPDK's shared-memory packet interface,
# no kernel on the data path) against its peers, in the same run:
#   (a) frames: dpdk-testpmd --forward-mode=txonly (memif client) -> rxonly (memif server),
#       64 B and 1500 B frames (median steady Rx-pps over TESTPMD_SECS s), against the
#       frames/s the receiving agent takes from its port while 1 MiB messages stream
#       (every data frame 1514 B, so compared with testpmd's 1500 B row);
#   (b') the same with jumbo frames (`dpdk-jumbo`): --dpdk-mtu JUMBO_MTU (default 9000; 0 =
#       skip) and bsize=JUMBO_MTU+14 rounded up to 1 KiB on both --vdev (memif carries a
#       frame in one buffer only; see docs/dpdk.md);
#   (b) the dpdk transport on a memif pair (agent 0 the memif server, agent 1 the client)
#       and (c) the tcp transport on loopback (127.0.0.1), alternating which goes first,
#       each: 1 MiB messages (MB/s), 64 B messages 1 -> 1 and 4 -> 1 (messages/s, the
#       receiver's count over its time), 8 B one-way latency (half the ping-pong round
#       trip; p50, p99), and per stream the CPU time of every process (both agents' user +
#       system time from /proc, the clients' from the shell's `times`) divided by the
#       messages delivered.
#   (d) with EXTBUF_COMPARE=1: the dpdk rows again with `--dpdk-extbuf off` (`dpdk-copy`,
#       `dpdk-jumbo-copy`: every packet copied into its mbuf) next to `--dpdk-extbuf auto`
#       (`dpdk`, `dpdk-jumbo`: a large message's packets attached to its pool block; on
#       memif the driver's copy into its ring is then the only one), in the same
#       alternation, and a table of the two against each other.
# RUNS (default 3) runs of everything; prints each run, then the medians with the peer's
# figure and the ratio. Every process is wrapped in `timeout`; the scratch directory is
# removed on exit (KEEP_TMP=1 keeps it: agent logs per transport and run, testpmd output;
# AGENT_LOG sets the agents' RUST_LOG, default warn; EAL_EXTRA is added to every EAL's
# arguments, e.g. --log-level=pmd.net.memif:debug).
#
# Core layout (2 cores): agent 0 (and its EAL lcore) on CPU 0, agent 1 on CPU 1 (--cores,
# EAL --lcores=0@I); testpmd txonly's lcores on CPU 0, rxonly's on CPU 1; clients unpinned;
# the agents' idle policy IDLE (default adaptive: spin a while, then sleep; on memif, which
# has no descriptor to wait on, at most 1 ms at a time). No agent runs while testpmd does.
# Every DPDK process: --no-pci, --vdev only, its own --file-prefix, --no-huge (memif needs
# no hugepages), the socket in the abstract namespace (memif's default), no namespaces.
# Needs root only for nothing in particular; dpdk-testpmd (Debian: dpdk), python3, and:
#   cargo build --release --features dpdk --bins && bench/dpdk_memif.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release}"
RUNS="${RUNS:-3}"
TESTPMD_SECS="${TESTPMD_SECS:-6}"
BULK_MIB="${BULK_MIB:-1024}"
RATE_COUNT="${RATE_COUNT:-2000000}"
PING_COUNT="${PING_COUNT:-5000}"
IDLE="${IDLE:-adaptive}"
JUMBO_MTU="${JUMBO_MTU:-9000}"
EXTBUF_COMPARE="${EXTBUF_COMPARE:-0}"
case "$JUMBO_MTU" in ''|*[!0-9]*) echo "dpdk_memif: JUMBO_MTU must be a number" >&2; exit 2 ;; esac
# memif's buffers must hold a whole frame (docs/dpdk.md): bsize = MTU + 14, rounded up to 1 KiB.
JUMBO_BSIZE=$(( (JUMBO_MTU + 14 + 1023) / 1024 * 1024 ))
MEMIF_VDEV_EXTRA="${MEMIF_VDEV_EXTRA:-}"
wyvern="$bin/wyvern"
peer="$bin/wyvern-peer"
for b in "$wyvern" "$peer"; do
    [ -x "$b" ] || { echo "dpdk_memif: no $b (cargo build --release --features dpdk --bins)" >&2; exit 1; }
done
command -v dpdk-testpmd >/dev/null || { echo "dpdk_memif: no dpdk-testpmd (apt-get install dpdk)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "dpdk_memif: needs python3" >&2; exit 1; }
dir="$(mktemp -d "${TMPDIR:-/tmp}/wyvern-memif-bench.XXXXXX")"
tag="wyvmb$$"
pids=()
agent_pid=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "${KEEP_TMP:-0}" = 1 ]; then echo "scratch kept in $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

EAL_COMMON="--no-pci --no-huge --no-telemetry --log-level=lib.eal:warning${EAL_EXTRA:+ $EAL_EXTRA}"
HZ="$(getconf CLK_TCK)"
cpu_busy() { awk -v hz="$HZ" '/^cpu / {print ($2+$3+$4)/hz, $9/hz}' /proc/stat; }
# User + system seconds of this shell's reaped children (`times` must run in this shell).
my_cpu() { times > "$dir/times"; awk 'NR==2 {for (i=1;i<=NF;i++) {split($i,t,/[ms]/); s+=t[1]*60+t[2]}} END {print s}' "$dir/times"; }
# User + system seconds of the running agents (each the child of its `timeout`).
agents_cpu() {
    python3 - "$HZ" "${agent_pid[@]}" <<'PY'
import sys
hz, s = int(sys.argv[1]), 0
def ticks(pid):
    st = open(f"/proc/{pid}/stat").read()
    f = st[st.rindex(")") + 2:].split()
    return int(f[11]) + int(f[12])
for pid in sys.argv[2:]:
    s += ticks(pid)
    for kid in open(f"/proc/{pid}/task/{pid}/children").read().split():
        s += ticks(kid)
print(s / hz)
PY
}

# ------------------------------------------------------------------ testpmd
# rxonly as memif server on CPU 1, fed by txonly (memif client, SIZE-byte frames) on CPU 0
# for TESTPMD_SECS s; prints the median of the receiver's per-second Rx-pps once steady.
testpmd_rate() { # run size
    local run="$1" size="$2" sock="$dir/tp$1-$2.sock"
    # (EAL start-up zeroes its -m memory: small, so that a busy machine does not eat the
    # sender's TESTPMD_SECS before it sends; it gets 4 s more for its start anyway.)
    timeout $((TESTPMD_SECS + 20)) dpdk-testpmd $EAL_COMMON -m 128 --lcores='0@1,1@1' \
        --file-prefix="$tag-rx$run-$size" --vdev="net_memif0,role=server,socket=$sock" -- \
        --forward-mode=rxonly --auto-start --stats-period=1 --nb-cores=1 --total-num-mbufs=8192 \
        </dev/null >"$dir/rx$run-$size.txt" 2>&1 &
    local rx=$!
    pids+=("$rx")
    sleep 2
    timeout $((TESTPMD_SECS + 4)) dpdk-testpmd $EAL_COMMON -m 128 --lcores='0@0,1@0' \
        --file-prefix="$tag-tx$run-$size" --vdev="net_memif0,role=client,socket=$sock" -- \
        --forward-mode=txonly --txpkts="$size" --auto-start --stats-period=1 --nb-cores=1 \
        --total-num-mbufs=8192 </dev/null >"$dir/tx$run-$size.txt" 2>&1 || true
    sleep 1
    kill -INT "$rx" 2>/dev/null || true
    wait "$rx" 2>/dev/null || true
    python3 - "$dir/rx$run-$size.txt" <<'EOF'
import re, statistics, sys
v = [int(m.group(1)) for m in re.finditer(r"Rx-pps:\s+(\d+)", open(sys.argv[1]).read())]
v = [x for x in v if x > 0][2:]   # from the third busy second on
print(int(statistics.median(v)) if v else 0)
EOF
}

# ------------------------------------------------------------------ agents
start_agents() { # transport run
    local t="$1" run="$2" i extra role
    local p0=$((20000 + RANDOM % 20000))
    for i in 0 1; do
        role=server
        [ "$i" = 1 ] && role=client
        local xb=auto
        case "$t" in *-copy) xb=off ;; esac
        if [ "$t" = dpdk ] || [ "$t" = dpdk-copy ]; then
            extra=(--nodes 127.0.0.1:0,127.0.0.1:0 --connect all --transport dpdk --dpdk-extbuf "$xb" --dpdk-eal-args "$EAL_COMMON -m 128 \
                --vdev=net_memif0,role=$role,socket=$dir/memif$run.sock$MEMIF_VDEV_EXTRA \
                --file-prefix=$tag-agent$i --lcores=0@$i")
        elif [ "$t" = dpdk-jumbo ] || [ "$t" = dpdk-jumbo-copy ]; then
            extra=(--nodes 127.0.0.1:0,127.0.0.1:0 --connect all --transport dpdk --dpdk-extbuf "$xb" --dpdk-mtu "$JUMBO_MTU" \
                --dpdk-eal-args "$EAL_COMMON -m 256 \
                --vdev=net_memif0,role=$role,socket=$dir/memifj$run.sock,bsize=$JUMBO_BSIZE$MEMIF_VDEV_EXTRA \
                --file-prefix=$tag-agent$i --lcores=0@$i")
        else
            extra=(--nodes "127.0.0.1:$p0,127.0.0.1:$((p0 + 1))" --connect all --transport tcp)
        fi
        RUST_LOG="${AGENT_LOG:-warn}" timeout 900 "$wyvern" agent --node-id "$i" \
            --socket "$dir/agent$i.sock" --no-hugepages --idle "$IDLE" --cores "$i" \
            --job "$tag" "${extra[@]}" >"$dir/ready$t$i" 2>"$dir/agent$t$i-run$run.log" &
        pids+=($!)
        agent_pid[$i]=$!
    done
    for _ in $(seq 200); do
        if "$wyvern" stat --json --socket "$dir/agent0.sock" 2>/dev/null | grep -q '"state": "up"' \
            && "$wyvern" stat --json --socket "$dir/agent1.sock" 2>/dev/null | grep -q '"state": "up"'; then
            return 0
        fi
        sleep 0.1
    done
    echo "dpdk_memif: the $t agents did not connect; logs:" >&2
    cat "$dir"/agent"$t"*-run"$run".log >&2
    exit 1
}
stop_agents() {
    kill "${agent_pid[0]}" "${agent_pid[1]}" 2>/dev/null || true
    # An agent that does not exit within 10 s is killed (seen once: a memif agent deadlocked
    # in glibc's exit, its main thread flushing stdio while DPDK's interrupt thread logged
    # "EAL: Error: Invalid memory" through syslog).
    local i k
    for _ in $(seq 100); do
        kill -0 "${agent_pid[0]}" 2>/dev/null || kill -0 "${agent_pid[1]}" 2>/dev/null || break
        sleep 0.1
    done
    for i in 0 1; do
        if kill -0 "${agent_pid[$i]}" 2>/dev/null; then
            echo "dpdk_memif: agent $i did not exit within 10 s of SIGTERM: killed" >&2
            for k in $(cat "/proc/${agent_pid[$i]}/task/${agent_pid[$i]}/children" 2>/dev/null); do
                kill -KILL "$k" 2>/dev/null || true
            done
        fi
    done
    wait "${agent_pid[0]}" "${agent_pid[1]}" 2>/dev/null || true
    rm -f "$dir/agent0.sock" "$dir/agent1.sock"
}
frames_rx() { "$wyvern" stat --json --socket "$dir/agent1.sock" | python3 -c \
    'import json,sys; print(json.load(sys.stdin)["transport"].get("frames_rx", 0))'; }
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

# SENDERS senders on node 0 (COUNT messages of SIZE bytes in all) -> one receiver on node
# 1. Leaves the receiver's JSON line in $dir/line and the CPU seconds of every process
# (agents and clients) during the stream in $dir/cpu.
stream() { # size count senders
    local size="$1" count="$2" senders="$3" ep=$((RANDOM % 1000 + 100)) k tx=()
    local c0 a0 c1 a1
    my_cpu >"$dir/c0"; c0="$(cat "$dir/c0")"; a0="$(agents_cpu)"
    timeout 300 "$peer" --socket "$dir/agent1.sock" --ep "$ep" --raw --sizes "$size" \
        recv --count "$count" >"$dir/rx.json" &
    local rx=$!
    sleep 0.3
    for ((k = 0; k < senders; k++)); do
        timeout 300 "$peer" --socket "$dir/agent0.sock" --raw --sizes "$size" \
            send --to "1:$ep" --count $((count / senders)) >"$dir/tx$k.json" &
        tx+=($!)
    done
    for k in "${tx[@]}"; do wait "$k"; done
    wait "$rx"
    my_cpu >"$dir/c1"; c1="$(cat "$dir/c1")"; a1="$(agents_cpu)"
    python3 -c "print($c1 - $c0 + $a1 - $a0)" >"$dir/cpu"
    local line
    line="$(grep '^{' "$dir/rx.json" | tail -n1)"
    [ "$(field "$line" received)" = "$count" ] || { echo "dpdk_memif: $line" >&2; exit 1; }
    printf '%s\n' "$line" >"$dir/line"
}
pingpong() { # prints "p50 p99" of the half round trip, µs
    local ep=$((RANDOM % 1000 + 1100))
    timeout 120 "$peer" --socket "$dir/agent1.sock" --ep "$ep" --sizes 8 \
        echo --count $((PING_COUNT + 100)) >/dev/null &
    local e=$!
    sleep 0.3
    local line
    line="$(timeout 120 "$peer" --socket "$dir/agent0.sock" --sizes 8 \
        ping --to "1:$ep" --count "$PING_COUNT" --warmup 100 | grep '^{' | tail -n1)"
    wait "$e"
    python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print(j["rtt_p50_us"]/2, j["rtt_p99_us"]/2)' "$line"
}

res() { echo "$1 $2 $3 $4" >>"$dir/results"; }
measure() { # transport run -> appends "run transport key value" lines to $dir/results
    local t="$1" run="$2" f0 f1 secs cpu
    start_agents "$t" "$run"
    [ "$t" = tcp ] || f0="$(frames_rx)"
    stream 1048576 "$BULK_MIB" 1
    secs="$(field "$(cat "$dir/line")" secs)"; cpu="$(cat "$dir/cpu")"
    if [ "$t" != tcp ]; then
        f1="$(frames_rx)"
        res "$run" "$t" frames_per_s "$(python3 -c "print(($f1 - $f0) / $secs)")"
    fi
    res "$run" "$t" bulk_mb_per_s "$(python3 -c "print($BULK_MIB * 1048576 / $secs / 1e6)")"
    res "$run" "$t" bulk_cpu_us_per_msg "$(python3 -c "print($cpu / $BULK_MIB * 1e6)")"
    for n in 1 4; do
        stream 64 "$RATE_COUNT" "$n"
        secs="$(field "$(cat "$dir/line")" secs)"; cpu="$(cat "$dir/cpu")"
        res "$run" "$t" "rate${n}_msgs_per_s" "$(python3 -c "print($RATE_COUNT / $secs)")"
        res "$run" "$t" "rate${n}_cpu_ns_per_msg" "$(python3 -c "print($cpu / $RATE_COUNT * 1e9)")"
    done
    read -r p50 p99 <<<"$(pingpong)"
    res "$run" "$t" lat_p50_us "$p50"
    res "$run" "$t" lat_p99_us "$p99"
    stop_agents
}

# ------------------------------------------------------------------ configuration
commit="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty')"
echo "== bench/dpdk_memif.sh: the dpdk transport on a memif pair vs testpmd and vs the tcp transport on loopback"
echo "date $(date -u +%FT%TZ), commit $commit, binaries from $bin, $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
echo "kernel $(uname -r), DPDK $(pkg-config --modversion libdpdk 2>/dev/null || echo '?'), load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "core layout: agent 0 --cores 0 (EAL --lcores=0@0, memif server), agent 1 --cores 1 (0@1, memif client); testpmd txonly (memif client) lcores 0,1@CPU0, rxonly (server) 0,1@CPU1; clients unpinned"
echo "agents: --idle $IDLE --no-hugepages; EAL $EAL_COMMON -m 128 --vdev=net_memif0,role=...,socket=...$MEMIF_VDEV_EXTRA; tcp agents on 127.0.0.1"
echo "dpdk-jumbo: --dpdk-mtu $JUMBO_MTU, bsize=$JUMBO_BSIZE, EAL -m 256"
echo "dpdk, dpdk-jumbo: --dpdk-extbuf auto; EXTBUF_COMPARE=$EXTBUF_COMPARE (1: dpdk-copy, dpdk-jumbo-copy with --dpdk-extbuf off too)"
echo "RUNS=$RUNS TESTPMD_SECS=$TESTPMD_SECS BULK_MIB=$BULK_MIB RATE_COUNT=$RATE_COUNT (64 B; 4 -> 1: RATE_COUNT/4 per sender) PING_COUNT=$PING_COUNT"
echo "busiest other processes at start:"
ps -eo pcpu,comm --sort=-pcpu | sed -n '2,5p' | sed 's/^/    /'
t0="$(date +%s.%N)"
read -r busy0 steal0 <<<"$(cpu_busy)"
my_cpu >"$dir/my0"
my0="$(cat "$dir/my0")"

: >"$dir/results"
for run in $(seq 1 "$RUNS"); do
    res "$run" testpmd64 frames_per_s "$(testpmd_rate "$run" 64)"
    res "$run" testpmd1500 frames_per_s "$(testpmd_rate "$run" 1500)"
    if [ $((run % 2)) = 1 ]; then order="dpdk tcp"; else order="tcp dpdk"; fi
    if [ "$EXTBUF_COMPARE" = 1 ]; then
        if [ $((run % 2)) = 1 ]; then order="$order dpdk-copy"; else order="dpdk-copy $order"; fi
    fi
    if [ "$JUMBO_MTU" -gt 0 ]; then
        if [ $((run % 2)) = 1 ]; then order="$order dpdk-jumbo"; else order="dpdk-jumbo $order"; fi
        if [ "$EXTBUF_COMPARE" = 1 ]; then
            if [ $((run % 2)) = 1 ]; then order="$order dpdk-jumbo-copy"; else order="dpdk-jumbo-copy $order"; fi
        fi
    fi
    for t in $order; do measure "$t" "$run"; done
    grep "^$run " "$dir/results" | sed 's/^/  run /'
done

t1="$(date +%s.%N)"
read -r busy1 steal1 <<<"$(cpu_busy)"
my_cpu >"$dir/my1"
my1="$(cat "$dir/my1")"
python3 - "$dir/results" "$RUNS" <<EOF
import collections, statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
by = collections.defaultdict(list)
for run, who, key, val in rows:
    by[(who, key)].append(float(val))
med = {k: statistics.median(v) for k, v in by.items()}
def fmt(x): return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"
def spread(k): v = by[k]; return f"{fmt(min(v))}–{fmt(max(v))}"
print(f"\nmedians of {sys.argv[2]} runs (min–max in brackets; every run above):")
print("| measurement | wyvern dpdk on memif | peer | peer figure | ratio (dpdk ÷ peer) |")
print("|---|---|---|---|---|")
d, p = med[("dpdk", "frames_per_s")], med[("testpmd1500", "frames_per_s")]
print(f"| frames/s, 1514 B data frames (1 MiB stream) | {fmt(d)} ({spread(('dpdk', 'frames_per_s'))}) | testpmd txonly → rxonly, 1500 B | {fmt(p)} ({spread(('testpmd1500', 'frames_per_s'))}) | {d/p:.2f}× |")
p64 = med[("testpmd64", "frames_per_s")]
print(f"| (reference) testpmd txonly → rxonly, 64 B frames/s | — | — | {fmt(p64)} ({spread(('testpmd64', 'frames_per_s'))}) | — |")
for key, name, better in [("frames_per_s", "frames/s (1 MiB stream)", "higher"),
                          ("rate1_msgs_per_s", "64 B messages/s, 1 → 1", "higher"),
                          ("rate1_cpu_ns_per_msg", "CPU ns per message, 64 B 1 → 1 (all processes)", "lower"),
                          ("rate4_msgs_per_s", "64 B messages/s, 4 → 1", "higher"),
                          ("rate4_cpu_ns_per_msg", "CPU ns per message, 64 B 4 → 1 (all processes)", "lower"),
                          ("bulk_mb_per_s", "MB/s, 1 MiB messages", "higher"),
                          ("bulk_cpu_us_per_msg", "CPU µs per 1 MiB message (all processes)", "lower"),
                          ("lat_p50_us", "8 B one-way (half round trip) p50, µs", "lower"),
                          ("lat_p99_us", "8 B one-way (half round trip) p99, µs", "lower")]:
    if key == "frames_per_s":
        continue
    d, t = med[("dpdk", key)], med[("tcp", key)]
    print(f"| {name} ({better} is better) | {fmt(d)} ({spread(('dpdk', key))}) | wyvern tcp transport, loopback | {fmt(t)} ({spread(('tcp', key))}) | {d/t:.2f}× |")
if ("dpdk-jumbo", "bulk_mb_per_s") in med:
    print(f"\ndpdk-jumbo (MTU $JUMBO_MTU, bsize $JUMBO_BSIZE) against the tcp transport (and against dpdk at MTU 1500):")
    print("| measurement | dpdk-jumbo | wyvern tcp transport | ratio | dpdk MTU 1500 |")
    print("|---|---|---|---|---|")
    for key, name, better in [("frames_per_s", "frames/s (1 MiB stream)", "higher"),
                              ("bulk_mb_per_s", "MB/s, 1 MiB messages", "higher"),
                              ("bulk_cpu_us_per_msg", "CPU µs per 1 MiB message", "lower"),
                              ("rate1_msgs_per_s", "64 B messages/s, 1 → 1", "higher"),
                              ("rate4_msgs_per_s", "64 B messages/s, 4 → 1", "higher"),
                              ("lat_p50_us", "8 B one-way p50, µs", "lower")]:
        j, d = med[("dpdk-jumbo", key)], med[("dpdk", key)]
        t = med.get(("tcp", key))
        ts, r = (f"{fmt(t)} ({spread(('tcp', key))})", f"{j/t:.2f}×") if t else ("—", "—")
        print(f"| {name} ({better} is better) | {fmt(j)} ({spread(('dpdk-jumbo', key))}) | {ts} | {r} | {fmt(d)} |")
for on, off in [("dpdk", "dpdk-copy"), ("dpdk-jumbo", "dpdk-jumbo-copy")]:
    if (off, "bulk_mb_per_s") not in med:
        continue
    print(f"\n{on} (--dpdk-extbuf auto: large messages' packets attached to their pool blocks) against {off} (--dpdk-extbuf off: copied), and the tcp transport:")
    print(f"| measurement | {on} (extbuf) | {off} | extbuf ÷ copy | tcp transport | extbuf ÷ tcp | copy ÷ tcp |")
    print("|---|---|---|---|---|---|---|")
    for key, name, better in [("bulk_mb_per_s", "MB/s, 1 MiB messages", "higher"),
                              ("bulk_cpu_us_per_msg", "CPU µs per 1 MiB message (all processes)", "lower"),
                              ("frames_per_s", "frames/s (1 MiB stream)", "higher"),
                              ("rate1_msgs_per_s", "64 B messages/s, 1 → 1", "higher"),
                              ("rate1_cpu_ns_per_msg", "CPU ns per 64 B message, 1 → 1", "lower"),
                              ("rate4_msgs_per_s", "64 B messages/s, 4 → 1", "higher"),
                              ("rate4_cpu_ns_per_msg", "CPU ns per 64 B message, 4 → 1", "lower"),
                              ("lat_p50_us", "8 B one-way p50, µs", "lower")]:
        a, b = med[(on, key)], med[(off, key)]
        t = med.get(("tcp", key))
        ts, ra, rb = (f"{fmt(t)} ({spread(('tcp', key))})", f"{a/t:.2f}×", f"{b/t:.2f}×") if t else ("—", "—", "—")
        print(f"| {name} ({better} is better) | {fmt(a)} ({spread((on, key))}) | {fmt(b)} ({spread((off, key))}) | {a/b:.2f}× | {ts} | {ra} | {rb} |")
w = ($t1 - $t0) * $(nproc)
f = max(0.0, ($busy1 - $busy0) - ($my1 - $my0))
print(f"\nnoise: other processes used {100*f/w:.0f}% of the machine's CPU time during the runs, hypervisor steal {100*($steal1-$steal0)/w:.1f}%; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)")
EOF
