#!/usr/bin/env bash
# bench/verbs_rxe_guest.sh — the guest half of bench/verbs_rxe.sh: runs INSIDE the Soft-RoCE VM
# (scripts/rxe-vm.sh), measures wyvern's verbs transport against perftest (and UCX) on the same
# two rxe devices, RUNS times, and prints every run's figures, the medians and the ratios.
#
#   scripts/rxe-vm.sh bench/verbs_rxe_guest.sh          (bench/verbs_rxe.sh does this for you)
#   PLAN_ONLY=1 bench/verbs_rxe_guest.sh                (anywhere: print the plan, measure nothing)
#
# Node 0 is rxe0 (10.77.0.1), node 1 is rxe1 (10.77.0.2); traffic rxe0 -> rxe1 crosses the
# veth pair. In each run, for each measurement, wyvern and its peer run one after the other
# (wyvern first in odd runs, the peer first in even runs):
#   latency    8 B ping-pong, half round trip p50 and p99: two agents `--transport verbs`
#              (`wyvern-peer ping` on node 0 -> `echo` on node 1) vs `ib_send_lat -s 8`
#              (its t_typical and 99% percentile: perftest reports half round trips) and, when
#              UCX accepts the devices, `ucx_perftest` (see UCX below)
#   bandwidth  BW_SIZES (64 KiB, 1 MiB, 4 MiB), BW_MIB MiB per size (at least 8 messages):
#              `wyvern-peer --raw send` -> `recv` vs `ib_write_bw` and `ib_read_bw` (wyvern's
#              large messages travel by RDMA READ rendezvous). wyvern's figure: (messages - 1) *
#              size / the receiver's time from the first message to the last.
#   rate       8 B messages: RATE_SENDERS `wyvern-peer --raw send` processes on node 0 -> one
#              `recv` on node 1 (received / the receiver's time), the agents aggregating them
#              into frames and 16 KiB SENDs, vs one `ib_send_bw -s 8` pair (one SEND per message)
# UCX: tried once before the runs, as asked: `ucx_perftest -t tag_lat` with UCX_TLS=rc_verbs.
# UCX 1.13 refuses rxe there (UCP needs an auxiliary transport for wire-up and ud_verbs times
# out on rxe); then the UCT level, which has no wire-up (`ucx_perftest -x rc_verbs -d rxeN:1
# -t am_lat` / `-t am_bw`), is measured in each run instead, if it works.
#
# Environment: RUNS (3), LAT_COUNT (500 round trips, 50 of warm-up), BW_SIZES ("65536 1048576
# 4194304"), BW_MIB (16), BW_PEERS ("ib_write_bw ib_read_bw"), RATE_SENDERS (4), RATE_COUNT
# (25000 per sender), PEER_RATE_COUNT (10000 SENDs), SPIN_LAT_COUNT (200 round trips with
# agents --idle spin at the end of each run, a diagnostic; 0: none), UCX (1; 0 skips it), IDLE
# (adaptive), PIN (0: nothing pinned; 1: node 0's processes on vCPU 0, node 1's on vCPU 1), BIN
# (target/release), BLOCK_MIB (64), PLAN_ONLY=1. Every process runs under `timeout`; the EXIT trap stops what is still running.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
BIN="${BIN:-$ROOT/target/release}"
RUNS="${RUNS:-3}"
LAT_COUNT="${LAT_COUNT:-500}"
BW_SIZES="${BW_SIZES:-65536 1048576 4194304}"
BW_MIB="${BW_MIB:-16}"
RATE_SENDERS="${RATE_SENDERS:-4}"
RATE_COUNT="${RATE_COUNT:-25000}"
PEER_RATE_COUNT="${PEER_RATE_COUNT:-10000}"
BW_PEERS="${BW_PEERS:-ib_write_bw ib_read_bw}"
SPIN_LAT_COUNT="${SPIN_LAT_COUNT:-200}"
UCX="${UCX:-1}"
IDLE="${IDLE:-adaptive}"
PIN="${PIN:-0}"
BLOCK_MIB="${BLOCK_MIB:-64}"
PLAN_ONLY="${PLAN_ONLY:-0}"
LAT_WARMUP=$(( LAT_COUNT / 10 ))

log() { printf "[verbs-bench %4ss] %s\n" "$SECONDS" "$*"; }
die() { printf '[verbs-bench] ERROR: %s\n' "$*" >&2; exit 1; }

