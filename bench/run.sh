#!/usr/bin/env bash
# bench/run.sh — wyvern against its peers, measured in the same run.
#
#   bench/run.sh latency|rate|node|bandwidth|attach|hop|sweep|all
#
# Each subcommand runs wyvern and its peer(s) RUNS times (default 5),
# alternating them so machine noise hits both, prints every run's figures,
# the medians and the ratio, and appends a Markdown section (tables, exact
# commands, core layout, date) to $RESULTS_FILE (default
# bench/results-log.md).
#
#   latency    8 B half round trip between two agents on loopback
#              (wyvern-peer ping/echo) vs `ucx_perftest -t tag_lat` (UCX_TLS=tcp,
#              UCX_NET_DEVICES=lo)
#   rate       4 senders on node A -> 1 receiver on node B, 8 B and 64 B, vs
#              4 concurrent `ucx_perftest -t tag_bw` pairs and 4 MPI pairs
#              (bench/mpi_rate.c, Open MPI ob1 + tcp btl), peers' rates summed
#   node       the node-level figure: NODE_SENDERS (2) senders on each of two
#              agents -> the receiver on the other node, both ways at once, 8 B
#              and 64 B (NODE_SIZES); messages/s summed, messages per agent
#              CPU-second ("per agent core") and CPU per message, vs
#              2*NODE_SENDERS concurrent UCX tag_bw pairs and MPI pairs
#   bandwidth  1 MiB messages between two agents (bench/bulk.rs) vs iperf3
#   attach     wyvern-peer attach-loop vs bench/attach_floor.rs (bare UDS)
#   hop        cargo bench --bench hop (client->agent hop vs cache line)
#   sweep      over SWEEP_SIZES (8 B .. 4 MiB), medians of RUNS runs:
#              latency (p50 half round trip): wyvern tcp, udp, dpdk vs UCX
#                tag_lat, MPI (bench/mpi_lat.c) and sockperf ping-pong (kernel
#                TCP floor, sizes <= SOCKPERF_MAX_SIZE);
#              1->1 message rate: wyvern tcp, udp, dpdk vs UCX tag_bw, MPI
#                (mpi_rate.c, 1 pair) and iperf3 (a stream: bytes/s / size,
#                sizes >= IPERF_MIN_SIZE);
#              4->1 message rate: wyvern tcp, dpdk (4 senders, 1 receiver) vs
#                4 UCX tag_bw pairs and 4 MPI pairs, summed;
#              frames/s at 1514 B frames, once per run: wyvern dpdk (1 MiB
#                messages) vs dpdk-testpmd txonly -> rxonly on the same veth;
#              wyvern-dpdk runs where it can (a --features dpdk build, root,
#                namespaces that scripts/testbed.sh can make: two agents in
#                two namespaces on one veth pair, net_af_packet, as
#                bench/dpdk_veth.sh); else the sweep says why it skips it;
#              writes $SWEEP_OUT/sweep.{csv,md} and latency.png, rate.png,
#              rate4.png (matplotlib in a venv under target/benchenv, created
#              on first use). A progress line per cell (k of N, ETA) on stderr.
#              Estimate for RUNS=3 and the default sizes: 369 cells, ~12.5
#              min on a quiet machine (SWEEP_PLAN_ONLY=1 prints it); the
#              full run at 585bf46 took 20 min with 41 % of the CPU taken
#              by other work (UCX's busy-polling cells lost the most).
#
# Environment: RUNS (5), RESULTS_FILE, LAT_COUNT (20000), LAT_SPIN_COUNT
# (300: spinning agents on 2 cores need ~2 ms per hop), RATE_COUNT (500000
# per sender), UCX_RATE_COUNT (500000 per pair), MPI_ITERS (4000 windows of
# 64), BW_MIB (4096), BW_SPIN_MIB (256), IPERF_SECS (5), ATTACH_COUNT (2000),
# SWEEP_SIZES ("8 64 512 4096 32768 262144 1048576 4194304"),
# NODE_SENDERS (2), NODE_SIZES ("8 64"), NODE_BATCH (1: node's senders and receivers
# call send/recv_with per message; N: send_many/recv_many of up to N), TRANSPORT (tcp: the agents' transport for
# latency/rate/node; udp works too), SOCKPERF_MAX_SIZE (65536), SOCKPERF_SECS (1), IPERF_MIN_SIZE (32768),
# IPERF_SWEEP_SECS (1), SWEEP_PLAN_ONLY=1 (list the sweep's cells and its
# estimate, measure nothing), SKIP_BUILD=1 to use the binaries as they are
# (no cargo at all), WYVERN_FEATURES (cargo features; default "dpdk" where
# pkg-config finds libdpdk), SWEEP_OUT (bench/results; a scratch directory
# for a trial sweep), SWEEP_SYSTEMS (only these systems, e.g. "wyvern-dpdk
# testpmd"), TESTPMD_SECS (6), DPDK_FRAMES_MIB (512), DPDK_RATE_BYTES (4e8:
# most bytes one dpdk rate cell moves), DPDK_LAT_BYTES (2e8, the same for its
# ping-pongs), KEEP_TMP=1 to keep the scratch directory (agent logs) for a
# post-mortem.
#
# Build: one `cargo bench --no-run [--features F] --bench bulk --bench
# attach_floor --bench hop`, which also builds target/release/wyvern and
# wyvern-peer; a second call compiles nothing (see build() for why it is one
# invocation), mpicc only when bench/mpi_*.c is newer than its binary.
#
# Only 127.0.0.1 is used, and 10.77.0.0/24 inside the sweep's own two
# namespaces (ws<pid>-0, ws<pid>-1; the EXIT trap removes them). Every process
# this script starts is wrapped in `timeout` and killed by the EXIT trap.
# Needs: cargo, jq, python3, taskset, ucx_perftest, iperf3, sockperf,
# mpicc/mpirun (scripts/install-deps.sh bench); for the sweep's dpdk columns
# also root, iproute2, libdpdk-dev (the build) and dpdk-testpmd (Debian: dpdk).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${RUNS:-5}"
RESULTS_FILE="${RESULTS_FILE:-$ROOT/bench/results-log.md}"
LAT_COUNT="${LAT_COUNT:-20000}"
LAT_SPIN_COUNT="${LAT_SPIN_COUNT:-300}"
RATE_COUNT="${RATE_COUNT:-500000}"
UCX_RATE_COUNT="${UCX_RATE_COUNT:-500000}"
MPI_ITERS="${MPI_ITERS:-4000}"
BW_MIB="${BW_MIB:-4096}"
BW_SPIN_MIB="${BW_SPIN_MIB:-256}"
IPERF_SECS="${IPERF_SECS:-5}"
ATTACH_COUNT="${ATTACH_COUNT:-2000}"
SWEEP_SIZES="${SWEEP_SIZES:-8 64 512 4096 32768 262144 1048576 4194304}"
SOCKPERF_MAX_SIZE="${SOCKPERF_MAX_SIZE:-65536}"
SOCKPERF_SECS="${SOCKPERF_SECS:-1}"
IPERF_MIN_SIZE="${IPERF_MIN_SIZE:-32768}"
IPERF_SWEEP_SECS="${IPERF_SWEEP_SECS:-1}"
SWEEP_SENDERS=4
SWEEP_OUT="${SWEEP_OUT:-$ROOT/bench/results}"
TESTPMD_SECS="${TESTPMD_SECS:-6}"
DPDK_FRAMES_MIB="${DPDK_FRAMES_MIB:-512}"
DPDK_RATE_BYTES="${DPDK_RATE_BYTES:-400000000}"
DPDK_LAT_BYTES="${DPDK_LAT_BYTES:-200000000}"
# EAL options of every dpdk process (agents and testpmd), as bench/dpdk_veth.sh:
# no PCI, no hugepages (they are shared with other users), no shared config.
EAL_COMMON="--no-pci --no-huge -m 256 --no-telemetry --no-shconf --log-level=lib.eal:warning"
DPDK_NS=""       # the sweep's namespace prefix once scripts/testbed.sh made them
DPDK_SKIP=""     # why the sweep leaves dpdk out
PACKET_BYTES="${PACKET_BYTES:-8972}"
BIN="$ROOT/target/release"
NCORES="$(nproc)"
TMP="$(mktemp -d /tmp/wyvern-bench.XXXXXX)"

