#!/usr/bin/env bash
# Usage: bench/incast.sh [BIN_DIR]     (default: target/release)
#
# Incast, 100 -> 1 (issue 17): SENDER_AGENTS agents (default 4) with PER_AGENT sender processes
# each (default 25: 100 senders) all send checked, timestamped SIZE-byte messages (default 64)
# to ONE endpoint on a further agent (node 0), whose process reads at most RATE messages/s
# (default 20000: slower than the senders send). `wyvern-peer incast-send` / `incast-recv`:
# every message carries its sender's key, sequence and CLOCK_MONOTONIC stamp, the rest is a
# pattern the receiver checks; the receiver checks every sender's sequence is complete, in order
# and intact. Fairness (Jain's index over per-sender delivered counts) and latency (p50 / p99 /
# p99.9, receive time minus the sender's stamp) are measured over a window of WINDOW_MS (default
# 5000) that opens WARMUP_MS (default 2000) after the last sender was first heard; then the
# receiver tells the senders to stop and reads the rest unpaced. Meanwhile the receiving agent's
# VmRSS / RssAnon and its `parked_bytes` (`wyvern stat --json`) are sampled every 100 ms and
# compared with its bound (`--overflow-mib`, OVERFLOW_MIB, default 64: the agent's default).
# CPU time per message: user + system time of all agents over the run / messages delivered.
# RUNS runs (default 3), medians printed at the end. TRANSPORT=tcp (default) or udp.
#
# With `mpicc`/`mpirun` installed (and MPI=1, the default), the same pattern over Open MPI's tcp
# BTL (bench/mpi_incast.c: SENDERS ranks MPI_Send to rank 0, which receives with MPI_ANY_SOURCE at
# the same paced rate): fairness and latency by the same definitions, and the peak RSS of rank 0
# and of the largest sender (MPI has no agent: what waits, waits in those processes and in TCP).
# MPI has no backpressure for small (eager) messages: rank 0's unexpected-message queue grows
# without bound, so each MPI sender stops after MPI_MAX_MSGS messages (default 10000: about
# 1 GB in rank 0 with 100 senders); SKIP_WYVERN=1 runs the MPI part only.
#
#   cargo build --release --bins && RUNS=3 bench/incast.sh
#
# Every process is bounded (`timeout`, --max-secs); everything is removed on exit. Agents run
# `--idle adaptive`, unpinned: on a 2-core machine the 5 agents, 100 senders and the receiver all
# share both cores (the core layout is printed).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release}"
RUNS="${RUNS:-3}"
SENDER_AGENTS="${SENDER_AGENTS:-4}"
PER_AGENT="${PER_AGENT:-25}"
SIZE="${SIZE:-64}"
RATE="${RATE:-20000}"
WARMUP_MS="${WARMUP_MS:-2000}"
WINDOW_MS="${WINDOW_MS:-5000}"
OVERFLOW_MIB="${OVERFLOW_MIB:-64}"
TRANSPORT="${TRANSPORT:-tcp}"
MPI="${MPI:-1}"
MPI_MAX_MSGS="${MPI_MAX_MSGS:-10000}"
SKIP_WYVERN="${SKIP_WYVERN:-0}"
SENDERS=$((SENDER_AGENTS * PER_AGENT))
for b in "$bin/wyvern" "$bin/wyvern-peer"; do
    [ -x "$b" ] || { echo "incast: no $b (cargo build --release --bins)" >&2; exit 1; }
done
for c in python3 jq; do
    command -v "$c" >/dev/null || { echo "incast: needs $c" >&2; exit 1; }