read -r DEV0 DEV1 _ <<<"${WYVERN_RXE_DEVS:-rxe0 rxe1}"
read -r ADDR0 ADDR1 _ <<<"${WYVERN_RXE_ADDRS:-10.77.0.1 10.77.0.2}"
GID="${WYVERN_RXE_GID_INDEX:-1}"
bw_count() { local n=$(( BW_MIB * 1048576 / $1 )); [ "$n" -ge 8 ] || n=8; echo "$n"; }
# taskset prefix for node $1's processes when PIN=1
on() { if [ "$PIN" = 1 ]; then echo "taskset -c $1"; fi; }

layout() {
    local vcpus; vcpus="$(nproc)"
    if [ "$PLAN_ONLY" = 1 ]; then vcpus="${VCPUS:-?}"; fi
    if [ "$PIN" = 1 ]; then
        echo "core layout: $vcpus vCPUs; node 0 (agent 0, its clients, perftest/ucx client on $DEV0) on vCPU 0, node 1 (agent 1, its clients, perftest/ucx server on $DEV1) on vCPU 1 (taskset); rxe's kernel work runs where the kernel puts it"
    else
        echo "core layout: $vcpus vCPUs, nothing pinned: wyvern 4 processes for latency and bandwidth (2 agents, 2 clients), $(( 3 + RATE_SENDERS )) for the rate (2 agents, $RATE_SENDERS senders, 1 receiver); perftest and ucx_perftest 2 busy-polling processes; rxe's kernel work (softirq, tasklets) wherever the kernel runs it"
    fi
}

plan() {
    local s
    echo "plan: $RUNS runs; in each, wyvern and peer alternate per measurement (wyvern first in odd runs)"
    echo "  agents: wyvern agent --node-id I --nodes 127.0.0.1:P0,127.0.0.1:P1 --transport verbs --verbs-device rxeI --verbs-gid-index $GID --idle $IDLE --block-bytes ${BLOCK_MIB}MiB --max-clients 8 --peer-timeout-ms 30000   # I = 0, 1; restarted each run"
    echo "  latency: wyvern-peer ping --count $LAT_COUNT --warmup $LAT_WARMUP (8 B) vs ib_send_lat -d rxe0/rxe1 -x $GID -s 8 -n $LAT_COUNT"
    if [ "$SPIN_LAT_COUNT" -gt 0 ] && [ "$IDLE" != spin ]; then
        echo "  diagnostic, at the end of each run: agents restarted with --idle spin, wyvern-peer ping --count $SPIN_LAT_COUNT"
    fi
    for s in $BW_SIZES; do
        echo "  bandwidth $s B: $(bw_count "$s") messages: wyvern-peer --raw send/recv vs ib_write_bw and ib_read_bw -s $s -n $(bw_count "$s")"
    done
    echo "  rate 8 B: $RATE_SENDERS x wyvern-peer --raw send --count $RATE_COUNT -> 1 recv vs ib_send_bw -s 8 -n $PEER_RATE_COUNT"
    if [ "$UCX" = 1 ]; then
        echo "  ucx: once: UCX_TLS=rc_verbs ucx_perftest -t tag_lat (UCP); in each run, if it works, that, else UCT rc_verbs am_lat -n $LAT_COUNT and am_bw -s 8 -n $PEER_RATE_COUNT"
    fi
}

if [ "$PLAN_ONLY" = 1 ]; then
    echo "== bench/verbs_rxe_guest.sh (plan only: nothing is measured)"
    layout
    plan
    exit 0
fi

[ -n "${WYVERN_RXE_DEVS:-}" ] || die "WYVERN_RXE_DEVS is not set: run me through scripts/rxe-vm.sh (bench/verbs_rxe.sh)"
for t in ib_send_lat ib_write_bw ib_read_bw ib_send_bw python3 jq stdbuf; do
    command -v "$t" >/dev/null || die "$t not found (packages perftest, python3, jq, coreutils)"
done
for b in "$BIN/wyvern" "$BIN/wyvern-peer"; do [ -x "$b" ] || die "no $b"; done