cleanup() {
    # Only our own still-running children (every process is started through
    # `start`, a direct child): no stale pid can hit someone else's process.
    local p live
    live="$(jobs -pr)"
    for p in $live; do kill -TERM "$p" 2>/dev/null || true; done
    for p in $live; do
        for _ in $(seq 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    if [ -n "$DPDK_NS" ]; then
        TESTBED_PREFIX="$DPDK_NS" TESTBED_HUGEPAGES=skip timeout 60 "$ROOT/scripts/testbed.sh" down >/dev/null 2>&1 \
            || echo "run.sh: could not remove the namespaces ${DPDK_NS}0, ${DPDK_NS}1 (ip netns del them)" >&2
    fi
    if [ "${KEEP_TMP:-0}" = 1 ]; then echo "run.sh: scratch kept in $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "run.sh: $*" >&2; exit 1; }
log() { echo "$*" >&2; }
md() { printf '%s\n' "$*" >> "$RESULTS_FILE"; }

# start NAME SECS CMD...: run CMD in the background under `timeout SECS`,
# stdout to $TMP/NAME.out, stderr to $TMP/NAME.err; its pid in $LAST.
start() {
    local name=$1 secs=$2; shift 2
    timeout "$secs" "$@" > "$TMP/$name.out" 2> "$TMP/$name.err" &
    LAST=$!
}

# finish PID: wait for it, tolerating a non-zero status (reported by caller).
finish() { wait "$1" 2>/dev/null || true; }

# wait_for FILE PATTERN SECS
wait_for() {
    local f=$1 pat=$2 n=$(( $3 * 50 ))
    for _ in $(seq "$n"); do
        grep -q -- "$pat" "$f" 2>/dev/null && return 0
        sleep 0.02
    done
    die "timed out waiting for '$pat' in $f: $(tail -3 "$f" "${f%.out}.err" 2>/dev/null)"
}

# wait_port PORT SECS [PID]: until something listens on 127.0.0.1:PORT (the
# peers' own "listening" lines are block-buffered when stdout is a file);
# gives up at once if PID (the server) has exited.
wait_port() {
    local n=$(( $2 * 50 ))
    for _ in $(seq "$n"); do
        [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ] && return 0
        if [ -n "${3:-}" ] && ! kill -0 "$3" 2>/dev/null; then die "the server meant to listen on port $1 exited"; fi
        sleep 0.02
    done
    die "nothing listens on port $1 after $2 s"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
calc() { python3 -c "print(format($1, '${2:-.2f}'))"; }
fmt() { python3 -c "import sys; v=float(sys.argv[1]); print(format(v, '${2:-.2f}'))" "$1"; }
# met VALUE OP LIMIT -> "met" / "MISSED"
met() { python3 -c "import sys; v,l=float(sys.argv[1]),float(sys.argv[3]); print('met' if (v<=l if sys.argv[2]=='<=' else v>=l) else 'MISSED')" "$1" "$2" "$3"; }
join_runs() { local IFS='|'; echo "$*" | sed 's/|/ \/ /g'; }

# ------------------------------------------------------------------ build

EXE_BULK=""; EXE_FLOOR=""; FEAT_ARGS=(); BUILT_FEATURES=""
# One cargo invocation builds everything the benchmarks run, with one feature
# set: `cargo bench --no-run` compiles the library and both binaries (benches
# need the binaries; they land in target/release as with `cargo build
# --release`) next to the bench executables. Why one: the library's crate
# types include cdylib and staticlib, so cargo names its outputs without a
# hash (target/release/deps/libwyvern.{rlib,so,a}); two builds whose
# dependency graphs differ write the same files, and each makes the other
# stale. `cargo build --release --bins` and `cargo bench --no-run` differ that
# way: a bench build unifies dev-dependency features (proptest, tempfile,
# cbindgen turn on bitflags/std and serde_core/alloc under nix and serde), so
# the two rebuilt the library and both binaries on every call. A different
# --features set does the same, so cmd_hop's `cargo bench` uses FEAT_ARGS too.
# WYVERN_FEATURES: the cargo features to build with; default "dpdk" where
# pkg-config finds libdpdk (the sweep's dpdk columns need it), else none.
build_features() {
    if [ -n "${WYVERN_FEATURES+x}" ]; then
        BUILT_FEATURES="$WYVERN_FEATURES"
    elif pkg-config --exists libdpdk 2>/dev/null; then
        BUILT_FEATURES=dpdk
    else
        BUILT_FEATURES=""
        log "build: no libdpdk (pkg-config): building without the dpdk feature"
    fi
    FEAT_ARGS=(); [ -z "$BUILT_FEATURES" ] || FEAT_ARGS=(--features "$BUILT_FEATURES")
}
cargo_bench_build() { # -> the JSON messages on stdout
    (cd "$ROOT" && timeout 1800 cargo bench --no-run --quiet --message-format=json "${FEAT_ARGS[@]}" \
        --bench bulk --bench attach_floor --bench hop 2> "$TMP/build.err")
}
build() {
    command -v jq >/dev/null || die "jq is needed"
    build_features
    local json t0
    t0=$(date +%s.%N)
    if [ "${SKIP_BUILD:-0}" != 1 ]; then
        log "building: cargo bench --no-run ${FEAT_ARGS[*]} --bench bulk --bench attach_floor --bench hop (also builds the wyvern and wyvern-peer binaries)"
        if ! json="$(cargo_bench_build)"; then
            if [ "$BUILT_FEATURES" = dpdk ] && [ -z "${WYVERN_FEATURES+x}" ]; then
                log "build: with --features dpdk it failed ($(grep -m1 -i error "$TMP/build.err" | cut -c1-160)); building without it"
                BUILT_FEATURES=""; FEAT_ARGS=()
                json="$(cargo_bench_build)" || die "cargo bench --no-run failed: $(tail -5 "$TMP/build.err")"
            else
                die "cargo bench --no-run failed: $(tail -5 "$TMP/build.err")"
            fi
        fi
        EXE_BULK="$(jq -r 'select(.executable != null and .target.name == "bulk") | .executable' <<< "$json" | tail -1)"
        EXE_FLOOR="$(jq -r 'select(.executable != null and .target.name == "attach_floor") | .executable' <<< "$json" | tail -1)"
        log "build step: $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s, $(jq -s '[.[] | select(.reason == "compiler-artifact" and .fresh == false)] | length' <<< "$json") artifacts compiled (features: ${BUILT_FEATURES:-none})"
    else
        # the binaries as they are: no cargo at all (the newest bench executables)
        EXE_BULK="$(find "$ROOT/target/release/deps" -maxdepth 1 -type f -executable -name 'bulk-*' -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -1 | cut -d' ' -f2-)"
        EXE_FLOOR="$(find "$ROOT/target/release/deps" -maxdepth 1 -type f -executable -name 'attach_floor-*' -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -1 | cut -d' ' -f2-)"
        # which features the binaries have: a dpdk-less wyvern refuses the transport
        if "$BIN/wyvern" agent --node-id 0 --nodes 127.0.0.1:0,127.0.0.1:0 --connect all --transport dpdk \
            --dpdk-eal-args "--no-pci" --print-config >/dev/null 2>&1; then BUILT_FEATURES=dpdk; else BUILT_FEATURES=""; fi
    fi
    [ -x "$BIN/wyvern" ] && [ -x "$BIN/wyvern-peer" ] || die "release binaries missing"
    if [ "${SWEEP_PLAN_ONLY:-0}" != 1 ]; then
        [ -x "$EXE_BULK" ] && [ -x "$EXE_FLOOR" ] || die "bench executables not found"
    fi
    mkdir -p "$ROOT/target/bench"
    if command -v mpicc >/dev/null; then
        local m
        for m in mpi_rate mpi_lat; do   # only when the source is newer
            [ "$ROOT/target/bench/$m" -nt "$ROOT/bench/$m.c" ] && continue
            mpicc -O2 -o "$ROOT/target/bench/$m" "$ROOT/bench/$m.c" || die "mpicc $m.c failed"
        done
    fi
}

# Machine noise during a section: CPU time used by processes this script did
# not start (busy user+nice+system time from /proc/stat minus this shell's
# and its reaped descendants' time from `times`), and hypervisor steal.
HZ="$(getconf CLK_TCK)"
cpu_stat() { awk -v hz="$HZ" '/^cpu / {print ($2+$3+$4)/hz, $9/hz}' /proc/stat; }
my_cpu() { # `times` must run in this shell (not a pipeline's subshell)
    times > "$TMP/times"
    awk '{for (i=1;i<=NF;i++) {split($i,t,/[ms]/); s+=t[1]*60+t[2]}} END {print s}' "$TMP/times"
}
section_begin() {
    S_T0="$(date +%s.%N)"; read -r S_BUSY0 S_STEAL0 <<< "$(cpu_stat)"; my_cpu > "$TMP/my0"; S_MY0="$(cat "$TMP/my0")"
    LOAD0="$(cut -d' ' -f1-3 /proc/loadavg)"
}
noise() {
    local t1 busy1 steal1 my1
    t1="$(date +%s.%N)"; read -r busy1 steal1 <<< "$(cpu_stat)"; my_cpu > "$TMP/my1"; my1="$(cat "$TMP/my1")"
    python3 -c "
w=($t1-$S_T0)*$NCORES
f=max(0.0, ($busy1-$S_BUSY0)-($my1-$S_MY0))
print(f'other processes used {100*f/w:.0f}% of the machine\'s CPU time, hypervisor steal {100*($steal1-$S_STEAL0)/w:.1f}%')"
}

# The commit measured: the repository's HEAD (flagging uncommitted changes
# in src/), or .snapshot-commit in a `git archive` export.
rev() {
    if git -C "$ROOT" rev-parse --short HEAD >/dev/null 2>&1; then
        printf '%s' "$(git -C "$ROOT" rev-parse --short HEAD)"
        [ -z "$(git -C "$ROOT" status --porcelain src 2>/dev/null)" ] || printf ' + uncommitted changes in src/'
    elif [ -f "$ROOT/.snapshot-commit" ]; then
        printf '%s (exported snapshot)' "$(cut -c1-7 "$ROOT/.snapshot-commit")"
    else
        printf '?'
    fi
}

header() {
    local title=$1
    md ""
    md "## $title"
    md ""
    noise > "$TMP/noise"   # in this shell: `times` must see our children
    md "$(date -u '+%Y-%m-%d %H:%M:%S UTC') · $(uname -r) · ${NCORES} cores ($(lscpu | sed -n 's/^Model name: *//p')) · RUNS=$RUNS · git $(rev) · load average at start ${LOAD0:-?} · during the section $(cat "$TMP/noise")"
    md ""
}

# ------------------------------------------------------------------ agents

AGENT_PIDS=(); SOCK0=""; SOCK1=""; BACKING=""
# agents IDLE LAYOUT: two agents on loopback. LAYOUT free = unpinned;
# node = agent 0 on core 0, agent 1 on core 1 (taskset; clients follow).
agents() {
    local idle=$1 layout=$2 p0 p1 nodes i ts
    AGENT_PIDS=()
    if [ "${TRANSPORT:-tcp}" = dpdk ]; then
        # One agent per namespace of the sweep's veth pair (net_af_packet on
        # veth0), as bench/dpdk_veth.sh: agent I and its EAL lcore on CPU I.
        [ -n "$DPDK_NS" ] || die "dpdk agents without the sweep's namespaces"
        for i in 0 1; do
            RUST_LOG=info start "agent$i" 600 ip netns exec "${DPDK_NS}$i" "$BIN/wyvern" agent --node-id "$i" \
                --nodes 127.0.0.1:0,127.0.0.1:0 --connect all --socket "$TMP/agent$i.sock" --idle "$idle" --cores "$i" \
                --block-bytes 64MiB --max-clients 8 --transport dpdk --job "bench-$$" \
                --dpdk-eal-args "$EAL_COMMON --vdev=net_af_packet0,iface=veth0 --file-prefix=${DPDK_NS}a$i --lcores=0@$i"
            AGENT_PIDS+=("$LAST")
        done
    else
        p0=$(free_port); p1=$(free_port)
        nodes="127.0.0.1:$p0,127.0.0.1:$p1"
        for i in 0 1; do
            ts=(); [ "$layout" = node ] && ts=(taskset -c "$i")
            RUST_LOG=info start "agent$i" 600 "${ts[@]}" "$BIN/wyvern" agent --node-id "$i" \
                --nodes "$nodes" --socket "$TMP/agent$i.sock" --idle "$idle" \
                --block-bytes 64MiB --max-clients 8 --transport "${TRANSPORT:-tcp}" --packet-bytes "$PACKET_BYTES" --job "bench-$$"
            AGENT_PIDS+=("$LAST")
        done
    fi
    SOCK0="$TMP/agent0.sock"; SOCK1="$TMP/agent1.sock"
    wait_for "$TMP/agent0.out" "wyvern agent ready" 10
    wait_for "$TMP/agent1.out" "wyvern agent ready" 10
    for _ in $(seq 500); do
        if "$BIN/wyvern" stat -s "$SOCK1" --json 2>/dev/null | jq -e '.peers[0].state == "up"' >/dev/null \
           && "$BIN/wyvern" stat -s "$SOCK0" --json 2>/dev/null | jq -e '.peers[0].state == "up"' >/dev/null; then
            break
        fi
        sleep 0.02
    done
    BACKING="$("$BIN/wyvern" stat -s "$SOCK0" --json | jq -r .backing)"
}

stop_agents() {
    local p
    for p in "${AGENT_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${AGENT_PIDS[@]}"; do finish "$p"; done
    AGENT_PIDS=()
}

# taskset prefix for a client of node $2 under layout $1
ts_for() { if [ "$1" = node ]; then echo "taskset -c $2"; fi; }

# ================================================================= latency

wy_latency() { # IDLE LAYOUT COUNT [SIZE] -> half-RTT p50 in us
    local idle=$1 layout=$2 count=$3 size=${4:-8} e
    agents "$idle" "$layout"
    # shellcheck disable=SC2046
    start echo 300 $(ts_for "$layout" 1) "$BIN/wyvern-peer" --socket "$SOCK1" --ep 2 --sizes "$size" \
        echo --count $(( count + count / 10 ))
    e=$LAST
    wait_for "$TMP/echo.out" ready 10
    # shellcheck disable=SC2046
    start ping 300 $(ts_for "$layout" 0) "$BIN/wyvern-peer" --socket "$SOCK0" --ep 1 --sizes "$size" \
        ping --to 1:2 --count "$count" --warmup $(( count / 10 ))
    wait "$LAST" || die "ping failed: $(tail -2 "$TMP/ping.out" "$TMP/ping.err")"
    finish "$e"
    stop_agents
    RES="$(tail -1 "$TMP/ping.out" | jq -e -r '.half_rtt_p50_us')" || die "no ping result: $(cat "$TMP/ping.out")"
}

ucx_latency() { # COUNT [SIZE] -> one-way p50 in us (ucx_perftest tag_lat reports half RTT)
    local count=$1 size=${2:-8} port s
    port=$(free_port)
    UCX_TLS=tcp UCX_NET_DEVICES=lo start ucxsrv 120 ucx_perftest -t tag_lat -s "$size" -n "$count" -w $(( count / 10 )) -p "$port" -f
    s=$LAST
    wait_port "$port" 10
    UCX_TLS=tcp UCX_NET_DEVICES=lo start ucxcli 120 ucx_perftest 127.0.0.1 -t tag_lat -s "$size" -n "$count" \
        -w $(( count / 10 )) -p "$port" -f
    wait "$LAST" || die "ucx_perftest failed: $(tail -3 "$TMP/ucxcli.out" "$TMP/ucxcli.err")"
    finish "$s"
    RES="$(awk '$1 ~ /^[0-9]+$/ && NF >= 8 {v=$2} END {print v}' "$TMP/ucxcli.out")"
    [ -n "$RES" ] || die "no ucx_perftest result: $(cat "$TMP/ucxcli.out")"
}

cmd_latency() {
    section_begin
    log "== latency: 8 B half round trip, $RUNS runs =="
    local r a n s u A=() N=() S=() U=()
    for r in $(seq "$RUNS"); do
        wy_latency adaptive free "$LAT_COUNT"; a=$(fmt "$RES")
        wy_latency adaptive node "$LAT_COUNT"; n=$(fmt "$RES")
        wy_latency spin free "$LAT_SPIN_COUNT"; s=$(fmt "$RES" .1f)
        ucx_latency "$LAT_COUNT"; u=$RES
        A+=("$a"); N+=("$n"); S+=("$s"); U+=("$u")
        log "run $r: wyvern adaptive/unpinned ${a} us, adaptive/node-per-core ${n} us, spin/unpinned ${s} us; ucx tag_lat ${u} us"
    done
    local ma mn ms mu
    ma=$(median "${A[@]}"); mn=$(median "${N[@]}"); ms=$(median "${S[@]}"); mu=$(median "${U[@]}")
    log "median: wyvern adaptive ${ma} us (x$(calc "$ma/$mu") of ucx), node-per-core ${mn} us (x$(calc "$mn/$mu")), spin ${ms} us (x$(calc "$ms/$mu")); ucx ${mu} us"
    header "latency: 8 B ping-pong between two nodes over loopback TCP"
    md "One-way latency = half round trip, p50 of each run (wyvern-peer reports \`half_rtt_p50_us\`; \`ucx_perftest -t tag_lat\` reports one-way latency, its 50.0%ile column). Pool backing: $BACKING."
    md ""
    md "| config | runs (µs) | median (µs) | vs UCX tag_lat (ratio, lower is better) |"
    md "|---|---|---|---|"
    md "| wyvern, --idle adaptive, unpinned | $(join_runs "${A[@]}") | $ma | $(calc "$ma/$mu")× |"
    md "| wyvern, --idle adaptive, node per core | $(join_runs "${N[@]}") | $mn | $(calc "$mn/$mu")× |"
    md "| wyvern, --idle spin, unpinned ($LAT_SPIN_COUNT round trips) | $(join_runs "${S[@]}") | $ms | $(calc "$ms/$mu")× |"
    md "| UCX 1.13 tag_lat, UCX_TLS=tcp UCX_NET_DEVICES=lo, unpinned | $(join_runs "${U[@]}") | $mu | 1 |"
    md ""
    md "Core layout: 2 cores. wyvern runs 4 processes (agent 0, agent 1, \`ping\` client on node 0, \`echo\` client on node 1): *unpinned* lets the scheduler place them; *node per core* is \`taskset -c 0\` for agent 0 + ping, \`taskset -c 1\` for agent 1 + echo. UCX runs 2 busy-polling processes, unpinned."
    md ""
    md "Commands:"
    md '```'
    md "wyvern agent --node-id I --nodes 127.0.0.1:P0,127.0.0.1:P1 --socket S_I --idle adaptive|spin --block-bytes 64MiB --max-clients 8   # I = 0, 1"
    md "wyvern-peer --socket S_1 --ep 2 --sizes 8 echo --count $(( LAT_COUNT + LAT_COUNT / 10 ))"
    md "wyvern-peer --socket S_0 --ep 1 --sizes 8 ping --to 1:2 --count $LAT_COUNT --warmup $(( LAT_COUNT / 10 ))   # spin: --count $LAT_SPIN_COUNT"
    md "UCX_TLS=tcp UCX_NET_DEVICES=lo ucx_perftest -t tag_lat -s 8 -n $LAT_COUNT -w $(( LAT_COUNT / 10 )) -p PORT -f"
    md "UCX_TLS=tcp UCX_NET_DEVICES=lo ucx_perftest 127.0.0.1 -t tag_lat -s 8 -n $LAT_COUNT -w $(( LAT_COUNT / 10 )) -p PORT -f"
    md '```'
}

# ==================================================================== rate

# CPU time per message (user + system, ns) -> CPUMSG: the processes this shell
# started and reaped since cpu_mark (from `times`, so call cpu_per_msg once they
# have been waited for) plus, when given, the agents' CPU time since cpu_mark
# (/proc, the agents and their descendants, alive: read before they stop).
tree_cpu() { # PIDS... -> CPU seconds of these processes and their live descendants
    local all=("$@") i=0 p
    while [ "$i" -lt "${#all[@]}" ]; do
        # shellcheck disable=SC2207
        all+=($(pgrep -P "${all[$i]}" || true)); i=$((i + 1))
    done
    for p in "${all[@]}"; do
        # after the command's ")": utime and stime are fields 14 and 15
        awk -v hz="$HZ" '{sub(/.*\) /, ""); split($0, f, " "); printf "%.4f\n", (f[12] + f[13]) / hz}' "/proc/$p/stat" 2>/dev/null || true
    done | awk '{s += $1} END {printf "%.4f\n", s}'
}
cpu_mark() { # [AGENT PIDS...]
    my_cpu > "$TMP/cpu0"
    if [ $# -gt 0 ]; then tree_cpu "$@" > "$TMP/acpu0"; else echo 0 > "$TMP/acpu0"; fi
}
agents_cpu_end() { tree_cpu "$@" > "$TMP/acpu1"; }
cpu_per_msg() { # MESSAGES (after agents_cpu_end, if cpu_mark was given agents)
    my_cpu > "$TMP/cpu1"
    [ -s "$TMP/acpu1" ] || echo 0 > "$TMP/acpu1"
    CPUMSG="$(calc "($(cat "$TMP/cpu1") - $(cat "$TMP/cpu0") + $(cat "$TMP/acpu1") - $(cat "$TMP/acpu0")) / $1 * 1e9" .0f)"
    rm -f "$TMP/acpu1"
}

wy_rate() { # IDLE SIZE -> aggregate msg/s (total received / receiver wall time); CPUMSG
    local idle=$1 size=$2 r k pids=() json
    agents "$idle" free
    # From here to the last message: the agents (as they go), the receiver and
    # the senders (their whole lives: start-up included).
    cpu_mark "${AGENT_PIDS[@]}"
    start recv 300 "$BIN/wyvern-peer" --socket "$SOCK1" --ep 2 --sizes "$size" recv --count $(( 4 * RATE_COUNT ))
    r=$LAST
    wait_for "$TMP/recv.out" ready 10
    for k in 1 2 3 4; do
        start "send$k" 300 "$BIN/wyvern-peer" --socket "$SOCK0" --sizes "$size" send --to 1:2 --count "$RATE_COUNT"
        pids+=("$LAST")
    done
    for k in "${pids[@]}"; do finish "$k"; done
    finish "$r"
    agents_cpu_end "${AGENT_PIDS[@]}"
    cpu_per_msg $(( 4 * RATE_COUNT ))
    AGG="$("$BIN/wyvern" stat -s "$SOCK0" --json | jq -r '.peers[0].aggregation')"
    stop_agents
    json="$(tail -1 "$TMP/recv.out")"
    jq -e '.ok == true' >/dev/null <<< "$json" || die "wyvern receiver failed: $json $(cat "$TMP"/send*.out)"
    RES="$(jq -r '.received / .secs' <<< "$json")"
}

ucx_rate() { # SIZE [PAIRS=4] -> summed msg/s of PAIRS concurrent tag_bw pairs; CPUMSG
    local size=$1 pairs=${2:-4} k ports=() srv=() cli=() sum
    cpu_mark
    for k in $(seq "$pairs"); do
        ports+=("$(free_port)")
        UCX_TLS=tcp UCX_NET_DEVICES=lo start "ucxbws$k" 120 ucx_perftest -t tag_bw -s "$size" -n "$UCX_RATE_COUNT" -p "${ports[$((k-1))]}" -f
        srv+=("$LAST")
    done
    for k in $(seq "$pairs"); do wait_port "${ports[$((k-1))]}" 10; done
    for k in $(seq "$pairs"); do
        UCX_TLS=tcp UCX_NET_DEVICES=lo start "ucxbwc$k" 120 ucx_perftest 127.0.0.1 -t tag_bw -s "$size" -n "$UCX_RATE_COUNT" -p "${ports[$((k-1))]}" -f
        cli+=("$LAST")
    done
    for k in "${cli[@]}" "${srv[@]}"; do finish "$k"; done
    cpu_per_msg $(( pairs * UCX_RATE_COUNT ))
    sum=0
    for k in $(seq "$pairs"); do
        # columns: iterations, overhead 50%/avg/overall, MB/s avg/overall, msg/s avg/overall
        v=$(awk '$1 ~ /^[0-9]+$/ && NF >= 8 {v=$8} END {print v}' "$TMP/ucxbwc$k.out")
        [ -n "$v" ] || die "ucx_perftest tag_bw pair $k failed: $(tail -3 "$TMP/ucxbwc$k.out")"
        sum=$(calc "$sum + $v" .1f)
    done
    RES=$sum
}

# shellcheck disable=SC2054
MPIRUN_BASE=(mpirun --allow-run-as-root --oversubscribe --mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo)
MPIRUN=("${MPIRUN_BASE[@]}" -np 8)
mpi_rate() { # SIZE [PAIRS=4] -> summed msg/s of PAIRS pairs; CPUMSG
    local size=$1 pairs=${2:-4} json
    [ -x "$ROOT/target/bench/mpi_rate" ] || { RES=nan; CPUMSG=nan; return; }
    cpu_mark
    start mpi 120 "${MPIRUN_BASE[@]}" -np $(( 2 * pairs )) "$ROOT/target/bench/mpi_rate" "$size" "$MPI_ITERS" 64
    wait "$LAST" || die "mpirun failed: $(tail -5 "$TMP/mpi.out" "$TMP/mpi.err")"
    cpu_per_msg $(( pairs * MPI_ITERS * 64 ))
    json="$(grep '^{' "$TMP/mpi.out" | tail -1)"
    RES="$(jq -r '.rate_sum' <<< "$json")"
}

cmd_rate() {
    section_begin
    log "== rate: 4 senders -> 1 receiver, $RUNS runs =="
    local ROWS=()
    row() { ROWS+=("$*"); }
    row "wyvern figure: messages received / receiver's wall time (first to last message), \`wyvern-peer recv\` checking every payload. Peers: 4 concurrent pairs (8 processes), each pair's own rate summed (\`ucx_perftest\` \"overall\" msg/s; mpi_rate's \`rate_sum\`). Target: wyvern ≥ 20× each peer's summed 8 B rate."
    row ""
    row "CPU per message: user + system time ÷ messages. wyvern: both agents' from the receiver's start to the last message (/proc), plus the receiver's and the senders' whole lives (\`times\`, start-up included). UCX and MPI: every process of the cell over its whole life (\`times\`: start-up, connection set-up and their busy-polling waits included, so an upper bound). Target: ≤ 250 ns for wyvern."
    row ""
    row "| size | config | runs (M msg/s) | median (M msg/s) | wyvern adaptive ÷ this | CPU per message, median (ns) | target | met |"
    row "|---|---|---|---|---|---|---|---|"
    local size r a s u m
    for size in 8 64; do
        local A=() S=() U=() M=() AG=() CA=() CS=() CU=() CM=()
        for r in $(seq "$RUNS"); do
            wy_rate adaptive "$size"; a=$RES; AG+=("$AGG"); CA+=("$CPUMSG")
            wy_rate spin "$size"; s=$RES; CS+=("$CPUMSG")
            ucx_rate "$size"; u=$RES; CU+=("$CPUMSG")
            mpi_rate "$size"; m=$RES; CM+=("$CPUMSG")
            A+=("$(calc "$a/1e6" .3f)"); S+=("$(calc "$s/1e6" .3f)"); U+=("$(calc "$u/1e6" .3f)"); M+=("$(calc "$m/1e6" .3f)")
            log "size $size run $r: wyvern adaptive ${A[-1]} M/s (aggregation $(fmt "${AG[-1]}" .1f) msgs/frame, ${CA[-1]} ns CPU/msg), spin ${S[-1]} M/s (${CS[-1]} ns); ucx 4 pairs ${U[-1]} M/s (${CU[-1]} ns); mpi 4 pairs ${M[-1]} M/s (${CM[-1]} ns)"
        done
        local ma ms mu mm
        ma=$(median "${A[@]}"); ms=$(median "${S[@]}"); mu=$(median "${U[@]}"); mm=$(median "${M[@]}")
        log "size $size median: wyvern adaptive $ma, spin $ms; ucx $mu (ratio $(calc "$ma/$mu")); mpi $mm (ratio $(calc "$ma/$mm")) M msg/s"
        local tu tm
        if [ "$size" = 8 ]; then tu="≥ 20×"; tm="$(met "$(calc "$ma/$mu")" '>=' 20)"; else tu="—"; tm="—"; fi
        local cam
        cam=$(median "${CA[@]}")
        row "| $size B | wyvern, --idle adaptive, unpinned (aggregation $(fmt "$(median "${AG[@]}")" .0f) msgs/frame) | $(join_runs "${A[@]}") | $ma | 1 | $cam | ≤ 250 ns | $(met "$cam" '<=' 250) |"
        row "| $size B | wyvern, --idle spin, unpinned | $(join_runs "${S[@]}") | $ms | $(calc "$ma/$ms")× | $(median "${CS[@]}") | | |"
        row "| $size B | UCX tag_bw ×4 pairs, UCX_TLS=tcp UCX_NET_DEVICES=lo | $(join_runs "${U[@]}") | $mu | $(calc "$ma/$mu")× | $(median "${CU[@]}") | $tu | $tm |"
        if [ "$size" = 8 ]; then tm="$(met "$(calc "$ma/$mm")" '>=' 20)"; fi
        row "| $size B | Open MPI ob1/tcp ×4 pairs (mpi_rate, window 64) | $(join_runs "${M[@]}") | $mm | $(calc "$ma/$mm")× | $(median "${CM[@]}") | $tu | $tm |"
    done
    header "small-message rate: 4 sender processes on node A → 1 receiver on node B"
    local line
    for line in "${ROWS[@]}"; do md "$line"; done
    md ""
    md "Core layout: 2 cores, nothing pinned. wyvern: 7 processes (2 agents, 4 senders, 1 receiver); UCX: 8 busy-polling processes; MPI: 8 ranks (\`--oversubscribe\`, so Open MPI yields when idle). Pool backing: $BACKING."
    md ""
    md "Commands (SIZE = 8, 64):"
    md '```'
    md "wyvern agent --node-id I --nodes 127.0.0.1:P0,127.0.0.1:P1 --socket S_I --idle adaptive|spin --block-bytes 64MiB --max-clients 8"
    md "wyvern-peer --socket S_1 --ep 2 --sizes SIZE recv --count $(( 4 * RATE_COUNT ))"
    md "4 x wyvern-peer --socket S_0 --sizes SIZE send --to 1:2 --count $RATE_COUNT   # concurrently"
    md "4 x { UCX_TLS=tcp UCX_NET_DEVICES=lo ucx_perftest -t tag_bw -s SIZE -n $UCX_RATE_COUNT -p PORT_K -f & UCX_TLS=tcp UCX_NET_DEVICES=lo ucx_perftest 127.0.0.1 -t tag_bw -s SIZE -n $UCX_RATE_COUNT -p PORT_K -f; }   # concurrently, K = 1..4"
    md "mpicc -O2 -o target/bench/mpi_rate bench/mpi_rate.c"
    md "${MPIRUN[*]} target/bench/mpi_rate SIZE $MPI_ITERS 64"
    md '```'
}

# ==================================================================== node

# wy_node IDLE SIZE N: N senders on each node -> the receiver on the other
# node, both ways at once. RES: the two receivers' rates summed (msg/s); CPUMSG:
# every process's CPU per message (agents, senders, receivers); AGENT_SECS: the
# agents' CPU seconds from the receivers' start to the last message.
wy_node() {
    local idle=$1 size=$2 n=$3 k pids=() r0 r1 json sum=0 i
    agents "$idle" free
    cpu_mark "${AGENT_PIDS[@]}"
    local batch=()
    [ "${NODE_BATCH:-1}" != 1 ] && batch=(--batch "$NODE_BATCH")
    start recv0 300 "$BIN/wyvern-peer" "${batch[@]}" --socket "$SOCK0" --ep 2 --sizes "$size" recv --count $(( n * RATE_COUNT ))
    r0=$LAST
    start recv1 300 "$BIN/wyvern-peer" "${batch[@]}" --socket "$SOCK1" --ep 2 --sizes "$size" recv --count $(( n * RATE_COUNT ))
    r1=$LAST
    wait_for "$TMP/recv0.out" ready 10
    wait_for "$TMP/recv1.out" ready 10
    for k in $(seq "$n"); do
        start "sendA$k" 300 "$BIN/wyvern-peer" "${batch[@]}" --socket "$SOCK0" --sizes "$size" send --to 1:2 --count "$RATE_COUNT"
        pids+=("$LAST")
        start "sendB$k" 300 "$BIN/wyvern-peer" "${batch[@]}" --socket "$SOCK1" --sizes "$size" send --to 0:2 --count "$RATE_COUNT"
        pids+=("$LAST")
    done
    for k in "${pids[@]}"; do finish "$k"; done
    finish "$r0"; finish "$r1"
    agents_cpu_end "${AGENT_PIDS[@]}"
    AGENT_SECS="$(calc "$(cat "$TMP/acpu1") - $(cat "$TMP/acpu0")" .4f)"
    cpu_per_msg $(( 2 * n * RATE_COUNT ))
    AGG="$("$BIN/wyvern" stat -s "$SOCK0" --json | jq -r '.peers[0].aggregation')"
    stop_agents
    for i in 0 1; do
        json="$(tail -1 "$TMP/recv$i.out")"
        jq -e '.ok == true' >/dev/null <<< "$json" || die "wyvern receiver on node $i failed: $json $(cat "$TMP"/send*.out)"
        sum="$(calc "$sum + $(jq -r '.received / .secs' <<< "$json")" .1f)"
    done
    RES=$sum
}

cmd_node() {
    local n="${NODE_SENDERS:-2}" pairs
    pairs=$(( 2 * n ))
    section_begin
    log "== node: $n senders on each of two agents -> the receiver on the other, both ways; $RUNS runs =="
    local ROWS=()
    row() { ROWS+=("$*"); }
    row "The node-level figure: $n sender processes on each of the two nodes, each sending $RATE_COUNT messages to the receiver on the other node, both directions at once (${TRANSPORT:-tcp} transport between the agents, --idle adaptive). wyvern's rate: the two receivers' rates summed (messages received ÷ that receiver's wall time, first to last message; \`wyvern-peer recv\` checks every payload). **Per agent core**: all messages ÷ the two agents' CPU seconds over the exchange (/proc): how many messages one agent core moves. CPU per message: every process (both agents, senders, receivers) ÷ messages. Peers: $pairs concurrent pairs ($(( 2 * pairs )) processes, the same number of senders and receivers as wyvern), each pair's rate summed, CPU per message over every process's whole life (\`times\`)."
    if [ "${NODE_BATCH:-1}" != 1 ]; then
        row ""
        row "wyvern's senders and receivers use the batch calls (\`wyvern-peer --batch $NODE_BATCH\`: \`Endpoint::send_many\` / \`recv_many\` of up to $NODE_BATCH messages, one ring publication and at most one wake-up per call); with NODE_BATCH=1 (the default) they call \`send\` / \`recv_with\` once per message."
    fi
    row ""
    row "| size | config | runs (M msg/s) | median (M msg/s) | wyvern ÷ this | per agent core, median (M msg/s per agent CPU-second) | CPU per message, median (ns) |"
    row "|---|---|---|---|---|---|---|"
    local size r a u m pc
    for size in ${NODE_SIZES:-8 64}; do
        local A=() U=() M=() PC=() CA=() CU=() CM=() AG=()
        for r in $(seq "$RUNS"); do
            wy_node adaptive "$size" "$n"; a=$RES; CA+=("$CPUMSG"); AG+=("$AGG")
            pc="$(calc "2 * $n * $RATE_COUNT / $AGENT_SECS / 1e6" .3f)"; PC+=("$pc")
            ucx_rate "$size" "$pairs"; u=$RES; CU+=("$CPUMSG")
            mpi_rate "$size" "$pairs"; m=$RES; CM+=("$CPUMSG")
            A+=("$(calc "$a/1e6" .3f)"); U+=("$(calc "$u/1e6" .3f)"); M+=("$(calc "$m/1e6" .3f)")
            log "size $size run $r: wyvern ${A[-1]} M/s (${pc} M msgs per agent CPU-second, ${CA[-1]} ns CPU/msg, aggregation $(fmt "${AG[-1]}" .1f) msgs/frame); ucx $pairs pairs ${U[-1]} M/s (${CU[-1]} ns); mpi $pairs pairs ${M[-1]} M/s (${CM[-1]} ns)"
        done
        local ma mu mm
        ma=$(median "${A[@]}"); mu=$(median "${U[@]}"); mm=$(median "${M[@]}")
        log "size $size median: wyvern $ma M/s, $(median "${PC[@]}") M per agent core; ucx $mu (ratio $(calc "$ma/$mu")); mpi $mm (ratio $(calc "$ma/$mm"))"
        row "| $size B | wyvern, ${TRANSPORT:-tcp}, $n + $n senders, 2 receivers (aggregation $(fmt "$(median "${AG[@]}")" .0f) msgs/frame) | $(join_runs "${A[@]}") | $ma | 1 | $(median "${PC[@]}") | $(median "${CA[@]}") |"
        row "| $size B | UCX tag_bw ×$pairs pairs, UCX_TLS=tcp UCX_NET_DEVICES=lo | $(join_runs "${U[@]}") | $mu | $(calc "$ma/$mu")× | — | $(median "${CU[@]}") |"
        row "| $size B | Open MPI ob1/tcp ×$pairs pairs (mpi_rate, window 64) | $(join_runs "${M[@]}") | $mm | $(calc "$ma/$mm")× | — | $(median "${CM[@]}") |"
    done
    header "node level: $n senders on each of two nodes → the receiver on the other, both ways"
    local line
    for line in "${ROWS[@]}"; do md "$line"; done
    md ""
    md "Core layout: 2 cores, nothing pinned. wyvern: $(( 2 + 2 * n + 2 )) processes (2 agents, $(( 2 * n )) senders, 2 receivers); UCX: $(( 2 * pairs )) busy-polling processes; MPI: $(( 2 * pairs )) ranks (\`--oversubscribe\`). Pool backing: $BACKING."
    md ""
    md "Commands (SIZE = ${NODE_SIZES:-8 64}; I = 0, 1; J = 1 - I):"
    md '```'
    md "wyvern agent --node-id I --nodes 127.0.0.1:P0,127.0.0.1:P1 --socket S_I --idle adaptive --block-bytes 64MiB --max-clients 8 --transport ${TRANSPORT:-tcp}"
    local b=""
    [ "${NODE_BATCH:-1}" != 1 ] && b="--batch $NODE_BATCH "
    md "wyvern-peer ${b}--socket S_I --ep 2 --sizes SIZE recv --count $(( n * RATE_COUNT ))"
    md "$n x wyvern-peer ${b}--socket S_I --sizes SIZE send --to J:2 --count $RATE_COUNT   # on both nodes, concurrently"
    md "$pairs x { UCX_TLS=tcp UCX_NET_DEVICES=lo ucx_perftest -t tag_bw -s SIZE -n $UCX_RATE_COUNT -p PORT_K -f & UCX_TLS=tcp UCX_NET_DEVICES=lo ucx_perftest 127.0.0.1 -t tag_bw -s SIZE -n $UCX_RATE_COUNT -p PORT_K -f; }"
    md "${MPIRUN_BASE[*]} -np $(( 2 * pairs )) target/bench/mpi_rate SIZE $MPI_ITERS 64"
    md '```'
}

# =============================================================== bandwidth

wy_bw() { # ARGS... -> bytes/s
    local json
    start bulk 300 "$EXE_BULK" "$@"
    wait "$LAST" || die "bulk $* failed: $(tail -3 "$TMP/bulk.out" "$TMP/bulk.err")"
    json="$(tail -1 "$TMP/bulk.out")"
    jq -e '.ok == true' >/dev/null <<< "$json" || die "bulk failed: $json"
    BACKING="$(jq -r .backing <<< "$json")"
    RES="$(jq -r '.bytes_per_s' <<< "$json")"
}

iperf_bw() { # -> bytes/s received
    local port s
    port=$(free_port)
    start iperfsrv 60 iperf3 -s -1 -B 127.0.0.1 -p "$port"
    s=$LAST
    wait_port "$port" 10
    start iperfcli 60 iperf3 -c 127.0.0.1 -p "$port" -l 1M -t "$IPERF_SECS" -J
    wait "$LAST" || die "iperf3 failed: $(tail -3 "$TMP/iperfcli.out" "$TMP/iperfcli.err")"
    finish "$s"
    RES="$(jq -r '.end.sum_received.bits_per_second / 8' "$TMP/iperfcli.out")"
}

cmd_bandwidth() {
    section_begin
    log "== bandwidth: 1 MiB messages, $RUNS runs =="
    local r z c p s i Z=() C=() P=() S=() I=()
    for r in $(seq "$RUNS"); do
        wy_bw --idle adaptive --mode zerocopy --mib "$BW_MIB"; z=$RES
        wy_bw --idle adaptive --mode copy --mib "$BW_MIB"; c=$RES
        wy_bw --idle adaptive --mode zerocopy --mib "$BW_MIB" --pin; p=$RES
        wy_bw --idle spin --mode zerocopy --mib "$BW_SPIN_MIB"; s=$RES
        iperf_bw; i=$RES
        Z+=("$(calc "$z/1e9" .3f)"); C+=("$(calc "$c/1e9" .3f)"); P+=("$(calc "$p/1e9" .3f)"); S+=("$(calc "$s/1e9" .3f)"); I+=("$(calc "$i/1e9" .3f)")
        log "run $r: wyvern zero-copy ${Z[-1]} GB/s, copy ${C[-1]}, zero-copy node-per-core ${P[-1]}, spin ${S[-1]}; iperf3 ${I[-1]} GB/s"
    done
    local mz mc mp ms mi
    mz=$(median "${Z[@]}"); mc=$(median "${C[@]}"); mp=$(median "${P[@]}"); ms=$(median "${S[@]}"); mi=$(median "${I[@]}")
    log "median: wyvern zero-copy $mz GB/s = $(calc "$mz/$mi")x iperf3 ($mi GB/s); copy $mc ($(calc "$mc/$mi")x); node-per-core $mp ($(calc "$mp/$mi")x); spin $ms ($(calc "$ms/$mi")x)"
    header "bandwidth: 1 MiB messages between two nodes over loopback TCP"
    md "GB/s = 10⁹ bytes/s of payload. wyvern: bench/bulk.rs, $BW_MIB messages of 1 MiB after 64 of warm-up, timed from the first send to the receiver's ack of the last. iperf3: \`sum_received\` of a ${IPERF_SECS} s run with 1 MiB writes. Target: ≥ 0.8× iperf3. Pool backing: $BACKING."
    md ""
    md "| config | runs (GB/s) | median (GB/s) | ÷ iperf3 | target | met |"
    md "|---|---|---|---|---|---|"
    md "| wyvern zero-copy (alloc + send_buf), --idle adaptive, unpinned | $(join_runs "${Z[@]}") | $mz | $(calc "$mz/$mi")× | ≥ 0.8× | $(met "$(calc "$mz/$mi")" '>=' 0.8) |"
    md "| wyvern copying send (Endpoint::send of a 1 MiB Vec), adaptive, unpinned | $(join_runs "${C[@]}") | $mc | $(calc "$mc/$mi")× | ≥ 0.8× | $(met "$(calc "$mc/$mi")" '>=' 0.8) |"
    md "| wyvern zero-copy, adaptive, node per core | $(join_runs "${P[@]}") | $mp | $(calc "$mp/$mi")× | | |"
    md "| wyvern zero-copy, --idle spin, unpinned ($BW_SPIN_MIB MiB) | $(join_runs "${S[@]}") | $ms | $(calc "$ms/$mi")× | | |"
    md "| iperf3 -l 1M, unpinned | $(join_runs "${I[@]}") | $mi | 1 | | |"
    md ""
    md "Core layout: 2 cores. wyvern: 4 busy threads (agent 0, agent 1, the sender and receiver threads of bulk.rs); unpinned, or *node per core* (\`--pin\`: agent 0 + sender on core 0, agent 1 + receiver on core 1). iperf3: client + server processes, unpinned."
    md ""
    md "Commands:"
    md '```'
    md "cargo bench --bench bulk -- --idle adaptive --mode zerocopy --mib $BW_MIB          # starts its two agents: --block-bytes 64MiB --max-clients 4"
    md "cargo bench --bench bulk -- --idle adaptive --mode copy --mib $BW_MIB"
    md "cargo bench --bench bulk -- --idle adaptive --mode zerocopy --mib $BW_MIB --pin"
    md "cargo bench --bench bulk -- --idle spin --mode zerocopy --mib $BW_SPIN_MIB"
    md "iperf3 -s -1 -B 127.0.0.1 -p PORT & iperf3 -c 127.0.0.1 -p PORT -l 1M -t $IPERF_SECS -J"
    md '```'
}

# ================================================================== attach

wy_attach() { # IDLE -> "p50 p99"
    local idle=$1 p0 json
    p0=$(free_port)
    RUST_LOG=warn start agent1n 120 "$BIN/wyvern" agent --node-id 0 --nodes "127.0.0.1:$p0" \
        --socket "$TMP/single.sock" --idle "$idle" --block-bytes 64MiB --max-clients 8
    AGENT_PIDS=("$LAST")
    wait_for "$TMP/agent1n.out" "wyvern agent ready" 10
    BACKING="$("$BIN/wyvern" stat -s "$TMP/single.sock" --json | jq -r .backing)"
    start attach 120 "$BIN/wyvern-peer" --socket "$TMP/single.sock" attach-loop --count "$ATTACH_COUNT"
    wait "$LAST" || die "attach-loop failed: $(tail -3 "$TMP/attach.out" "$TMP/attach.err")"
    json="$(tail -1 "$TMP/attach.out")"
    stop_agents
    RES="$(jq -r '"\(.p50_us) \(.p99_us)"' <<< "$json")"
}

cmd_attach() {
    section_begin
    log "== attach+detach, $RUNS runs =="
    local r a s f A50=() A99=() S50=() S99=() F50=() F99=()
    for r in $(seq "$RUNS"); do
        wy_attach adaptive; read -r a s <<< "$RES"; A50+=("$(fmt "$a" .1f)"); A99+=("$(fmt "$s" .1f)")
        wy_attach spin; read -r a s <<< "$RES"; S50+=("$(fmt "$a" .1f)"); S99+=("$(fmt "$s" .1f)")
        start floor 120 "$EXE_FLOOR" --count "$ATTACH_COUNT"
        wait "$LAST" || die "attach_floor failed: $(tail -3 "$TMP/floor.out" "$TMP/floor.err")"
        f="$(tail -1 "$TMP/floor.out")"
        F50+=("$(fmt "$(jq -r .p50_us <<< "$f")" .1f)"); F99+=("$(fmt "$(jq -r .p99_us <<< "$f")" .1f)")
        log "run $r: wyvern adaptive p50 ${A50[-1]} p99 ${A99[-1]} us; spin p50 ${S50[-1]} p99 ${S99[-1]} us; bare UDS floor p50 ${F50[-1]} p99 ${F99[-1]} us"
    done
    local a50 a99 s50 s99 f50 f99
    a50=$(median "${A50[@]}"); a99=$(median "${A99[@]}"); s50=$(median "${S50[@]}"); s99=$(median "${S99[@]}")
    f50=$(median "${F50[@]}"); f99=$(median "${F99[@]}")
    log "median: wyvern adaptive p50 $a50 us (x$(calc "$a50/$f50") floor), spin p50 $s50 us; floor p50 $f50 us"
    header "attach + detach of a client"
    md "\`wyvern-peer attach-loop\`: \`Client::attach\` (connect, Attach with the client's eventfd, reply with the pool and doorbell fds, map the pool) then \`detach\` (Detach → Ok, unmap, close), $ATTACH_COUNT times; p50 and p99 per run. Floor: bench/attach_floor.rs, connect + two ~100-byte request/reply round trips + close against a trivial server process (no fd passing, no mapping). Target: median < 100 µs. Pool backing: $BACKING."
    md ""
    md "| config | p50 runs (µs) | p50 median (µs) | p99 median (µs) | p50 ÷ floor | target | met |"
    md "|---|---|---|---|---|---|---|"
    md "| wyvern, --idle adaptive | $(join_runs "${A50[@]}") | $a50 | $a99 | $(calc "$a50/$f50")× | < 100 µs | $(met "$a50" '<=' 100) |"
    md "| wyvern, --idle spin | $(join_runs "${S50[@]}") | $s50 | $s99 | $(calc "$s50/$f50")× | < 100 µs | $(met "$s50" '<=' 100) |"
    md "| bare Unix-socket floor | $(join_runs "${F50[@]}") | $f50 | $f99 | 1 | | |"
    md ""
    md "Core layout: 2 cores, unpinned: one agent (single node) and one client process (plus the floor's server process)."
    md ""
    md "Commands:"
    md '```'
    md "wyvern agent --node-id 0 --nodes 127.0.0.1:P --socket S --idle adaptive|spin --block-bytes 64MiB --max-clients 8"
    md "wyvern-peer --socket S attach-loop --count $ATTACH_COUNT"
    md "cargo bench --bench attach_floor -- --count $ATTACH_COUNT"
    md '```'
}

# ===================================================================== hop

cmd_hop() {
    section_begin
    log "== hop: cargo bench --bench hop (RUNS=$RUNS) =="
    RUNS="$RUNS" start hop 600 cargo bench --quiet --manifest-path "$ROOT/Cargo.toml" "${FEAT_ARGS[@]}" --bench hop
    wait "$LAST" || die "hop bench failed: $(tail -5 "$TMP/hop.err")"
    cat "$TMP/hop.out" >&2
    local json
    json="$(grep '^{' "$TMP/hop.out" | tail -1)"
    header "client→agent hop vs cache-line round trip"
    md "bench/hop.rs: 8 B messages to the client's own endpoint through a single \`wyvern agent --idle spin\`; hop = RTT/2. Limit: two threads ping-ponging two AtomicU64 on separate 128-byte lines, RTT/2. Target: hop ≤ 3× cache line."
    md ""
    md "| | runs (ns) | median (ns) |"
    md "|---|---|---|"
    md "| client→agent hop | $(jq -r '.hop_ns | map(.*10|round/10) | join(" / ")' <<< "$json") | $(jq -r '.hop_ns_median*10|round/10' <<< "$json") |"
    md "| cache line one way | $(jq -r '.cacheline_ns | map(.*10|round/10) | join(" / ")' <<< "$json") | $(jq -r '.cacheline_ns_median*10|round/10' <<< "$json") |"
    md "| **ratio** | | **$(jq -r '.ratio*100|round/100' <<< "$json")×** (target ≤ 3×: $(jq -r 'if .met then "met" else "MISSED" end' <<< "$json")) |"
    md ""
    md "Core layout: $(grep '^config:' "$TMP/hop.out" | sed 's/^config: //')."
    md ""
    md "Command: \`cargo build --release --bins && RUNS=$RUNS cargo bench --bench hop\`"
}

# =================================================================== sweep
#
# The sweep is a plan of cells. A cell is one measurement: one system, one
# size, one run, one metric. For each size and each run, in this order:
#   latency_us  wyvern-tcp, wyvern-udp, ucx (tag_lat), mpi (bench/mpi_lat.c),
#               sockperf (ping-pong, sizes <= SOCKPERF_MAX_SIZE)
#   rate_msgs   1 -> 1: wyvern-tcp, wyvern-udp, ucx (tag_bw), mpi (mpi_rate.c,
#               1 pair), iperf3 (a byte stream, sizes >= IPERF_MIN_SIZE)
#   rate4_msgs  4 -> 1: wyvern-tcp, wyvern-dpdk (4 senders on node 0, 1
#               receiver on node 1), ucx (4 tag_bw pairs), mpi (mpi_rate.c, 4
#               pairs), rates summed
# (wyvern-dpdk right after wyvern-udp in the first two), and after every size,
# once per run: frames_s (size 1514): testpmd and wyvern-dpdk, alternating.
# so every system at a size sees the same machine noise. A cell runs in a
# subshell: a peer that fails at one size costs that cell (recorded as nan,
# with the reason in the CSV's note column), not the sweep.

# Message counts shrink with size so that a cell takes about a second; every
# system in a cell gets the same count (4 -> 1: count / 4 per sender or pair;
# an MPI pair always count / 4, see run_cell).
# (The sweep's per-cell bookkeeping uses awk: python3 takes ~0.1 s to start
# on this VM, ~1 s per cell under load.)
clamp() { awk -v v="$1" -v lo="$2" -v hi="$3" 'BEGIN { v = int(v); if (v > hi) v = hi; if (v < lo) v = lo; print v }'; }
lat_count() { clamp "$(awk -v z="$1" 'BEGIN { print 4e8 / (z + 4096) }')" 50 "$LAT_COUNT"; }
rate_count() { clamp "$(awk -v z="$1" 'BEGIN { print 2e9 / (z + 64) }')" 200 "$RATE_COUNT"; }
# The dpdk transport moves 0.3 - 0.6 GB/s over net_af_packet on a veth pair
# (a fifth of loopback TCP or less): its rate cells carry at most
# DPDK_RATE_BYTES (400 MB) so that they too take about a second (same count
# as the others up to ~800 B, fewer above), and its ping-pongs at most
# DPDK_LAT_BYTES (200 MB both ways: 95 round trips at 1 MiB, where
# lat_count's 381 took 9 s); the CSV's note gives the count.
dpdk_lat_count() {
    local lc; lc=$(lat_count "$1")
    clamp "$(awk -v z="$1" -v b="$DPDK_LAT_BYTES" 'BEGIN { print b / (2 * (z + 64)) }')" 20 "$lc"
}
dpdk_rate_count() {
    local rc; rc=$(rate_count "$1")
    clamp "$(awk -v z="$1" -v b="$DPDK_RATE_BYTES" 'BEGIN { print b / (z + 64) }')" 50 "$rc"
}
# mpi_rate keeps WINDOW messages of SIZE in flight, each from its own slot of
# one buffer: window 64 (osu_mbw_mr's), fewer above 1 MiB so that a rank
# holds at most 64 MiB.
mpi_window() { clamp "$(awk -v z="$1" 'BEGIN { print 67108864 / (z > 0 ? z : 1) }')" 1 64; }
# acalc EXPR [FORMAT]: awk arithmetic, printf FORMAT (default .2f)
acalc() { awk "BEGIN { printf \"%${2:-.2f}\", $1 }"; }
# positive NUMBER: true if NUMBER is a finite number > 0
positive() { awk -v v="$1" 'BEGIN { exit !(v ~ /^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$/ && v + 0 > 0) }'; }
mmss() { awk -v x="$1" 'BEGIN { s = int(x + 0.5); if (s < 0) s = 0; printf "%d:%02d", s / 60, s % 60 }'; }

wy_rate_n() { # SIZE COUNT_PER_SENDER SENDERS -> msg/s (messages received / receiver's wall time)
    local size=$1 count=$2 n=$3 r k pids=() json
    agents adaptive free
    # --raw: no pattern generated or checked (lengths and counts only), as ucx_perftest.
    start recv 120 "$BIN/wyvern-peer" --socket "$SOCK1" --ep 2 --raw --sizes "$size" recv --count $(( n * count ))
    r=$LAST
    wait_for "$TMP/recv.out" ready 10
    for k in $(seq "$n"); do
        start "send$k" 120 "$BIN/wyvern-peer" --socket "$SOCK0" --raw --sizes "$size" send --to 1:2 --count "$count"
        pids+=("$LAST")
    done
    for k in "${pids[@]}"; do finish "$k"; done
    finish "$r"
    stop_agents
    json="$(tail -1 "$TMP/recv.out")"
    jq -e '.ok == true' >/dev/null <<< "$json" || die "wyvern receiver failed: $json $(tail -2 "$TMP/send1.out" "$TMP/send1.err")"
    RES="$(jq -r '.received / .secs' <<< "$json")"
}

# wy_frames MIB -> frames/s the receiving dpdk agent took from its port
# while one sender streamed MIB messages of 1 MiB (--raw), over the
# receiver's time (bench/dpdk_veth.sh's figure: every data frame is full
# size, 1514 B); XTRA = payload MB/s.
wy_frames() {
    local mib=$1 r f0 f1 json
    TRANSPORT=dpdk agents adaptive free
    f0="$("$BIN/wyvern" stat -s "$SOCK1" --json | jq -r '.transport.frames_rx // 0')"
    start recv 120 "$BIN/wyvern-peer" --socket "$SOCK1" --ep 2 --raw --sizes 1048576 recv --count "$mib"
    r=$LAST
    wait_for "$TMP/recv.out" ready 10
    start send1 120 "$BIN/wyvern-peer" --socket "$SOCK0" --raw --sizes 1048576 send --to 1:2 --count "$mib"
    finish "$LAST"
    finish "$r"
    f1="$("$BIN/wyvern" stat -s "$SOCK1" --json | jq -r '.transport.frames_rx // 0')"
    stop_agents
    json="$(tail -1 "$TMP/recv.out")"
    jq -e '.ok == true' >/dev/null <<< "$json" || die "wyvern receiver failed: $json $(tail -2 "$TMP/send1.out" "$TMP/send1.err")"
    RES="$(jq -r --argjson f "$((f1 - f0))" '$f / .secs' <<< "$json")"
    XTRA="$(jq -r --argjson m "$mib" '$m * 1048576 / .secs / 1e6 | . * 10 | round / 10' <<< "$json")"
}

# testpmd_frames -> the median steady Rx-pps of `dpdk-testpmd
# --forward-mode=rxonly` in namespace 1 while `--forward-mode=txonly
# --txpkts=1514` runs TESTPMD_SECS in namespace 0 (the first 2 busy seconds
# dropped), as bench/dpdk_veth.sh. No agent runs meanwhile (cells run one at
# a time), so nothing else reads veth0.
testpmd_frames() {
    local rx
    timeout $(( TESTPMD_SECS + 20 )) ip netns exec "${DPDK_NS}1" dpdk-testpmd $EAL_COMMON --lcores='0@1,1@1' \
        --file-prefix="${DPDK_NS}rx" --vdev=net_af_packet0,iface=veth0 -- \
        --forward-mode=rxonly --auto-start --stats-period=1 --nb-cores=1 --total-num-mbufs=8192 \
        < /dev/null > "$TMP/tpmdrx.out" 2>&1 &
    rx=$!
    sleep 2
    timeout "$TESTPMD_SECS" ip netns exec "${DPDK_NS}0" dpdk-testpmd $EAL_COMMON --lcores='0@0,1@0' \
        --file-prefix="${DPDK_NS}tx" --vdev=net_af_packet0,iface=veth0 -- \
        --forward-mode=txonly --txpkts=1514 --auto-start --stats-period=1 --nb-cores=1 --total-num-mbufs=8192 \
        < /dev/null > "$TMP/tpmdtx.out" 2>&1 || true
    sleep 1
    kill -INT "$rx" 2>/dev/null || true
    finish "$rx"
    RES="$(grep -o 'Rx-pps: *[0-9]*' "$TMP/tpmdrx.out" | awk '$2 > 0 {n++; if (n > 2) print $2}' | sort -n \
        | awk '{a[NR] = $1} END {if (NR) print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}')"
    [ -n "$RES" ] || die "no steady Rx-pps from testpmd rxonly: $(tail -3 "$TMP/tpmdrx.out" "$TMP/tpmdtx.out" | tr '\n' ' ')"
}

ucx_rate_n() { # SIZE COUNT_PER_PAIR PAIRS -> summed msg/s of PAIRS concurrent tag_bw pairs
    local size=$1 count=$2 n=$3 k v ports=() srv=() cli=() sum=0
    for k in $(seq "$n"); do
        ports+=("$(free_port)")
        UCX_TLS=tcp UCX_NET_DEVICES=lo start "ucxbws$k" 120 ucx_perftest -t tag_bw -s "$size" -n "$count" -p "${ports[-1]}" -f
        srv+=("$LAST")
    done
    for k in "${ports[@]}"; do wait_port "$k" 10; done
    for k in $(seq "$n"); do
        UCX_TLS=tcp UCX_NET_DEVICES=lo start "ucxbwc$k" 120 ucx_perftest 127.0.0.1 -t tag_bw -s "$size" -n "$count" \
            -p "${ports[$((k-1))]}" -f
        cli+=("$LAST")
    done
    for k in "${cli[@]}" "${srv[@]}"; do finish "$k"; done
    for k in $(seq "$n"); do
        # columns: iterations, overhead 50%/avg/overall, MB/s avg/overall, msg/s avg/overall
        v=$(awk '$1 ~ /^[0-9]+$/ && NF >= 8 {v=$8} END {print v}' "$TMP/ucxbwc$k.out")
        [ -n "$v" ] || die "ucx_perftest tag_bw pair $k failed: $(tail -3 "$TMP/ucxbwc$k.out" "$TMP/ucxbwc$k.err")"
        sum=$(acalc "$sum + $v" .1f)
    done
    RES=$sum
}

mpi_rate_n() { # SIZE MSGS_PER_PAIR PAIRS -> summed msg/s (mpi_rate's rate_sum)
    local size=$1 msgs=$2 n=$3 win iters json
    [ -x "$ROOT/target/bench/mpi_rate" ] || die "target/bench/mpi_rate is missing (no mpicc?)"
    win=$(mpi_window "$size")
    iters=$(( (msgs + win - 1) / win )); [ "$iters" -ge 2 ] || iters=2
    start mpi 120 "${MPIRUN_BASE[@]}" -np $(( 2 * n )) "$ROOT/target/bench/mpi_rate" "$size" "$iters" "$win"
    wait "$LAST" || die "mpirun mpi_rate failed: $(tail -3 "$TMP/mpi.out" "$TMP/mpi.err")"
    json="$(grep '^{' "$TMP/mpi.out" | tail -1)"
    RES="$(jq -r '.rate_sum' <<< "$json")"
}

mpi_latency() { # SIZE COUNT -> half round trip p50 in us; XTRA = mean half round trip (osu_latency's figure)
    local size=$1 count=$2 json
    [ -x "$ROOT/target/bench/mpi_lat" ] || die "target/bench/mpi_lat is missing (no mpicc?)"
    start mpilat 120 "${MPIRUN_BASE[@]}" -np 2 "$ROOT/target/bench/mpi_lat" "$size" "$count" $(( count / 10 ))
    wait "$LAST" || die "mpirun mpi_lat failed: $(tail -3 "$TMP/mpilat.out" "$TMP/mpilat.err")"
    json="$(grep '^{' "$TMP/mpilat.out" | tail -1)"
    RES="$(jq -r '.half_rtt_p50_us' <<< "$json")"
    XTRA="$(jq -r '.half_rtt_mean_us' <<< "$json")"
}

sockperf_latency() { # SIZE -> p50 in us of sockperf's latency (RTT/2); XTRA = its mean
    local size=$1 m port s
    m=$(( size < 14 ? 14 : size ))   # sockperf's smallest message is 14 B
    port=$(free_port)
    # the server's receive buffer (-m) must hold the largest message (default 65507)
    start spsrv 60 sockperf server --tcp -i 127.0.0.1 -p "$port" -m $(( m > 65507 ? m : 65507 ))
    s=$LAST
    wait_port "$port" 10 "$s"
    start spcli 60 sockperf ping-pong --tcp -i 127.0.0.1 -p "$port" -m "$m" -t "$SOCKPERF_SECS"
    wait "$LAST" || die "sockperf ping-pong failed: $(tail -3 "$TMP/spcli.out" "$TMP/spcli.err")"
    kill -TERM "$s" 2>/dev/null || true
    finish "$s"
    RES="$(cat "$TMP/spcli.out" "$TMP/spcli.err" | sed -n 's/.*percentile 50\.000 = *\([0-9.]*\).*/\1/p' | tail -1)"
    XTRA="$(cat "$TMP/spcli.out" "$TMP/spcli.err" | sed -n 's/.*avg-latency=\([0-9.]*\).*/\1/p' | tail -1)"
    [ -n "$RES" ] || die "no sockperf result: $(tail -5 "$TMP/spcli.out")"
}

iperf_len() { echo $(( $1 < 1048576 ? $1 : 1048576 )); }   # iperf3's largest -l is 1 MiB
iperf_rate() { # SIZE -> received bytes/s / SIZE (a byte stream, writes of min(SIZE, 1 MiB))
    local size=$1 l port s
    l=$(iperf_len "$size")
    port=$(free_port)
    start iperfsrv 60 iperf3 -s -1 -B 127.0.0.1 -p "$port"
    s=$LAST
    wait_port "$port" 10 "$s"
    start iperfcli 60 iperf3 -c 127.0.0.1 -p "$port" -l "$l" -t "$IPERF_SWEEP_SECS" -J
    wait "$LAST" || die "iperf3 failed: $(tail -3 "$TMP/iperfcli.out" "$TMP/iperfcli.err")"
    finish "$s"
    RES="$(jq -r --argjson z "$size" '.end.sum_received.bits_per_second / 8 / $z' "$TMP/iperfcli.out")"
}

# kill_jobs: TERM, then KILL, this shell's own still-running background jobs.
kill_jobs() {
    local p live
    live="$(jobs -pr)"
    for p in $live; do kill -TERM "$p" 2>/dev/null || true; done
    for p in $live; do
        for _ in $(seq 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
}

# cell FN ARGS...: one measurement, in a subshell that kills its own
# processes when it ends. Sets RES (nan on failure), XTRA, CELL_ERR.
cell() {
    local pid rc=0
    rm -f "$TMP/cell.res"
    (
        trap kill_jobs EXIT
        trap 'exit 143' TERM
        RES=""; XTRA=""
        "$@"
        printf '%s %s\n' "$RES" "${XTRA:-}" > "$TMP/cell.res"
    ) 2> "$TMP/cell.err" &
    pid=$!
    wait "$pid" || rc=$?
    RES=nan; XTRA=""; CELL_ERR=""
    if [ "$rc" = 0 ] && [ -s "$TMP/cell.res" ]; then read -r RES XTRA < "$TMP/cell.res"; fi
    if ! positive "$RES"; then
        RES=nan
        CELL_ERR="$(sed 's/^run.sh: //' "$TMP/cell.err" | tr '\n",' '   ' | cut -c1-200 | sed 's/ *$//')"
        [ -n "$CELL_ERR" ] || CELL_ERR="exit status $rc, no result"
    fi
}

# A-priori seconds per cell on a quiet 2-core machine (process start-up
# included; counts are sized for about a second of work), for the estimate
# printed at the start. The ETA scales them by how fast the cells so far went.
est_secs() { # METRIC SYSTEM
    case "$1:$2" in
        latency_us:wyvern-dpdk|rate_msgs:wyvern-dpdk|rate4_msgs:wyvern-dpdk) echo 2 ;;   # before latency_us:*; 1.6 - 1.8 s a cell in the loaded 585bf46 run
        latency_us:sockperf) echo 3.4 ;;        # -t 1 plus ~0.4 s warm-up and ~2 s of start and stop
        latency_us:ucx) echo 1.2 ;;
        latency_us:mpi) echo 1.5 ;;
        latency_us:*) echo 1.5 ;;
        rate_msgs:iperf3) echo $(( IPERF_SWEEP_SECS + 1 )) ;;
        rate_msgs:mpi|rate4_msgs:mpi) echo 3 ;;
        rate_msgs:ucx|rate4_msgs:ucx) echo 2 ;;
        frames_s:testpmd) echo $(( TESTPMD_SECS + 5 )) ;;
        frames_s:wyvern-dpdk) echo 3 ;;
        *) echo 1.5 ;;
    esac
}