done
dir="$(mktemp -d "${TMPDIR:-/tmp}/wyvern-incast.XXXXXX")"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "${KEEP_TMP:-0}" = 1 ]; then echo "scratch kept in $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The first line of a file, waited for (bounded).
first_line() { # file seconds
    local i
    for ((i = 0; i < $2 * 50; i++)); do
        if [ -s "$1" ] && head -n1 "$1" | grep -q .; then head -n1 "$1"; return 0; fi
        sleep 0.02
    done
    echo "incast: nothing in $1 after $2 s" >&2
    return 1
}
cpu_ticks() { # pid: utime + stime in clock ticks
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

commit="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty')"
echo "== bench/incast.sh: $SENDERS senders on $SENDER_AGENTS agents -> 1 receiver endpoint on a further agent"
echo "date $(date -u +%FT%TZ), commit $commit, binaries $bin, transport $TRANSPORT"
echo "config: SIZE=$SIZE B, receiver paced at RATE=$RATE msg/s, WARMUP_MS=$WARMUP_MS WINDOW_MS=$WINDOW_MS," \
    "OVERFLOW_MIB=$OVERFLOW_MIB (receiving agent's bound on parked messages), RUNS=$RUNS"
echo "cores: $(nproc) ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')); every agent" \
    "(--idle adaptive, unpinned), sender and the receiver share cores 0-$(($(nproc) - 1))"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

run_wyvern() { # run -> $dir/r$run.json
    local run=$1 d="$dir/run$1" n=$((SENDER_AGENTS + 1)) i nodes="" apids=()
    mkdir -p "$d"
    local -a addrs=()
    for ((i = 0; i < n; i++)); do addrs+=("127.0.0.1:0"); done
    for ((i = 0; i < n; i++)); do
        nodes="$(IFS=,; echo "${addrs[*]}")"
        # (No `timeout`: its pid would stand for the agent's in /proc; the agents are
        # stopped at the end of the run and on exit.)
        RUST_LOG=warn "$bin/wyvern" agent --node-id "$i" --nodes "$nodes" \
            --socket "$d/a$i.sock" --transport "$TRANSPORT" --idle adaptive --heartbeat-ms 100 --connect all \
            ${AGENT_CONFIG:+--config "$AGENT_CONFIG"} --job "incast-$$-$run" --overflow-bytes "${OVERFLOW_MIB}MiB" --max-clients $((PER_AGENT + 4)) \
            >"$d/a$i.out" 2>"$d/a$i.log" &
        pids+=($!); apids+=($!)
        local l
        l="$(first_line "$d/a$i.out" 20)"
        addrs[i]="${l##* }"
    done
    # Every agent sees every peer up.
    for ((i = 0; i < n; i++)); do
        local k
        for ((k = 0; k < 500; k++)); do
            if "$bin/wyvern" stat --json --socket "$d/a$i.sock" 2>/dev/null |
                python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if all(p["state"]=="up" for p in s["peers"]) else 1)'; then
                break
            fi
            sleep 0.04
        done
    done
    timeout 600 "$bin/wyvern-peer" --socket "$d/a0.sock" --ep 7 --sizes "$SIZE" --timeout-ms 60000 \
        incast-recv --senders "$SENDERS" --rate "$RATE" --warmup-ms "$WARMUP_MS" \
        --window-ms "$WINDOW_MS" --stop-file "$d/stop" >"$d/recv.out" 2>"$d/recv.err" &
    local rpid=$!
    pids+=($rpid)
    first_line "$d/recv.out" 20 >/dev/null
    local -a spids=()
    for ((i = 0; i < SENDERS; i++)); do
        local a=$((1 + i % SENDER_AGENTS))
        timeout 600 "$bin/wyvern-peer" --socket "$d/a$a.sock" --sizes "$SIZE" \
            incast-send --to 0:7 --stop-when "$d/stop" --start-when "$d/go" --max-secs 120 \
            >"$d/s$i.out" 2>"$d/s$i.err" &
        spids+=($!); pids+=($!)
    done
    for ((i = 0; i < SENDERS; i++)); do first_line "$d/s$i.out" 60 >/dev/null; done
    local -a cpu0=()
    for p in "${apids[@]}"; do cpu0+=("$(cpu_ticks "$p")"); done
    local t0 anon0
    anon0=$(awk '/^RssAnon:/{print $2}' "/proc/${apids[0]}/status")
    t0=$(date +%s.%N)
    touch "$d/go"
    # Sample the receiving agent while the receiver runs.
    : >"$d/samples"
    while kill -0 "$rpid" 2>/dev/null; do
        local st
        st="$("$bin/wyvern" stat --json --socket "$d/a0.sock" 2>/dev/null | jq -c . 2>/dev/null || true)"
        [ -n "$st" ] || st='{}'
        echo "{\"rss_kib\": $(awk '/^VmRSS:/{print $2}' "/proc/${apids[0]}/status"), \"anon_kib\": $(awk '/^RssAnon:/{print $2}' "/proc/${apids[0]}/status"), \"stat\": $st}" >>"$d/samples"
        sleep 0.1
    done
    wait "$rpid" || true
    for p in "${spids[@]}"; do wait "$p" || true; done
    local t1 cpu=0 k=0
    t1=$(date +%s.%N)
    for p in "${apids[@]}"; do cpu=$((cpu + $(cpu_ticks "$p") - cpu0[k])); k=$((k + 1)); done
    local cpu_rx=$(($(cpu_ticks "${apids[0]}") - cpu0[0]))
    for p in "${apids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    python3 - "$d" "$SENDERS" "$cpu" "$cpu_rx" "$t0" "$t1" "$OVERFLOW_MIB" "$anon0" >"$dir/r$run.json" <<'EOF'
import json, sys
d, n, cpu, cpu_rx, t0, t1, ovf, anon0 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
def last_json(path):
    js = [l for l in open(path) if l.startswith("{")]
    return json.loads(js[-1]) if js else {"ok": False, "error": open(path.replace(".out", ".err")).read()[-500:]}
r = last_json(f"{d}/recv.out")
ss = [last_json(f"{d}/s{i}.out") for i in range(n)]
samples = [json.loads(l) for l in open(f"{d}/samples") if l.strip()]
def by_node(r, i):
    by = {}
    for k, v in r.get("window_counts", {}).items():
        by[int(k.split(":")[0])] = by.get(int(k.split(":")[0]), 0) + v[i]
    return [by[n] for n in sorted(by)]
stats = [s["stat"] for s in samples if s["stat"]]
sent = sum(s.get("sent", 0) for s in ss)
# Nothing lost: every sender's own count is what the receiver got from it.
lost = sum(1 for s in ss if not s.get("ok"))
print(json.dumps({
    "recv_ok": r.get("ok"), "senders_ok": n - lost, "sent": sent, "received": r.get("received", 0),
    "lost": sent - r.get("received", 0), "corrupt": r.get("corrupt"), "out_of_order": r.get("out_of_order"),
    "incomplete": len(r.get("incomplete", [])),
    "rate": r.get("window", {}).get("rate", 0), "jain_delivered": r.get("window", {}).get("jain", 0),
    "min_rel_delivered": r.get("window", {}).get("min_rel", 0),
    "jain": r.get("sent_window", {}).get("jain", 0), "sent_rate": r.get("sent_window", {}).get("rate", 0),
    "min_rel": r.get("sent_window", {}).get("min_rel", 0), "max_rel": r.get("sent_window", {}).get("max_rel", 0),
    "by_node_sent": by_node(r, 1), "by_node_delivered": by_node(r, 0),
    "p50_us": r.get("lat_us", {}).get("p50", 0), "p99_us": r.get("lat_us", {}).get("p99", 0),
    "p999_us": r.get("lat_us", {}).get("p999", 0),
    "senders_full": sum(1 for s in ss if s.get("full", 0) > 0),
    "full": sum(s.get("full", 0) for s in ss), "would_block": sum(s.get("would_block", 0) for s in ss),
    "blocked_share": sum(s.get("blocked_secs", 0) for s in ss) / max(1e-9, sum(s.get("secs", 0) for s in ss)),
    "longest_block_ms": max((s.get("longest_block_ms", 0) for s in ss), default=0),
    "rss_max_mib": max((s["rss_kib"] for s in samples), default=0) / 1024,
    "anon_max_mib": max((s["anon_kib"] for s in samples), default=0) / 1024,
    "anon_before_mib": anon0 / 1024,
    "parked_max_mib": max((s.get("parked_bytes", 0) for s in stats), default=0) / 2**20,
    "parked_max_msgs": max((s.get("parked_msgs", 0) for s in stats), default=0),
    "overflow_mib": ovf,
    "blocks_free_min_mib": min((s.get("blocks_free", 0) for s in stats), default=0) / 2**20,
    "rx_stalls": sum(p["counters"].get("rx_stalls", 0) for p in (stats[-1]["peers"] if stats else [])),
    "cpu_ns_per_msg": cpu / 100 * 1e9 / max(1, r.get("received", 1)),
    "rx_agent_cpu_ns_per_msg": cpu_rx / 100 * 1e9 / max(1, r.get("received", 1)),
    "secs": t1 - t0, "drain_secs": r.get("drain_secs", 0),
}))
EOF
    echo "run $run: $(cat "$dir/r$run.json")"
}