TMP="$(mktemp -d /tmp/verbs-bench.XXXXXX)"
RESULTS="$TMP/results"
: >"$RESULTS"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# bg NAME SECS CMD...: CMD in the background under `timeout`, output to $TMP/NAME.{out,err};
# its pid in $LAST.
bg() {
    local name=$1 secs=$2; shift 2
    timeout "$secs" "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" &
    LAST=$!
    PIDS+=("$LAST")
}
# nap SECS: sleep without starting a program (a read that times out on a FIFO nobody writes;
# the guest has no /dev/fd for a process substitution).
mkfifo "$TMP/nap"
exec {NAP_FD}<>"$TMP/nap"
nap() { read -rt "$1" -u "$NAP_FD" _ || true; }
has_line() { # FILE PATTERN: a line of FILE contains PATTERN (built-ins only)
    local l
    [ -f "$1" ] || return 1
    while IFS= read -r l; do [[ "$l" == *"$2"* ]] && return 0; done <"$1"
    return 1
}
wait_line() { # FILE PATTERN SECS [PID]
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        has_line "$1" "$2" && return 0
        if [ -n "${4:-}" ] && ! kill -0 "$4" 2>/dev/null; then
            has_line "$1" "$2" && return 0
            miss "waiting for '$2' in $1: the process exited: $(tail -3 "$1" "${1%.out}.err" 2>/dev/null)"
            return 1
        fi
        nap 0.1
    done
    miss "timed out waiting for '$2' in $1: $(tail -3 "$1" "${1%.out}.err" 2>/dev/null)"
    return 1
}
listening() { # PORT: a TCP socket listens on it (/proc/net/tcp{,6}, state 0A)
    local hex f l st
    printf -v hex '%04X' "$1"
    for f in /proc/net/tcp /proc/net/tcp6; do
        [ -r "$f" ] || continue
        while read -r _ l _ st _; do
            [[ "$l" == *":$hex" && "$st" == 0A ]] && return 0
        done <"$f"
    done
    return 1
}
wait_listen() { # PORT SECS PID
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        listening "$1" && return 0
        kill -0 "$3" 2>/dev/null || return 1
        nap 0.1
    done
    return 1
}
rec() { echo "$*" >>"$RESULTS"; }   # RUN SYSTEM METRIC VALUE
MISSED=0
miss() { log "MISSING: $*"; MISSED=$((MISSED + 1)); }   # a measurement that failed (the run goes on)   # RUN SYSTEM METRIC VALUE
# Under emulation every program started is read from the host over 9p and python3 takes
# seconds to start: jq for JSON, awk for arithmetic, shell built-ins for polling.
jget() { jq -r "$2" <<<"$1"; }                          # JSON FILTER
calc() { awk "BEGIN { printf \"%.${2:-2}f\", $1 }"; }  # EXPR [DECIMALS]

# ------------------------------------------------------------------ perftest
PORT=18600
# perftest NAME ARGS...: server on DEV1, client on DEV0 -> ADDR1; the client's output in
# $TMP/NAME.out; 1 if either side failed.
perftest() {
    local name=$1; shift
    PORT=$((PORT + 1))
    # shellcheck disable=SC2046
    bg "$name-srv" 70 $(on 1) stdbuf -oL "$name" -d "$DEV1" -x "$GID" -p "$PORT" "$@"
    local s=$LAST rc=0
    wait_listen "$PORT" 30 "$s" || { log "$name server did not listen: $(tail -3 "$TMP/$name-srv.out")"; return 1; }
    # shellcheck disable=SC2046
    timeout 60 $(on 0) stdbuf -oL "$name" -d "$DEV0" -x "$GID" -p "$PORT" "$@" "$ADDR1" \
        >"$TMP/$name.out" 2>&1 || rc=$?
    wait "$s" 2>/dev/null || rc=$((rc == 0 ? 1 : rc))
    if [ "$rc" != 0 ]; then
        log "$name $* failed ($rc): $(tail -4 "$TMP/$name.out") / server: $(tail -3 "$TMP/$name-srv.out")"
        return 1
    fi
}
# ptest NAME SIZE ARGS...: perftest NAME -s SIZE ARGS..., its data row (the line whose first
# field is the size) in $ROW as an array. perftest turns its cycle counts into time with a
# CPU frequency it measures at start; under a busy emulator that estimate can fail and the
# report says "inf": such a run is repeated (3 attempts). 1 when no attempt gave a row.
ptest() {
    local name=$1 size=$2 attempt l; shift 2
    for attempt in 1 2 3; do
        perftest "$name" -s "$size" "$@" || { miss "$name -s $size $* failed"; return 1; }
        ROW=()
        while read -r -a l; do
            if [ "${l[0]:-}" = "$size" ] && [[ "${l[1]:-}" =~ ^[0-9]+$ ]]; then ROW=("${l[@]}"); break; fi
        done <"$TMP/$name.out"
        if [ "${#ROW[@]}" -ge 5 ] && [[ "${ROW[*]:2}" =~ ^[0-9.\ ]+$ ]]; then return 0; fi
        log "$name -s $size: no usable report (attempt $attempt): ${ROW[*]:-$(tail -2 "$TMP/$name.out")}"
    done
    miss "$name -s $size: no usable report in 3 attempts"
    return 1
}