# The peers this machine can run (a missing tool drops that peer, loudly).
sweep_peers() {
    PEERS_OK=" wyvern-tcp wyvern-udp "
    command -v ucx_perftest >/dev/null && PEERS_OK+="ucx " || log "sweep: ucx_perftest not found: UCX left out (scripts/install-deps.sh bench)"
    if [ -x "$ROOT/target/bench/mpi_rate" ] && [ -x "$ROOT/target/bench/mpi_lat" ] && command -v mpirun >/dev/null; then
        PEERS_OK+="mpi "
    else
        log "sweep: mpicc/mpirun not found: MPI left out (scripts/install-deps.sh bench)"
    fi
    command -v sockperf >/dev/null && PEERS_OK+="sockperf " || log "sweep: sockperf not found: left out"
    command -v iperf3 >/dev/null && PEERS_OK+="iperf3 " || log "sweep: iperf3 not found: left out"
    sweep_dpdk
}

# sweep_dpdk: wyvern-dpdk (and testpmd) join the sweep where they can run: a
# wyvern built with --features dpdk, root, and network namespaces that
# scripts/testbed.sh can make (tried, not guessed: two namespaces named
# ws<pid>-0, ws<pid>-1 joined by a veth pair, removed by the EXIT trap).
# Otherwise DPDK_SKIP says why and the sweep goes on without them.
sweep_dpdk() {
    local ns="ws$$-"
    if [ "$BUILT_FEATURES" != dpdk ]; then
        DPDK_SKIP="wyvern was built without the dpdk feature (no libdpdk found by pkg-config, or WYVERN_FEATURES left it out)"
    elif [ "$(id -u)" != 0 ]; then
        DPDK_SKIP="needs root (network namespaces, packet sockets)"
    elif ! command -v ip >/dev/null; then
        DPDK_SKIP="no ip (iproute2)"
    elif ! TESTBED_PREFIX="$ns" TESTBED_HUGEPAGES=skip timeout 60 "$ROOT/scripts/testbed.sh" up 2 > "$TMP/testbed.log" 2>&1; then
        DPDK_SKIP="scripts/testbed.sh up 2 failed: $(grep -m1 -i 'error\|cannot\|denied' "$TMP/testbed.log" | cut -c1-160)"
        TESTBED_PREFIX="$ns" TESTBED_HUGEPAGES=skip timeout 60 "$ROOT/scripts/testbed.sh" down > /dev/null 2>&1 || true
    fi
    if [ -n "$DPDK_SKIP" ]; then
        log "sweep: skips dpdk: $DPDK_SKIP"
        return 0
    fi
    DPDK_NS="$ns"
    PEERS_OK+="wyvern-dpdk "
    if command -v dpdk-testpmd >/dev/null; then
        PEERS_OK+="testpmd "
    else
        log "sweep: dpdk-testpmd not found: the frame-rate reference is left out (apt-get install dpdk)"
    fi
    log "sweep: dpdk on namespaces ${DPDK_NS}0, ${DPDK_NS}1 (one veth pair, net_af_packet)"
}

