#!/usr/bin/env bash
# Usage: bench/multirail.sh [BIN_DIR]     (BIN_DIR default target/release)
#
# Multi-rail on the dpdk transport (issue 18): two agents joined by ONE memif pair
# (`--dpdk-port net_memif0`, today's transport) against the same two agents joined by TWO
# memif pairs (`--dpdk-port net_memif0,net_memif1`: one rail each, under one reliable
# session), in the same run, alternating which goes first. Each: BULK_MIB messages of
# 1 MiB from node 0 to node 1 (SENDERS senders, one receiver), MB/s from the receiver's
# count over its time, and CPU per MiB (both agents' user + system time from /proc, the
# clients' from the shell's `times`). For two rails also each rail's share of the bytes
# the receiver got (`rail0_bytes_rx`, `rail1_bytes_rx`) and the reordering (packets the
# receiver kept out of order, resent packets).
# RUNS (default 3) runs; prints each run, then the medians and the ratio of the two-rail
# figure to the summed single-rail one (2 × one rail; the issue's goal: >= 0.9).
#
# On a 2-core machine this cannot show 2×: each agent is ONE polling thread that drives all
# its rails, and memif is a memcpy per frame on each side, so one rail is already bound by
# the agents' CPU, not by the link. The script says so with the CPU per MiB and the
# counters; see bench/RESULTS.md "Multi-rail".
#
# Core layout: agent 0 (and its EAL lcore) on CPU 0, agent 1 on CPU 1 (--cores, EAL
# --lcores=0@I); clients unpinned. Every process: --no-pci, --vdev only, its own
# --file-prefix, --no-huge, the memif sockets in the abstract namespace. Everything is
# wrapped in `timeout`; the scratch directory is removed on exit (KEEP_TMP=1 keeps it, with
# the agents' logs; AGENT_LOG sets their RUST_LOG, default warn).
#   cargo build --release --features dpdk --bins && bench/multirail.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release}"
RUNS="${RUNS:-3}"
BULK_MIB="${BULK_MIB:-1024}"
SENDERS="${SENDERS:-2}"
IDLE="${IDLE:-adaptive}"
wyvern="$bin/wyvern"
peer="$bin/wyvern-peer"
for b in "$wyvern" "$peer"; do
    [ -x "$b" ] || { echo "multirail: no $b (cargo build --release --features dpdk --bins)" >&2; exit 1; }
done
command -v python3 >/dev/null || { echo "multirail: needs python3" >&2; exit 1; }
dir="$(mktemp -d "${TMPDIR:-/tmp}/wyvern-multirail.XXXXXX")"
tag="wyvmr$$"
pids=()
agent_pid=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "${KEEP_TMP:-0}" = 1 ]; then echo "scratch kept in $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

EAL_COMMON="--no-pci --no-huge --no-telemetry --log-level=lib.eal:warning"
HZ="$(getconf CLK_TCK)"
cpu_busy() { awk -v hz="$HZ" '/^cpu / {print ($2+$3+$4)/hz, $9/hz}' /proc/stat; }
my_cpu() { times > "$dir/times"; awk 'NR==2 {for (i=1;i<=NF;i++) {split($i,t,/[ms]/); s+=t[1]*60+t[2]}} END {print s}' "$dir/times"; }
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