peer_lat() { # RUN
    ptest ib_send_lat 8 -n "$LAT_COUNT" || return 0
    # bytes iterations t_min t_max t_typical t_avg t_stdev 99% 99.9% (half round trips)
    rec "$1" ib_send_lat lat_p50_us "${ROW[4]}"
    rec "$1" ib_send_lat lat_p99_us "${ROW[7]}"
    log "run $1: ib_send_lat 8 B: typical ${ROW[4]} us, p99 ${ROW[7]} us"
}
peer_bw() { # RUN SIZE
    local tool
    for tool in $BW_PEERS; do
        ptest "$tool" "$2" -n "$(bw_count "$2")" || continue
        # bytes iterations BW-peak BW-average[MB/s, MB = 2^20] MsgRate[Mpps]
        rec "$1" "$tool" "bw_${2}_MBps" "$(calc "${ROW[3]} * 1048576 / 1e6" 3)"
        log "run $1: $tool $2 B: $(calc "${ROW[3]} * 1048576 / 1e6") MB/s"
    done
}
peer_rate() { # RUN
    ptest ib_send_bw 8 -n "$PEER_RATE_COUNT" || return 0
    rec "$1" ib_send_bw rate_msgs "$(calc "${ROW[4]} * 1e6" 0)"
    log "run $1: ib_send_bw 8 B: $(calc "${ROW[4]} * 1e6" 0) msg/s"
}

# ------------------------------------------------------------------ UCX
UCX_MODE=none   # ucp (tag_lat/tag_bw, UCX_TLS=rc_verbs), uct (am_lat/am_bw, -x rc_verbs) or none
UCX_NOTE="not tried (UCX=0)"
# ucx NAME LEVEL ARGS...: server on DEV1, client on DEV0 -> 127.0.0.1 (the out-of-band
# exchange). LEVEL ucp: UCX_TLS=rc_verbs; uct: -x rc_verbs -d DEVn:1 (no wire-up). 1 on failure,
# the reason in $UCX_ERR.
ucx() {
    local name=$1 level=$2; shift 2
    PORT=$((PORT + 1))
    local sdev=() cdev=() tls=()
    if [ "$level" = uct ]; then
        sdev=(-x rc_verbs -d "$DEV1:1"); cdev=(-x rc_verbs -d "$DEV0:1")
    else
        tls=(UCX_TLS=rc_verbs)
    fi
    # shellcheck disable=SC2046
    bg "$name-srv" 90 env "${tls[@]}" UCX_NET_DEVICES="$DEV1:1" UCX_IB_GID_INDEX="$GID" \
        $(on 1) ucx_perftest -p "$PORT" "${sdev[@]}" "$@"
    local s=$LAST rc=0
    if ! wait_listen "$PORT" 30 "$s"; then
        UCX_ERR="the server did not listen: $(grep -h -m3 -E 'ERROR|Fatal' "$TMP/$name-srv.out" "$TMP/$name-srv.err" | tr '\n' ';')"
        return 1
    fi
    # shellcheck disable=SC2046
    timeout 90 env "${tls[@]}" UCX_NET_DEVICES="$DEV0:1" UCX_IB_GID_INDEX="$GID" \
        $(on 0) ucx_perftest 127.0.0.1 -p "$PORT" "${cdev[@]}" "$@" >"$TMP/$name.out" 2>&1 || rc=$?
    wait "$s" 2>/dev/null || rc=$((rc == 0 ? 1 : rc))
    [ "$rc" = 0 ] && grep -q '^Final:' "$TMP/$name.out" && return 0
    UCX_ERR="exit $rc: $(grep -h -E 'ERROR|Fatal' "$TMP/$name.out" "$TMP/$name-srv.out" "$TMP/$name-srv.err" 2>/dev/null \
        | sed 's/^\[[^]]*\] *\[[^]]*\] *//; s/  */ /g' | awk '!seen[$0]++' | head -4 | tr '\n' ';')"
    return 1
}
# Final: iterations, then latency or overhead 50%/average/overall, MB/s average/overall, msg/s
# average/overall
ufinal() { awk -v c="$2" '$1 == "Final:" {print $c; exit}' "$TMP/$1.out"; }