if [ "$SKIP_WYVERN" != 1 ]; then
for ((run = 1; run <= RUNS; run++)); do
    run_wyvern "$run"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$dir" "$RUNS" <<'EOF'
import json, statistics, sys
d, runs = sys.argv[1], int(sys.argv[2])
rs = [json.load(open(f"{d}/r{i}.json")) for i in range(1, runs + 1)]
med = lambda k: statistics.median(r[k] for r in rs)
print(f"== wyvern, medians of {runs} runs")
runs_jain = ", ".join(f"{r['jain']:.3f}" for r in rs)
print(f"delivered rate (window) {med('rate'):,.0f} msg/s; sent in the window {med('sent_rate'):,.0f} msg/s")
print(f"fairness by what each sender sent in the window (all of it delivered): Jain {med('jain'):.4f} "
      f"(min/mean {med('min_rel'):.2f}, max/mean {med('max_rel'):.2f}); runs: {runs_jain}")
print(f"fairness by what was delivered in the window: Jain {med('jain_delivered'):.4f} (min/mean {med('min_rel_delivered'):.2f})")
print(f"sent in the window by sending agent, run 1: {rs[0]['by_node_sent']}; delivered: {rs[0]['by_node_delivered']}")
print(f"latency p50 {med('p50_us')/1e3:.1f} ms, p99 {med('p99_us')/1e3:.1f} ms, p99.9 {med('p999_us')/1e3:.1f} ms")
print(f"lost {sum(r['lost'] for r in rs)}, corrupt {sum(r['corrupt'] or 0 for r in rs)}, out of order {sum(r['out_of_order'] or 0 for r in rs)}, "
      f"incomplete senders {sum(r['incomplete'] for r in rs)}, receivers ok {sum(1 for r in rs if r['recv_ok'])}/{runs}")