sweep_plan() { # -> PLAN: "SIZE RUN METRIC SYSTEM" per cell, in the order they run
    local size r sys
    PLAN=()
    if [ -n "${SWEEP_SYSTEMS:-}" ]; then   # keep only these (a partial sweep, for checks)
        local keep=" " p
        for p in $PEERS_OK; do [[ " $SWEEP_SYSTEMS " == *" $p "* ]] && keep+="$p "; done
        PEERS_OK="$keep"
    fi
    for size in "$@"; do
        for r in $(seq "$RUNS"); do
            for sys in wyvern-tcp wyvern-udp wyvern-dpdk ucx mpi sockperf; do
                [[ "$PEERS_OK" == *" $sys "* ]] || continue
                [ "$sys" = sockperf ] && [ "$size" -gt "$SOCKPERF_MAX_SIZE" ] && continue
                PLAN+=("$size $r latency_us $sys")
            done
            for sys in wyvern-tcp wyvern-udp wyvern-dpdk ucx mpi iperf3; do
                [[ "$PEERS_OK" == *" $sys "* ]] || continue
                [ "$sys" = iperf3 ] && [ "$size" -lt "$IPERF_MIN_SIZE" ] && continue
                PLAN+=("$size $r rate_msgs $sys")
            done
            for sys in wyvern-tcp wyvern-dpdk ucx mpi; do
                [[ "$PEERS_OK" == *" $sys "* ]] || continue
                PLAN+=("$size $r rate4_msgs $sys")
            done
        done
    done
    # frames/s at full-size (1514 B) frames on the veth pair: wyvern-dpdk and
    # testpmd, once per run, alternating which goes first
    if [[ "$PEERS_OK" == *" wyvern-dpdk "* ]]; then
        for r in $(seq "$RUNS"); do
            if [ $(( r % 2 )) = 1 ]; then set -- testpmd wyvern-dpdk; else set -- wyvern-dpdk testpmd; fi
            for sys in "$@"; do
                [[ "$PEERS_OK" == *" $sys "* ]] || continue
                PLAN+=("1514 $r frames_s $sys")
            done
        done
    fi
}