ucx_try() {
    [ "$UCX" = 1 ] || return 0
    command -v ucx_perftest >/dev/null || { UCX_NOTE="ucx_perftest not installed"; return 0; }
    log "UCX: ucx_perftest -t tag_lat with UCX_TLS=rc_verbs (UCP), once"
    UCX_ERR=""
    if ucx ucxtry ucp -t tag_lat -s 8 -n 100; then
        UCX_MODE=ucp
        UCX_NOTE="UCX $(ucx_version) accepted rxe with UCX_TLS=rc_verbs (UCP tag_lat/tag_bw)"
    else
        local why="$UCX_ERR"
        log "UCX: trying the UCT level instead (no wire-up): ucx_perftest -x rc_verbs -d DEV:1 -t am_lat"
        UCX_ERR=""
        if ucx ucxtry2 uct -t am_lat -s 8 -n 100; then
            UCX_MODE=uct
            UCX_NOTE="UCX $(ucx_version) UCP with UCX_TLS=rc_verbs refused: $why — measured at the UCT level instead (-x rc_verbs, am_lat/am_bw)"
        else
            UCX_NOTE="UCX $(ucx_version) UCP with UCX_TLS=rc_verbs refused: $why; UCT rc_verbs failed too: $UCX_ERR"
        fi
    fi
    log "UCX: $UCX_NOTE"
}
ucx_version() { ucx_info -v 2>/dev/null | sed -n 's/^# Version \([^ ]*\).*/\1/p' | head -1; }

ucx_lat() { # RUN
    local ok=1
    case "$UCX_MODE" in
        ucp) ucx ucxlat ucp -t tag_lat -s 8 -n "$LAT_COUNT" -w "$LAT_WARMUP" || ok=0 ;;
        uct) ucx ucxlat uct -t am_lat -s 8 -n "$LAT_COUNT" -w "$LAT_WARMUP" || ok=0 ;;
        *) return 0 ;;
    esac
    [ "$ok" = 1 ] || { log "run $1: ucx latency failed: $UCX_ERR"; return 0; }
    rec "$1" ucx lat_p50_us "$(ufinal ucxlat 3)"
    log "run $1: ucx_perftest ($UCX_MODE, rc_verbs) 8 B latency p50 $(ufinal ucxlat 3) us"
}
ucx_rate() { # RUN
    local ok=1
    case "$UCX_MODE" in
        ucp) ucx ucxbw ucp -t tag_bw -s 8 -n "$PEER_RATE_COUNT" || ok=0 ;;
        uct) ucx ucxbw uct -t am_bw -s 8 -n "$PEER_RATE_COUNT" || ok=0 ;;
        *) return 0 ;;
    esac
    [ "$ok" = 1 ] || { log "run $1: ucx rate failed: $UCX_ERR"; return 0; }
    rec "$1" ucx rate_msgs "$(ufinal ucxbw 9)"
    log "run $1: ucx_perftest ($UCX_MODE, rc_verbs) 8 B: $(ufinal ucxbw 9) msg/s"
}