print(f"backpressure: senders that found their ring full {med('senders_full'):.0f}, full {med('full'):,.0f}, would_block {med('would_block'):,.0f}, "
      f"share of sender time blocked {med('blocked_share'):.2f}, longest block {med('longest_block_ms'):.0f} ms")
print(f"receiving agent: VmRSS max {med('rss_max_mib'):.1f} MiB, RssAnon max {med('anon_max_mib'):.1f} MiB (before the senders started {med('anon_before_mib'):.1f}), "
      f"parked max {med('parked_max_mib'):.1f} MiB / {med('parked_max_msgs'):,.0f} msgs of bound {rs[0]['overflow_mib']} MiB, rx_stalls {med('rx_stalls'):,.0f}")
print(f"CPU per message: all agents {med('cpu_ns_per_msg'):,.0f} ns, receiving agent {med('rx_agent_cpu_ns_per_msg'):,.0f} ns")
EOF
fi

if [ "$MPI" = 1 ] && command -v mpicc >/dev/null && command -v mpirun >/dev/null; then
    mpicc -O2 -o "$dir/mpi_incast" bench/mpi_incast.c
    # ob1 over the tcp BTL on loopback (as bench/run.sh's MPI peers); ranks yield when idle:
    # 101 busy-polling ranks on 2 cores would starve rank 0 otherwise.
    for ((run = 1; run <= RUNS; run++)); do
        timeout 600 mpirun --allow-run-as-root --oversubscribe --mca pml ob1 --mca btl tcp,self \
            --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo --mca mpi_yield_when_idle 1 \
            -np $((SENDERS + 1)) "$dir/mpi_incast" "$SIZE" "$RATE" "$WARMUP_MS" "$WINDOW_MS" 120 "$MPI_MAX_MSGS" \
            >"$dir/mpi$run.out" 2>"$dir/mpi$run.err" || echo "mpi run $run failed: $(tail -3 "$dir/mpi$run.err")"
        echo "mpi run $run: $(grep '^{' "$dir/mpi$run.out" | tail -1)"
    done
    python3 - "$dir" "$RUNS" <<'EOF2'
import json, statistics, sys
d, runs = sys.argv[1], int(sys.argv[2])
rs = []
for i in range(1, runs + 1):
    ls = [l for l in open(f"{d}/mpi{i}.out") if l.startswith("{")]
    if ls:
        rs.append(json.loads(ls[-1]))
if not rs:
    print("== Open MPI: no run finished"); sys.exit(0)
med = lambda f: statistics.median(f(r) for r in rs)
print(f"== Open MPI (tcp BTL), medians of {len(rs)} runs")
print(f"delivered rate (window) {med(lambda r: r['window']['rate']):,.0f} msg/s; sent in the window {med(lambda r: r['sent_window']['rate']):,.0f} msg/s")
print(f"fairness by what each sender sent in the window: Jain {med(lambda r: r['sent_window']['jain']):.4f} (min/mean {med(lambda r: r['sent_window']['min_rel']):.2f}); "
      f"by what was delivered in it: Jain {med(lambda r: r['window']['jain']):.4f}")
print(f"latency p50 {med(lambda r: r['lat_us']['p50'])/1e3:.1f} ms, p99 {med(lambda r: r['lat_us']['p99'])/1e3:.1f} ms, p99.9 {med(lambda r: r['lat_us']['p999'])/1e3:.1f} ms")
print(f"lost/incomplete senders {sum(r['incomplete'] for r in rs)}, corrupt {sum(r['corrupt'] for r in rs)}, out of order {sum(r['out_of_order'] for r in rs)}, ok {sum(1 for r in rs if r['ok'])}/{len(rs)}")
print(f"memory: rank 0 peak RSS {med(lambda r: r['rank0_hwm_kib'])/1024:.1f} MiB, largest sender peak RSS {med(lambda r: r['sender_hwm_kib_max'])/1024:.1f} MiB")
EOF2
else
    echo "== Open MPI: skipped (MPI=$MPI; mpicc/mpirun not installed: scripts/install-deps.sh bench)"
fi