# run_cell SIZE METRIC SYSTEM -> RES, XTRA, CELL_ERR
run_cell() {
    local size=$1 metric=$2 sys=$3 lc rc n=$SWEEP_SENDERS
    lc=$(lat_count "$size"); rc=$(rate_count "$size")
    case "$metric:$sys" in
        latency_us:wyvern-tcp) TRANSPORT=tcp cell wy_latency adaptive free "$lc" "$size" ;;
        latency_us:wyvern-udp) TRANSPORT=udp cell wy_latency adaptive free "$lc" "$size" ;;
        latency_us:wyvern-dpdk) TRANSPORT=dpdk cell wy_latency adaptive free "$(dpdk_lat_count "$size")" "$size" ;;
        latency_us:ucx) cell ucx_latency "$lc" "$size" ;;
        latency_us:mpi) cell mpi_latency "$size" "$lc" ;;
        latency_us:sockperf) cell sockperf_latency "$size" ;;
        rate_msgs:wyvern-tcp) TRANSPORT=tcp cell wy_rate_n "$size" "$rc" 1 ;;
        rate_msgs:wyvern-udp) TRANSPORT=udp cell wy_rate_n "$size" "$rc" 1 ;;
        rate_msgs:wyvern-dpdk) TRANSPORT=dpdk cell wy_rate_n "$size" "$(dpdk_rate_count "$size")" 1 ;;
        rate_msgs:ucx) cell ucx_rate_n "$size" "$rc" 1 ;;
        # an MPI pair moves rate_count/4 messages, 1 -> 1 as in 4 -> 1: one
        # pair runs at 20 - 80 k msg/s at <= 4 KiB here, so rate_count would
        # take 6 - 25 s (rate_count/4 is still >= 2000 windows of 64 there)
        rate_msgs:mpi) cell mpi_rate_n "$size" $(( (rc + n - 1) / n )) 1 ;;
        rate_msgs:iperf3) cell iperf_rate "$size" ;;
        rate4_msgs:wyvern-tcp) TRANSPORT=tcp cell wy_rate_n "$size" $(( (rc + n - 1) / n )) "$n" ;;
        rate4_msgs:wyvern-dpdk) TRANSPORT=dpdk cell wy_rate_n "$size" $(( ($(dpdk_rate_count "$size") + n - 1) / n )) "$n" ;;
        frames_s:wyvern-dpdk) cell wy_frames "$DPDK_FRAMES_MIB" ;;
        frames_s:testpmd) cell testpmd_frames ;;
        rate4_msgs:ucx) cell ucx_rate_n "$size" $(( (rc + n - 1) / n )) "$n" ;;
        rate4_msgs:mpi) cell mpi_rate_n "$size" $(( (rc + n - 1) / n )) "$n" ;;
        *) die "no such cell: $metric $sys" ;;
    esac
}