# ------------------------------------------------------------------ wyvern
AGENTS=()
EP=100
SOCK0="$TMP/agent0.sock"; SOCK1="$TMP/agent1.sock"
stat_json() { timeout 20 "$BIN/wyvern" stat --socket "$1" --json 2>/dev/null; }
agents_up() { # RUN IDLE
    local i nodes p0=$((17400 + 4 * $1)) t
    [ "$2" = "$IDLE" ] || p0=$((p0 + 2))
    nodes="127.0.0.1:$p0,127.0.0.1:$((p0 + 1))"
    AGENTS=()
    local devs=("$DEV0" "$DEV1")
    for i in 0 1; do
        # shellcheck disable=SC2046
        RUST_LOG=warn bg "agent$i-$1-$2" 900 $(on "$i") "$BIN/wyvern" agent --node-id "$i" --nodes "$nodes" \
            --socket "$TMP/agent$i.sock" --transport verbs --verbs-device "${devs[$i]}" \
            --verbs-gid-index "$GID" --idle "$2" --block-bytes "${BLOCK_MIB}MiB" --max-clients 8 \
            --peer-timeout-ms 30000 --job "verbs-bench-$$"
        AGENTS+=("$LAST")
    done
    wait_line "$TMP/agent0-$1-$2.out" "wyvern agent ready" 60 "${AGENTS[0]}" || return 1
    wait_line "$TMP/agent1-$1-$2.out" "wyvern agent ready" 60 "${AGENTS[1]}" || return 1
    for ((t = 0; t < 120; t++)); do
        if [[ "$(stat_json "$SOCK0")" == *'"state": "up"'* && "$(stat_json "$SOCK1")" == *'"state": "up"'* ]]; then
            BACKING="$(jget "$(stat_json "$SOCK0")" .backing)"
            return 0
        fi
        nap 0.5
    done
    miss "the verbs agents did not connect in 60 s: $(tail -5 "$TMP/agent0-$1-$2.err" "$TMP/agent1-$1-$2.err")"
    return 1
}
agents_down() {
    local p
    for p in "${AGENTS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${AGENTS[@]}"; do wait "$p" 2>/dev/null || true; done
    AGENTS=()
}
# peer NODE NAME SECS ARGS...: wyvern-peer on node NODE in the background (pid in $LAST)
peer() {
    local node=$1 name=$2 secs=$3; shift 3
    # shellcheck disable=SC2046
    bg "$name" "$secs" $(on "$node") "$BIN/wyvern-peer" --socket "$TMP/agent$node.sock" "$@"
}
last_json() { # NAME: the last line of $TMP/NAME.out that starts with {
    local l j=""
    while IFS= read -r l; do [[ "$l" == "{"* ]] && j="$l"; done <"$TMP/$1.out"
    printf '%s\n' "$j"
}