start_agents() { # rails run
    local rails="$1" run="$2" i role r vdevs ports
    for i in 0 1; do
        role=server
        [ "$i" = 1 ] && role=client
        vdevs=""
        ports=""
        for ((r = 0; r < rails; r++)); do
            vdevs="$vdevs --vdev=net_memif$r,role=$role,socket=$dir/memif$run-$rails-$r.sock"
            ports="${ports:+$ports,}net_memif$r"
        done
        RUST_LOG="${AGENT_LOG:-warn}" timeout 900 "$wyvern" agent --node-id "$i" \
            --socket "$dir/agent$i.sock" --no-hugepages --idle "$IDLE" --cores "$i" \
            --job "$tag" --nodes 127.0.0.1:0,127.0.0.1:0 --connect all --transport dpdk \
            --dpdk-port "$ports" \
            --dpdk-eal-args "$EAL_COMMON -m $((64 * rails + 64))$vdevs --file-prefix=$tag-agent$i --lcores=0@$i" \
            >"$dir/ready$i" 2>"$dir/agent$i-rails$rails-run$run.log" &
        pids+=($!)
        agent_pid[$i]=$!
    done
    # Up, and (several rails) every rail's link up on both agents: a memif client that
    # started before its server connects within a second or two.
    for _ in $(seq 300); do
        if "$wyvern" stat --json --socket "$dir/agent0.sock" 2>/dev/null | grep -q '"state": "up"' \
            && "$wyvern" stat --json --socket "$dir/agent1.sock" 2>/dev/null | grep -q '"state": "up"' \
            && { [ "$rails" = 1 ] || [ "$(rails_up 0)$(rails_up 1)" = "$rails$rails" ]; }; then
            return 0
        fi
        sleep 0.1
    done
    echo "multirail: the agents ($rails rails) did not connect; logs:" >&2
    cat "$dir"/agent*-rails"$rails"-run"$run".log >&2
    exit 1
}
rails_up() { # agent -> how many of its rails have their link up
    "$wyvern" stat --json --socket "$dir/agent$1.sock" 2>/dev/null | python3 -c \
        'import json,sys; t=json.load(sys.stdin)["transport"]; print(sum(v for k, v in t.items() if k.endswith("_link_up")))' \
        2>/dev/null || echo 0
}
stop_agents() {
    kill "${agent_pid[0]}" "${agent_pid[1]}" 2>/dev/null || true
    wait "${agent_pid[0]}" "${agent_pid[1]}" 2>/dev/null || true
    rm -f "$dir/agent0.sock" "$dir/agent1.sock"
}
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
tcounter() { # agent key
    "$wyvern" stat --json --socket "$dir/agent$1.sock" | python3 -c \
        'import json,sys; print(json.load(sys.stdin)["transport"].get(sys.argv[1], 0))' "$2"
}

res() { echo "$1 $2 $3 $4" >>"$dir/results"; }
measure() { # rails run
    local rails="$1" run="$2" ep=$((RANDOM % 1000 + 100)) k tx=() c0 a0 c1 a1 line secs cpu
    start_agents "$rails" "$run"
    local r0a r1a kept0 res0
    r0a="$(tcounter 1 rail0_bytes_rx)"; r1a="$(tcounter 1 rail1_bytes_rx)"
    kept0="$(tcounter 1 packets_rx_kept)"; res0="$(tcounter 0 packets_resent)"
    my_cpu >"$dir/c0"; c0="$(cat "$dir/c0")"; a0="$(agents_cpu)"
    timeout 300 "$peer" --socket "$dir/agent1.sock" --ep "$ep" --raw --sizes 1048576 \
        recv --count "$BULK_MIB" >"$dir/rx.json" &
    local rx=$!
    sleep 0.3
    for ((k = 0; k < SENDERS; k++)); do
        timeout 300 "$peer" --socket "$dir/agent0.sock" --raw --sizes 1048576 \
            send --to "1:$ep" --count $((BULK_MIB / SENDERS)) >"$dir/tx$k.json" &
        tx+=($!)
    done
    local bad=0
    for ((k = 0; k < SENDERS; k++)); do
        wait "${tx[$k]}" || { bad=1; echo "  run $run: $rails rail(s): sender $k failed: $(grep '^{' "$dir/tx$k.json" | tail -n1)"; }
    done
    wait "$rx" || { bad=1; echo "  run $run: $rails rail(s): receiver failed: $(grep '^{' "$dir/rx.json" | tail -n1)"; }
    if [ "$bad" = 1 ]; then
        # Counted, the agents' warnings shown, and on to the next measurement.
        res "$run" "rails$rails" failed 1
        for i in 0 1; do
            grep -h "WARN\|ERROR" "$dir/agent$i-rails$rails-run$run.log" | grep -v DEGRADED | tail -n 4 | sed "s/^/    agent $i: /"
        done
        stop_agents
        return 0
    fi
    my_cpu >"$dir/c1"; c1="$(cat "$dir/c1")"; a1="$(agents_cpu)"
    line="$(grep '^{' "$dir/rx.json" | tail -n1)"
    [ "$(field "$line" received)" = "$((BULK_MIB / SENDERS * SENDERS))" ] || { echo "multirail: $line" >&2; exit 1; }
    secs="$(field "$line" secs)"
    cpu="$(python3 -c "print($c1 - $c0 + $a1 - $a0)")"
    local mib=$((BULK_MIB / SENDERS * SENDERS))
    res "$run" "rails$rails" mb_per_s "$(python3 -c "print($mib * 1048576 / $secs / 1e6)")"
    res "$run" "rails$rails" cpu_ms_per_mib "$(python3 -c "print($cpu / $mib * 1e3)")"
    res "$run" "rails$rails" kept_per_mib "$(python3 -c "print(($(tcounter 1 packets_rx_kept) - $kept0) / $mib)")"
    res "$run" "rails$rails" resent_per_mib "$(python3 -c "print(($(tcounter 0 packets_resent) - $res0) / $mib)")"
    if [ "$rails" -gt 1 ]; then
        local r0 r1
        r0=$(( $(tcounter 1 rail0_bytes_rx) - r0a )); r1=$(( $(tcounter 1 rail1_bytes_rx) - r1a ))
        res "$run" "rails$rails" rail0_share "$(python3 -c "print($r0 / max(1, $r0 + $r1))")"
        res "$run" "rails$rails" rail_downs "$(( $(tcounter 0 rail0_downs) + $(tcounter 0 rail1_downs) + $(tcounter 1 rail0_downs) + $(tcounter 1 rail1_downs) ))"
    fi
    stop_agents
}