# cell_note METRIC SIZE SYSTEM: what the CSV's note column says about a row
# beyond its runs (per-run extras, sizes measured differently, failures).
cell_note() {
    local metric=$1 size=$2 sys=$3 key="$1|$2|$3" x note=""
    x="${SWX[$key]:-}"; x="${x% }"
    case "$metric:$sys" in
        latency_us:mpi)
            note="p50"
            [ -z "$x" ] || note+="; mean half round trip per run (osu_latency's figure): $x" ;;
        latency_us:sockperf)
            note="p50 of sockperf's RTT/2${x:+; mean per run: $x}"
            [ "$size" -lt 14 ] && note="measured at 14 B (sockperf's smallest message); $note" ;;
        rate_msgs:iperf3) note="byte stream: received bytes/s / size; iperf3 -l $(iperf_len "$size")" ;;
        rate_msgs:mpi) note="window $(mpi_window "$size")" ;;
        rate4_msgs:mpi) note="$SWEEP_SENDERS pairs, rate_sum; window $(mpi_window "$size")" ;;
        rate4_msgs:ucx) note="$SWEEP_SENDERS pairs, msg/s summed" ;;
        rate4_msgs:wyvern-tcp) note="$SWEEP_SENDERS senders on node 0, 1 receiver on node 1" ;;
        latency_us:wyvern-dpdk)
            note="two namespaces, one veth pair, net_af_packet; agents on CPU 0 and 1; $(dpdk_lat_count "$size") round trips"
            [ "$(dpdk_lat_count "$size")" = "$(lat_count "$size")" ] || note+=" (others: $(lat_count "$size"))" ;;
        rate_msgs:wyvern-dpdk)
            note="two namespaces, one veth pair, net_af_packet; $(dpdk_rate_count "$size") messages"
            [ "$(dpdk_rate_count "$size")" = "$(rate_count "$size")" ] || note+=" (others: $(rate_count "$size"))" ;;
        rate4_msgs:wyvern-dpdk)
            note="$SWEEP_SENDERS senders on node 0, 1 receiver on node 1; veth pair; $(( ($(dpdk_rate_count "$size") + SWEEP_SENDERS - 1) / SWEEP_SENDERS )) messages per sender" ;;
        frames_s:wyvern-dpdk) note="frames_rx of the receiving agent / receiver's time; $DPDK_FRAMES_MIB x 1 MiB (--raw)${x:+; MB/s per run: $x}" ;;
        frames_s:testpmd) note="median steady Rx-pps of rxonly (ns 1) while txonly --txpkts=1514 runs ${TESTPMD_SECS} s (ns 0)" ;;
    esac
    [ -z "${SWE[$key]:-}" ] || note="${note:+$note; }FAILED ${SWE[$key]%. }"
    printf '%s' "$note"
}