wy_lat() { # RUN [SYSTEM COUNT]
    [ "$AGENTS_OK" = 1 ] || return 0
    local who=${2:-wyvern} count=${3:-$LAT_COUNT}
    EP=$((EP + 1))
    peer 1 echo 300 --ep "$EP" --sizes 8 echo --count $((count + count / 10))
    local e=$LAST
    wait_line "$TMP/echo.out" ready 30 "$e" || return 0
    peer 0 ping 300 --sizes 8 ping --to "1:$EP" --count "$count" --warmup $((count / 10))
    wait "$LAST" || { miss "wyvern ping failed: $(tail -2 "$TMP/ping.out" "$TMP/ping.err")"; kill "$e" 2>/dev/null; return 0; }
    wait "$e" || { miss "wyvern echo failed: $(tail -2 "$TMP/echo.out" "$TMP/echo.err")"; return 0; }
    local j p50 p99; j="$(last_json ping)"
    read -r p50 p99 <<<"$(jget "$j" '"\(.rtt_p50_us / 2) \(.rtt_p99_us / 2)"')"
    rec "$1" "$who" lat_p50_us "$p50"; rec "$1" "$who" lat_p99_us "$p99"
    log "run $1: $who 8 B half round trip p50 $(calc "$p50" 1) us, p99 $(calc "$p99" 1) us"
}
counters() { # SOCK -> "msgs_tx frames_tx verbs_sends verbs_reads verbs_bounce_reads"
    jget "$(stat_json "$1")" '"\(.peers[0].counters.msgs_tx) \(.peers[0].counters.frames_tx) \(.transport.verbs_sends // 0) \(.transport.verbs_reads // 0) \(.transport.verbs_bounce_reads // 0)"'
}
wy_bw() { # RUN SIZE
    [ "$AGENTS_OK" = 1 ] || return 0
    local n; n="$(bw_count "$2")"
    EP=$((EP + 1))
    local r0 r1
    read -r _ _ _ r0 _ <<<"$(counters "$SOCK1")"
    peer 1 recv 300 --ep "$EP" --raw --sizes "$2" recv --count "$n"
    local r=$LAST
    wait_line "$TMP/recv.out" ready 30 "$r" || return 0
    peer 0 send 300 --raw --sizes "$2" send --to "1:$EP" --count "$n"
    wait "$LAST" || { miss "wyvern send failed: $(tail -2 "$TMP/send.out" "$TMP/send.err")"; kill "$r" 2>/dev/null; return 0; }
    wait "$r" || { miss "wyvern recv failed: $(tail -2 "$TMP/recv.out" "$TMP/recv.err")"; return 0; }
    local j mbps; j="$(last_json recv)"
    [ "$(jget "$j" .received)" = "$n" ] || { miss "wyvern recv: $j"; return 0; }
    read -r _ _ _ r1 _ <<<"$(counters "$SOCK1")"
    mbps="$(jget "$j" "($n - 1) * $2 / .secs / 1e6")"
    rec "$1" wyvern "bw_${2}_MBps" "$mbps"
    log "run $1: wyvern $2 B x $n: $(calc "$mbps") MB/s ($(jget "$j" .zero_copy) received zero-copy, $((r1 - r0)) RDMA READs)"
}
wy_rate() { # RUN
    [ "$AGENTS_OK" = 1 ] || return 0
    EP=$((EP + 1))
    local m0 f0 s0 m1 f1 s1 k pids=()
    read -r m0 f0 s0 _ _ <<<"$(counters "$SOCK0")"
    peer 1 rrecv 300 --ep "$EP" --raw --sizes 8 recv --count $((RATE_SENDERS * RATE_COUNT))
    local r=$LAST
    wait_line "$TMP/rrecv.out" ready 30 "$r" || return 0
    for ((k = 1; k <= RATE_SENDERS; k++)); do
        peer 0 "rsend$k" 300 --raw --sizes 8 send --to "1:$EP" --count "$RATE_COUNT"
        pids+=("$LAST")
    done
    local bad=0
    for k in "${pids[@]}"; do wait "$k" || bad=1; done
    [ "$bad" = 0 ] || { miss "a wyvern sender failed: $(cat "$TMP"/rsend*.err | tail -3)"; kill "$r" 2>/dev/null; return 0; }
    wait "$r" || { miss "wyvern recv failed: $(tail -2 "$TMP/rrecv.out" "$TMP/rrecv.err")"; return 0; }
    local j rate; j="$(last_json rrecv)"
    [ "$(jget "$j" .received)" = $((RATE_SENDERS * RATE_COUNT)) ] || { miss "wyvern recv: $j"; return 0; }
    read -r m1 f1 s1 _ _ <<<"$(counters "$SOCK0")"
    rate="$(jget "$j" '.received / .secs')"
    rec "$1" wyvern rate_msgs "$rate"
    local per_frame per_send
    per_frame="$(calc "($m1 - $m0) / $(( f1 > f0 ? f1 - f0 : 1 ))" 1)"
    per_send="$(calc "($m1 - $m0) / $(( s1 > s0 ? s1 - s0 : 1 ))" 1)"
    rec "$1" wyvern msgs_per_frame "$per_frame"
    rec "$1" wyvern msgs_per_send "$per_send"
    log "run $1: wyvern 8 B $RATE_SENDERS -> 1: $(calc "$rate" 0) msg/s; $((m1 - m0)) messages in $((f1 - f0)) frames ($per_frame per frame), $((s1 - s0)) RDMA SENDs ($per_send messages per SEND)"
}

# ------------------------------------------------------------------ main
# pair RUN WYVERN-FN PEER-FNS...: wyvern first in odd runs, the peers first in even runs.
pair() {
    local run=$1 w=$2 f; shift 2
    if [ $((run % 2)) = 1 ]; then "$w" "$run"; fi
    for f in "$@"; do "$f" "$run"; done
    if [ $((run % 2)) = 0 ]; then "$w" "$run"; fi
}
bw_all() { local s; for s in $BW_SIZES; do wy_bw "$1" "$s"; done; }
peer_bw_all() { local s; for s in $BW_SIZES; do peer_bw "$1" "$s"; done; }