commit="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty')"
echo "== bench/multirail.sh: the dpdk transport on one memif pair vs two memif pairs (one rail each)"
echo "date $(date -u +%FT%TZ), commit $commit, binaries from $bin, $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
echo "kernel $(uname -r), DPDK $(pkg-config --modversion libdpdk 2>/dev/null || echo '?'), load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "core layout: agent 0 --cores 0 (EAL --lcores=0@0, memif servers), agent 1 --cores 1 (0@1, memif clients); clients unpinned"
echo "agents: --idle $IDLE --no-hugepages --connect all; EAL $EAL_COMMON -m 64×rails+64, --vdev=net_memifR,role=...,socket=... per rail; MTU 1500"
echo "RUNS=$RUNS BULK_MIB=$BULK_MIB (1 MiB messages, node 0 -> node 1) SENDERS=$SENDERS"
echo "busiest other processes at start:"
ps -eo pcpu,comm --sort=-pcpu | sed -n '2,5p' | sed 's/^/    /'
t0="$(date +%s.%N)"
read -r busy0 steal0 <<<"$(cpu_busy)"
my_cpu >"$dir/my0"
my0="$(cat "$dir/my0")"

: >"$dir/results"
for run in $(seq 1 "$RUNS"); do
    if [ $((run % 2)) = 1 ]; then order="1 2"; else order="2 1"; fi
    for r in $order; do measure "$r" "$run"; done
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
print("| measurement | one memif pair | two memif pairs (2 rails) | ratio 2 rails ÷ 1 |")
print("|---|---|---|---|")
for key, name in [("mb_per_s", "MB/s, 1 MiB messages"),
                  ("cpu_ms_per_mib", "CPU ms per MiB (all processes)"),
                  ("kept_per_mib", "packets received out of order per MiB"),
                  ("resent_per_mib", "packets resent per MiB")]:
    a, b = med[("rails1", key)], med[("rails2", key)]
    r = f"{b/a:.2f}×" if a else "—"
    print(f"| {name} | {fmt(a)} ({spread(('rails1', key))}) | {fmt(b)} ({spread(('rails2', key))}) | {r} |")
for who in ("rails1", "rails2"):
    n = len(by.get((who, "failed"), []))
    if n:
        print(f"{who}: {n} of {sys.argv[2]} runs FAILED (a stream stalled: see the lines above); medians over the others")
one, two = med[("rails1", "mb_per_s")], med[("rails2", "mb_per_s")]
print(f"\ntwo rails ÷ summed single-rail figure (2 × one rail): {two:,.0f} ÷ {2*one:,.0f} = {two/(2*one):.2f} (goal >= 0.90)")
print(f"rail 0's share of the bytes received on two rails: {med[('rails2', 'rail0_share')]:.2f} ({spread(('rails2', 'rail0_share'))}); rails taken for down (both agents): {spread(('rails2', 'rail_downs'))}")
w = ($t1 - $t0) * $(nproc)
f = max(0.0, ($busy1 - $busy0) - ($my1 - $my0))
print(f"\nnoise: other processes used {100*f/w:.0f}% of the machine's CPU time during the runs, hypervisor steal {100*($steal1-$steal0)/w:.1f}%; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)")
EOF
