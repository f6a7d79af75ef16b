#!/usr/bin/env bash
# bench/verbs_rails_guest.sh — the guest half of bench/verbs_rails.sh: runs INSIDE the Soft-RoCE
# VM (scripts/rxe-vm.sh, which gives two rxe pairs: rxe0 <-> rxe1 over veth0/veth1 and rxe2 <->
# rxe3 over veth2/veth3) and measures the verbs transport with ONE rail (node 0 on rxe0, node 1
# on rxe1) against TWO rails (node 0 on rxe0,rxe2, node 1 on rxe1,rxe3), in the same run,
# alternating which goes first (one rail first in odd runs).
#
# Each measurement: two agents `--transport verbs` started afresh, SENDERS `wyvern-peer --raw
# send` processes on node 0, each sending COUNT messages of SIZE bytes to one `recv` on node 1
# (large messages go by rendezvous: node 1 READs them, striped over the rails with two);
# MB/s = (received - 1) * SIZE / the receiver's time from its first message to its last. With
# two rails also each rail's share of the bytes node 1 READ (verbs_rail0/1_read_bytes).
# Prints each run, the medians, and two rails / one rail (the issue's goal is >= 0.9 of the
# summed single-rail figure, i.e. a ratio >= 1.8 over one rail).
# The control (PERFTEST=1, the default): in each run, `ib_read_bw` (RDMA READs, what the
# rendezvous does) on one rxe pair alone, and on both pairs at once (their sum): what two
# rails can give at all on these emulated devices and vCPUs, whatever wyvern does.
#
# A/B (BIN_B, a directory with another build's wyvern and wyvern-peer): every measurement is
# made with both builds, one after the other (BIN first in odd runs, BIN_B first in even runs),
# and the medians are given per build: before/after figures taken under the same load.
# DELAY (e.g. 2ms): added (tc netem) to everything node 0's ends of both rails send (READ
# responses among it) for the whole run: a longer path, where READs in flight matter.
# Environment: RUNS (3), SIZE (1048576), COUNT (24 per sender), SENDERS (2), CHUNK (agents'
# --chunk-bytes; default theirs, 256 KiB), IDLE (adaptive), BLOCK_MIB (96), PERFTEST (1), BIN
# (target/release), BIN_B (none), DELAY (none). Every process runs under `timeout`; the EXIT trap stops what still runs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
BIN="${BIN:-$ROOT/target/release}"
RUNS="${RUNS:-3}"
SIZE="${SIZE:-1048576}"
COUNT="${COUNT:-24}"
SENDERS="${SENDERS:-2}"
CHUNK="${CHUNK:-}"
IDLE="${IDLE:-adaptive}"
BLOCK_MIB="${BLOCK_MIB:-96}"
PERFTEST="${PERFTEST:-1}"
GID="${WYVERN_RXE_GID_INDEX:-1}"

log() { printf "[verbs-rails %4ss] %s\n" "$SECONDS" "$*"; }
die() { printf '[verbs-rails] ERROR: %s\n' "$*" >&2; exit 1; }

read -r DEV0 DEV1 _ <<<"${WYVERN_RXE_DEVS:-}"
read -r NETDEV0 _ <<<"${WYVERN_RXE_NETDEVS:-}"
read -r RNETDEV0 _ <<<"${WYVERN_RXE_RAIL_NETDEVS:-}"
DELAY="${DELAY:-}"
read -r RDEV0 RDEV1 _ <<<"${WYVERN_RXE_RAIL_DEVS:-}"
read -r _ ADDR1 _ <<<"${WYVERN_RXE_ADDRS:-}"
read -r _ RADDR1 _ <<<"${WYVERN_RXE_RAIL_ADDRS:-}"
[ -n "${RDEV1:-}" ] || die "WYVERN_RXE_RAIL_DEVS is not set: run me through scripts/rxe-vm.sh (bench/verbs_rails.sh)"
for t in jq python3; do command -v "$t" >/dev/null || die "$t not found"; done
BIN_B="${BIN_B:-}"
for b in "$BIN/wyvern" "$BIN/wyvern-peer" ${BIN_B:+"$BIN_B/wyvern" "$BIN_B/wyvern-peer"}; do [ -x "$b" ] || die "no $b"; done
BIN_A="$BIN"