cmd_sweep() {
    section_begin
    local out="$SWEEP_OUT" sizes=() csv size r metric sys key k=0 total
    read -r -a sizes <<< "$SWEEP_SIZES"
    local t_start t0 t1 dt est_total=0 est_done=0 est_left eta v line unit fm
    mkdir -p "$out"
    csv="$out/sweep.csv"
    sweep_peers
    sweep_plan "${sizes[@]}"
    total=${#PLAN[@]}
    for line in "${PLAN[@]}"; do
        read -r _ _ metric sys <<< "$line"
        est_total=$(acalc "$est_total + $(est_secs "$metric" "$sys")" .1f)
    done
    log "== sweep: sizes ${sizes[*]} B, $RUNS runs; systems:${PEERS_OK% } =="
    log "sweep: $total cells (latency, 1->1 rate, $SWEEP_SENDERS->1 rate${DPDK_NS:+, frames/s on the veth pair}); results to $out; estimate ~$(mmss "$est_total") (min:s) on a quiet 2-core machine, longer under load; each cell is bounded by timeouts"
    if [ "${SWEEP_PLAN_ONLY:-0}" = 1 ]; then
        printf '%s\n' "${PLAN[@]}" | awk '{n[$3 " " $4]++} END {for (k in n) print "  " k ": " n[k] " cells"}' | sort >&2
        exit 0
    fi
    echo "metric,size,system,runs,median,secs,note" > "$csv"
    declare -A SWV=() SWX=() SWT=() SWE=() SWDONE=()
    t_start=$(date +%s.%N)
    local i=0
    for i in $(seq 0 $(( total - 1 ))); do
        read -r size r metric sys <<< "${PLAN[$i]}"
        key="$metric|$size|$sys"
        t0=$(date +%s.%N)
        run_cell "$size" "$metric" "$sys"
        t1=$(date +%s.%N)
        dt=$(acalc "$t1 - $t0" .1f)
        k=$(( k + 1 ))
        case $metric in
            latency_us) unit="µs (p50 half round trip)"; fm=.2f ;;
            frames_s) unit="frames/s (1514 B)"; fm=.0f ;;
            *) unit="msg/s"; fm=.0f ;;
        esac
        v=nan; [ "$RES" = nan ] || v=$(acalc "$RES" "$fm")
        SWV[$key]+="$v "
        [ -z "$XTRA" ] || SWX[$key]+="$XTRA "
        SWT[$key]+="$dt "
        [ -z "$CELL_ERR" ] || SWE[$key]+="run $r: $CELL_ERR. "
        est_done=$(acalc "$est_done + $(est_secs "$metric" "$sys")" .1f)
        est_left=$(acalc "$est_total - $est_done" .1f)
        eta=$(acalc "$est_left * ($t1 - $t_start) / $est_done" .0f)
        log "[sweep $k/$total · $(mmss "$(acalc "$t1 - $t_start")") elapsed · ETA $(mmss "$eta")] $size B run $r/$RUNS ${metric%_*} $sys: $v $unit (${dt} s)${CELL_ERR:+ FAILED: $CELL_ERR}"
        # after the last cell of a size: its rows into the CSV, and a summary
        if [ "$i" = $(( total - 1 )) ] || [ "$(cut -d' ' -f1 <<< "${PLAN[$((i + 1))]}")" != "$size" ]; then
            local summary="" part gm=$metric
            for metric in latency_us rate_msgs rate4_msgs frames_s; do
                part=""
                for sys in wyvern-tcp wyvern-udp wyvern-dpdk ucx mpi sockperf iperf3 testpmd; do
                    key="$metric|$size|$sys"
                    [ -n "${SWV[$key]:-}" ] && [ -z "${SWDONE[$key]:-}" ] || continue
                    SWDONE[$key]=1
                    # shellcheck disable=SC2046
                    v=$(median $(tr ' ' '\n' <<< "${SWV[$key]}" | grep -v '^nan$' | grep . || true))
                    [ -n "$v" ] || v=nan
                    echo "$metric,$size,$sys,\"${SWV[$key]% }\",$v,\"${SWT[$key]% }\",\"$(cell_note "$metric" "$size" "$sys" | tr '"' "'")\"" >> "$csv"
                    part+=" $sys=$v"
                done
                [ -z "$part" ] || summary+="${summary:+ |}$part"
            done
            if [ "$gm" = frames_s ]; then
                log "sweep: frames done; medians, frames/s at 1514 B:$summary"
            else
                log "sweep: $size B done; medians: latency µs |$summary (rate msg/s: 1->1 | ${SWEEP_SENDERS}->1)"
            fi
        fi
    done
    # The system's matplotlib (python3-matplotlib, installed by
    # `scripts/install-deps.sh test`) when there is one, else a private venv.
    local plot_py=/usr/bin/python3
    if ! "$plot_py" -c 'import matplotlib' 2>/dev/null; then
        plot_py="$ROOT/target/benchenv/bin/python"
        if [ ! -x "$plot_py" ]; then
            log "creating target/benchenv for the plots (matplotlib)"
            python3 -m venv "$ROOT/target/benchenv" && "$ROOT/target/benchenv/bin/pip" install -q matplotlib \
                || die "cannot install matplotlib into target/benchenv"
        fi
    fi
    "$plot_py" "$ROOT/bench/plot.py" "$csv" "$out" \
        --stamp "data: git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u +%F) (bench/run.sh sweep, RUNS=$RUNS)" \
        || die "plotting failed"
    log "sweep: $total cells in $(mmss "$(acalc "$(date +%s.%N) - $t_start")") (estimate was $(mmss "$est_total"))"
    header "sweep: latency, one-to-one and ${SWEEP_SENDERS}-to-one message rate over message sizes"
    md "Two agents on loopback, \`--idle adaptive\`, unpinned (2 cores shared by agent 0, agent 1 and the client processes). wyvern over TCP and over UDP (its own reliability; \`--packet-bytes $PACKET_BYTES\`, a jumbo-frame MTU) against UCX $(ucx_info -v 2>/dev/null | sed -n 's/.*version=\([^ ]*\).*/\1/p;s/^# Version \([^ ]*\).*/\1/p' | head -1) \`ucx_perftest\` (UCX_TLS=tcp UCX_NET_DEVICES=lo), Open MPI $(mpirun --version 2>/dev/null | sed -n 's/.*Open MPI) \([^ ]*\).*/\1/p' | head -1) (ob1, tcp btl on lo), sockperf and iperf3 over kernel TCP loopback, one cell after the other in each run so that noise hits all of them. **Latency** is the p50 of the half round trip for every system: \`wyvern-peer ping\`/\`echo\` \`half_rtt_p50_us\`; \`tag_lat\`'s 50.0%ile column; bench/mpi_lat.c (osu_latency-style ping-pong, each round trip timed; the CSV also has its mean, osu_latency's figure); \`sockperf ping-pong --tcp\` p50 (sockperf reports RTT/2; its smallest message is 14 B, so its 8 B cell is measured at 14 B; up to $SOCKPERF_MAX_SIZE B), the kernel-TCP floor. **1 → 1 rate**: one sender, one receiver: \`wyvern-peer --raw send\`/\`recv\` (payloads neither generated nor checked, lengths and counts checked, as \`tag_bw\` does), \`tag_bw\` overall msg/s, bench/mpi_rate.c with 1 pair (osu_mbw_mr-style windows of 64, fewer above 1 MiB), and from $IPERF_MIN_SIZE B iperf3 \`-l SIZE\` (at most 1 MiB), which is a byte stream without message boundaries: its received bytes/s ÷ size. **${SWEEP_SENDERS} → 1 rate**: ${SWEEP_SENDERS} \`wyvern-peer send\` processes on node 0 → one \`recv\` on node 1 (messages received / receiver's wall time), against ${SWEEP_SENDERS} concurrent \`tag_bw\` pairs and mpi_rate with ${SWEEP_SENDERS} pairs, the peers' rates summed. Every system in a cell moves the same number of messages (shrinking with size: \`lat_count\`, \`rate_count\` in run.sh; ${SWEEP_SENDERS} → 1: a quarter per sender or pair), except that an MPI pair always moves \`rate_count\`/${SWEEP_SENDERS} (one pair runs at 20 – 80 k msg/s at ≤ 4 KiB on this VM). The wyvern senders use the copying \`Endpoint::send\`. Medians of $RUNS runs; ratio columns divide wyvern-tcp by each peer (latency: lower is better; rate: higher is better). Table: \`bench/results/sweep.md\`, data with every run, cell times and notes: \`bench/results/sweep.csv\`, plots: \`bench/results/{latency,rate,rate4,bandwidth}.png\`."
    md ""
    if [ -n "$DPDK_NS" ]; then
        md "**wyvern-dpdk**: the dpdk transport between two network namespaces joined by one veth pair (\`scripts/testbed.sh up 2\`, MTU 1500), \`net_af_packet\` on each end, EAL \`$EAL_COMMON\`, each with its own \`--file-prefix\`; agent 0 and its EAL lcore on CPU 0, agent 1 on CPU 1 (\`--cores\`, \`--lcores\`; as bench/dpdk_veth.sh), clients unpinned; the same \`wyvern-peer\` cells as wyvern-tcp, except that its rate cells carry at most $DPDK_RATE_BYTES bytes (fewer messages than the others above ~800 B: the count is in the CSV's note). It is not the same path as the loopback columns: frames cross a veth pair through packet sockets (a copy each way in the kernel, ~1.5 KB per frame), where loopback TCP moves 64 KiB segments. **Frames/s** (its own table): wyvern-dpdk streams $DPDK_FRAMES_MIB × 1 MiB (frames the receiving agent took from its port ÷ the receiver's time; every data frame is 1514 B) against \`dpdk-testpmd --forward-mode=txonly --txpkts=1514\` in namespace 0 → \`--forward-mode=rxonly\` in namespace 1 (median steady \`Rx-pps\`, ${TESTPMD_SECS} s), once per run, alternating which goes first; no agent runs while testpmd does."
    else
        md "**wyvern-dpdk**: left out of this sweep: $DPDK_SKIP."
    fi
    md ""
    cat "$out/sweep.md" >> "$RESULTS_FILE"
    md ""
    md "Command: \`RUNS=$RUNS SWEEP_SIZES=\"$SWEEP_SIZES\" bench/run.sh sweep\`"
}

# ==================================================================== main

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
[ $# -eq 1 ] || usage
case "$1" in
    latency|rate|node|bandwidth|attach|hop|sweep|all) ;;
    *) usage ;;
esac
build
log "results go to $RESULTS_FILE; scratch in $TMP"
case "$1" in
    latency) cmd_latency ;;
    rate) cmd_rate ;;
    node) cmd_node ;;
    bandwidth) cmd_bandwidth ;;
    attach) cmd_attach ;;
    hop) cmd_hop ;;
    sweep) cmd_sweep ;;
    all) cmd_hop; cmd_latency; cmd_rate; cmd_bandwidth; cmd_attach ;;
esac
log "done: appended to $RESULTS_FILE"