echo "== bench/verbs_rxe_guest.sh: wyvern verbs transport vs perftest$([ "$UCX" = 1 ] && echo " and UCX") on Soft-RoCE, $DEV0 ($ADDR0) -> $DEV1 ($ADDR1)"
echo "guest: kernel $(uname -r), $(nproc) vCPUs, $(awk '/MemTotal/ {printf "%d MiB", $2/1024}' /proc/meminfo), hugepages ${WYVERN_RXE_HUGEPAGES:-?} x 2 MiB, active MTU ${WYVERN_RXE_MTU:-?}, GID index $GID; perftest $(dpkg-query -W -f '${Version}' perftest 2>/dev/null || echo '?')"
layout
plan
ucx_try
T0=$(date +%s)
BACKING="?"
for run in $(seq 1 "$RUNS"); do
    log "run $run of $RUNS ($(( $(date +%s) - T0 )) s so far)"
    AGENTS_OK=1
    agents_up "$run" "$IDLE" || { AGENTS_OK=0; miss "run $run: no wyvern figures (agents)"; }
    pair "$run" wy_lat peer_lat ucx_lat
    pair "$run" bw_all peer_bw_all
    pair "$run" wy_rate peer_rate ucx_rate
    agents_down
    if [ "$SPIN_LAT_COUNT" -gt 0 ] && [ "$IDLE" != spin ]; then
        # Diagnostic: the same ping-pong with agents that never sleep (what the wake-ups cost).
        AGENTS_OK=1
        agents_up "$run" spin || { AGENTS_OK=0; miss "run $run: no wyvern --idle spin figure (agents)"; }
        wy_lat "$run" wyvern_spin "$SPIN_LAT_COUNT"
        agents_down
    fi
done
log "measured in $(( $(date +%s) - T0 )) s; pool backing: $BACKING; $MISSED measurement(s) missing"

python3 - "$RESULTS" "$RUNS" "$BW_SIZES" "$UCX_MODE" "$UCX_NOTE" "$RATE_SENDERS" <<'PY'
import collections, statistics, sys
path, runs, sizes, ucx_mode, ucx_note, senders = sys.argv[1:7]
by = collections.defaultdict(dict)
for line in open(path):
    run, who, key, val = line.split()
    by[(who, key)][int(run)] = float(val)
def med(who, key):
    v = by.get((who, key))
    return statistics.median(v.values()) if v else None
def runs_of(who, key):
    v = by.get((who, key), {})
    return " / ".join(f(v[r]) for r in sorted(v)) or "—"
def f(x):
    if x is None: return "—"
    return f"{x:,.0f}" if x >= 1000 else (f"{x:.1f}" if x >= 10 else f"{x:.2f}")
def ratio(a, b):
    return f"{a / b:.2f}×" if a is not None and b else "—"
ucx_lat = {"ucp": "ucx_perftest tag_lat, UCX_TLS=rc_verbs", "uct": "ucx_perftest UCT rc_verbs am_lat"}.get(ucx_mode)
ucx_bw = {"ucp": "ucx_perftest tag_bw, UCX_TLS=rc_verbs", "uct": "ucx_perftest UCT rc_verbs am_bw"}.get(ucx_mode)
rows = []
def row(name, better, key, peers, w_who="wyvern"):
    w = med(w_who, key)
    if w is None and w_who != "wyvern":
        return
    for who, label in peers:
        p = med(who, key)
        if p is None and who == "ucx":
            continue
        rows.append((name, better, f(w), label, f(p), ratio(w, p), runs_of(w_who, key), runs_of(who, key)))
lat_peers = [("ib_send_lat", "ib_send_lat -s 8")] + ([("ucx", ucx_lat)] if ucx_lat else [])
row("8 B half round trip p50, µs", "lower", "lat_p50_us", lat_peers)
row("8 B half round trip p99, µs", "lower", "lat_p99_us", [("ib_send_lat", "ib_send_lat -s 8 (99% percentile)")])
row("8 B half round trip p50, µs, agents --idle spin (diagnostic)", "lower", "lat_p50_us",
    [("ib_send_lat", "ib_send_lat -s 8")], w_who="wyvern_spin")
for s in sizes.split():
    n = int(s)
    label = f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"
    row(f"bandwidth {label}, MB/s", "higher", f"bw_{s}_MBps",
        [("ib_write_bw", "ib_write_bw"), ("ib_read_bw", "ib_read_bw")])
rate_peers = [("ib_send_bw", "ib_send_bw -s 8 (1 QP)")] + ([("ucx", ucx_bw)] if ucx_bw else [])
row(f"8 B message rate, msg/s (wyvern: {senders} senders → 1)", "higher", "rate_msgs", rate_peers)
print(f"\nmedians of {runs} runs (ratio = wyvern ÷ peer):\n")
print("| measurement | better | wyvern | peer | peer figure | ratio | wyvern runs | peer runs |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
print(f"\nwyvern aggregation during the rate runs: {f(med('wyvern', 'msgs_per_frame'))} messages per frame, "
      f"{f(med('wyvern', 'msgs_per_send'))} messages per RDMA SEND (median; ib_send_bw: 1)")
print(f"UCX: {ucx_note}")
PY