TMP="$(mktemp -d /tmp/verbs-rails.XXXXXX)"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
    if [ -n "$DELAY" ]; then
        tc qdisc del dev "$NETDEV0" root 2>/dev/null || true
        tc qdisc del dev "$RNETDEV0" root 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bg() { # NAME SECS CMD...: in the background under `timeout`; pid in $LAST
    local name=$1 secs=$2; shift 2
    timeout "$secs" "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" &
    LAST=$!
    PIDS+=("$LAST")
}
wait_grep() { # FILE PATTERN SECS
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        grep -q -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    die "timed out waiting for '$2' in $1: $(tail -3 "$1" "${1%.out}.err" 2>/dev/null)"
}
stat_json() { timeout 20 "$BIN/wyvern" stat --socket "$TMP/agent$1.sock" --json 2>/dev/null; }
last_json() { grep '^{' "$TMP/$1.out" | tail -1; }

AGENTS=()
PORT=17600
agents_up() { # RAILS
    local i devs nodes
    PORT=$((PORT + 2))
    nodes="127.0.0.1:$PORT,127.0.0.1:$((PORT + 1))"
    if [ "$1" = 1 ]; then devs=("$DEV0" "$DEV1"); else devs=("$DEV0,$RDEV0" "$DEV1,$RDEV1"); fi
    AGENTS=()
    for i in 0 1; do
        rm -f "$TMP/agent$i.sock"
        # shellcheck disable=SC2046
        RUST_LOG=warn bg "agent$i" 600 "$BIN/wyvern" agent --node-id "$i" --nodes "$nodes" \
            --socket "$TMP/agent$i.sock" --transport verbs --verbs-device "${devs[$i]}" \
            --idle "$IDLE" --block-bytes "${BLOCK_MIB}MiB" --max-clients 16 \
            --peer-timeout-ms 30000 --job "verbs-rails-$$" ${CHUNK:+--chunk-bytes "$CHUNK"}
        AGENTS+=("$LAST")
    done
    wait_grep "$TMP/agent0.out" "wyvern agent ready" 60
    wait_grep "$TMP/agent1.out" "wyvern agent ready" 60
    for ((i = 0; i < 240; i++)); do
        if [[ "$(stat_json 0)" == *'"state": "up"'* && "$(stat_json 1)" == *'"state": "up"'* ]]; then
            return 0
        fi
        sleep 0.25
    done
    die "the agents did not connect in 60 s: $(tail -5 "$TMP/agent0.err" "$TMP/agent1.err")"
}
agents_down() {
    local p
    for p in "${AGENTS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${AGENTS[@]}"; do wait "$p" 2>/dev/null || true; done
    AGENTS=()
}

# The rxe devices' own error counters, summed over every device and counter named (rxe's
# hw_counters: a retransmitted READ shows in the completer's retries and the responder's
# duplicate requests; a dropped packet as a sequence error).
RXE_ERRS="rcvd_seq_err duplicate_request out_of_seq_request completer_retry_err retry_exceeded_err rcvd_rnr_err"
rxe_errs() {
    local d c v t=0
    for d in /sys/class/infiniband/*/ports/1/hw_counters; do
        for c in $RXE_ERRS; do
            v="$(cat "$d/$c" 2>/dev/null || echo 0)"
            t=$((t + v))
        done
    done
    echo "$t"
}

RESULTS="$TMP/results"
: >"$RESULTS"
EP=100
measure() { # RUN RAILS [TAG: which build, A or B]
    agents_up "$2"
    local total=$((COUNT * SENDERS)) k j mbps r0 r1 s depth errs
    errs="$(rxe_errs)"
    EP=$((EP + 1))
    bg recv 600 "$BIN/wyvern-peer" --socket "$TMP/agent1.sock" --ep "$EP" --raw --sizes "$SIZE" \
        recv --count "$total"
    local r=$LAST
    wait_grep "$TMP/recv.out" ready 30
    local senders=()
    for ((k = 0; k < SENDERS; k++)); do
        bg "send$k" 600 "$BIN/wyvern-peer" --socket "$TMP/agent0.sock" --raw --sizes "$SIZE" \
            send --to "1:$EP" --count "$COUNT"
        senders+=("$LAST")
    done
    for s in "${senders[@]}"; do wait "$s" || die "a sender failed: $(tail -3 "$TMP"/send*.err)"; done
    wait "$r" || die "the receiver failed: $(tail -3 "$TMP/recv.out" "$TMP/recv.err")"
    j="$(last_json recv)"
    [ "$(jq -r .received <<<"$j")" = "$total" ] || die "recv: $j"
    mbps="$(jq -r "($total - 1) * $SIZE / .secs / 1e6" <<<"$j")"
    s="$(stat_json 1)"
    errs=$(($(rxe_errs) - errs))
    r0="$(jq -r '.transport.verbs_rail0_read_bytes // .transport.verbs_read_bytes' <<<"$s")"
    r1="$(jq -r '.transport.verbs_rail1_read_bytes // 0' <<<"$s")"
    printf '%s %s %s %s %s %s\n' "$1" "$2" "$mbps" "$r0" "$r1" "${3:-A}" >>"$RESULTS"
    # The receive pipeline's depth reached ("-": an agent without the gauges).
    depth="$(jq -r '"\(.transport.verbs_chunks_in_flight_max // "-") chunks, \(.transport.verbs_reads_in_flight_max // "-") READs"' <<<"$s")"
    log "run $1: ${3:+build $3: }$2 rail(s): $total x $SIZE B in $(jq -r .secs <<<"$j") s = $(printf '%.1f' "$mbps") MB/s (node 1 READ rail 0 $r0 B, rail 1 $r1 B; $(jq -r .zero_copy <<<"$j") zero-copy; at most $depth in flight; $errs rxe retries/sequence errors)"
    agents_down
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
PT_PORT=18700
# pt_start NAME SDEV CDEV ADDR: an ib_read_bw pair (server on SDEV, client on CDEV -> ADDR),
# the client in the background (pid in $LAST), its output in $TMP/NAME.out.
pt_start() {
    local name=$1 i
    PT_PORT=$((PT_PORT + 1))
    bg "$name-srv" 120 ib_read_bw -d "$2" -x "$GID" -p "$PT_PORT" -s "$SIZE" -n "$((COUNT * SENDERS))"
    for ((i = 0; i < 300; i++)); do listening "$PT_PORT" && break; sleep 0.1; done
    bg "$name" 120 ib_read_bw -d "$3" -x "$GID" -p "$PT_PORT" -s "$SIZE" -n "$((COUNT * SENDERS))" "$4"
}
pt_mbps() { # NAME: BW average of its report in MB/s (perftest's MB = 2^20 B); "" if none
    awk -v s="$SIZE" '$1 == s && $2 ~ /^[0-9]+$/ && $4 ~ /^[0-9.]+$/ {printf "%.1f", $4 * 1048576 / 1e6}' "$TMP/$1.out"
}
perftest_control() { # RUN
    command -v ib_read_bw >/dev/null || { log "no ib_read_bw: control skipped"; return 0; }
    # perftest times with a CPU frequency it measures at start; under a busy emulator that
    # can fail ("Can't produce a report"): up to 3 attempts each.
    local one="" x="" y="" attempt a
    for attempt in 1 2 3; do
        pt_start pt1 "$DEV1" "$DEV0" "$ADDR1"
        wait "$LAST" || true
        one="$(pt_mbps pt1)"
        [ -n "$one" ] && break
    done
    for attempt in 1 2 3; do
        pt_start pta "$DEV1" "$DEV0" "$ADDR1"
        a=$LAST
        pt_start ptb "$RDEV1" "$RDEV0" "$RADDR1"
        wait "$a" || true
        wait "$LAST" || true
        x="$(pt_mbps pta)"; y="$(pt_mbps ptb)"
        [ -n "$x" ] && [ -n "$y" ] && break
        sleep 1
    done
    if [ -z "$one" ] || [ -z "$x" ] || [ -z "$y" ]; then
        log "run $1: ib_read_bw control: no usable report in 3 attempts ($(tail -n 3 "$TMP"/pt*.err 2>/dev/null | tr "\n" " "))"
        return 0
    fi
    printf 'pt %s %s %s %s\n' "$1" "$one" "$x" "$y" >>"$RESULTS"
    log "run $1: ib_read_bw $SIZE B: one pair alone $one MB/s; both pairs at once $x + $y = $(awk -v a="$x" -v b="$y" 'BEGIN {printf "%.1f", a + b}') MB/s"
}

echo "== bench/verbs_rails_guest.sh: verbs one rail ($DEV0 <-> $DEV1) vs two rails ($DEV0,$RDEV0 <-> $DEV1,$RDEV1)"
echo "guest: $(nproc) vCPUs, kernel $(uname -r); $RUNS runs; $SENDERS senders x $COUNT x $SIZE B, node 0 -> node 1; agents --idle $IDLE --block-bytes ${BLOCK_MIB}MiB${CHUNK:+ --chunk-bytes $CHUNK}"
if [ -n "$BIN_B" ]; then echo "A/B: build A = $BIN_A, build B = $BIN_B"; fi
if [ -n "$DELAY" ]; then
    for d in "$NETDEV0" "$RNETDEV0"; do
        tc qdisc add dev "$d" root netem delay "$DELAY" || die "tc netem on $d failed"
    done
    echo "delay: $DELAY added to what $NETDEV0 and $RNETDEV0 (node 0's ends) send"
fi
for ((run = 1; run <= RUNS; run++)); do
    if ((run % 2)); then order="1 2"; builds="A B"; else order="2 1"; builds="B A"; fi
    for rails in $order; do
        if [ -z "$BIN_B" ]; then measure "$run" "$rails"; continue; fi
        for b in $builds; do
            if [ "$b" = A ]; then BIN="$BIN_A"; else BIN="$BIN_B"; fi
            measure "$run" "$rails" "$b"
        done
        BIN="$BIN_A"
    done
    if [ "$PERFTEST" = 1 ]; then perftest_control "$run"; fi
done
python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
pt = [r[2:] for r in rows if r[0] == "pt"]
rows = [r for r in rows if r[0] != "pt"]
tags = sorted({r[5] for r in rows})
for tag in tags:
    by = {1: [], 2: []}
    share = []
    for run, rails, mbps, r0, r1, t in rows:
        if t != tag:
            continue
        by[int(rails)].append(float(mbps))
        if rails == "2" and int(r0) + int(r1) > 0:
            share.append(int(r0) / (int(r0) + int(r1)))
    one, two = statistics.median(by[1]), statistics.median(by[2])
    name = f"build {tag}: " if len(tags) > 1 else ""
    print(f"{name}median: one rail {one:.1f} MB/s, two rails {two:.1f} MB/s ({len(by[1])} and {len(by[2])} runs)")
    print(f"{name}two rails / one rail = {two / one:.2f}; two rails / (2 x one rail) = {two / (2 * one):.2f} (issue 18's goal: >= 0.9)")
    if share:
        print(f"{name}two rails: rail 0's share of the bytes READ, per run: {', '.join(f'{s:.2f}' for s in share)}")
if pt:
    alone = statistics.median(float(p[0]) for p in pt)
    both = statistics.median(float(p[1]) + float(p[2]) for p in pt)
    print(f"control, ib_read_bw: one pair alone {alone:.1f} MB/s, both pairs at once {both:.1f} MB/s "
          f"(x {both / alone:.2f}: what a second rail can add on these emulated devices at all)")
PY
