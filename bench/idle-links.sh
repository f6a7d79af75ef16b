#!/usr/bin/env bash
# The memory an agent gives back when its idle links close (issue 17): N
# agents (default 32) on loopback with on-demand links closed after IDLE_MS
# (default 20000) idle; every agent links to every other (`wyvern connect`),
# then the largest RssAnon with no link, with all N-1 links open and idle,
# and once all closed for idleness (each after the agent's heap trim, which
# runs at most every 5 s on a sleep).
# Usage: bench/idle-links.sh [N]   (TRANSPORT=tcp|udp, IDLE_MS, WYVERN=path)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-32}"
IDLE_MS="${IDLE_MS:-20000}"
TRANSPORT="${TRANSPORT:-tcp}"
W="${WYVERN:-target/debug/wyvern}"
D="$(mktemp -d /tmp/wyvern-idle-links.XXXXXX)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT
ports="$(python3 -c "
import socket
ss=[socket.socket() for _ in range($N)]
for s in ss: s.bind(('127.0.0.1',0))
print(','.join('127.0.0.1:%d' % s.getsockname()[1] for s in ss))")"
for ((i = 0; i < N; i++)); do
    RUST_LOG=warn "$W" agent --node-id "$i" --nodes "$ports" --socket "$D/a$i.sock" \
        --transport "$TRANSPORT" --connect on-demand --link-idle-ms "$IDLE_MS" \
        --block-bytes 16MiB --job 0x1d1e >"$D/a$i.log" 2>&1 &
    pids+=("$!")
done
for ((i = 0; i < N; i++)); do
    for _ in $(seq 200); do [ -S "$D/a$i.sock" ] && break; sleep 0.05; done
done
links() { # agent i, state -> count
    "$W" stat --json --socket "$D/a$1.sock" | python3 -c "import json,sys; print(json.load(sys.stdin)['links'].get('$2', 0))"
}
rss() { # largest RssAnon, KiB
    for p in "${pids[@]}"; do awk '/RssAnon/ {print $2}' "/proc/$p/status"; done | sort -n | tail -1
}
sleep 6
none="$(rss)"
for ((i = 0; i < N; i++)); do "$W" connect --socket "$D/a$i.sock" >/dev/null; done
for ((i = 0; i < N; i++)); do
    until [ "$(links "$i" up)" = $((N - 1)) ]; do sleep 0.1; done
done
sleep 6
open="$(rss)"
for ((i = 0; i < N; i++)); do
    until [ "$(links "$i" closed)" = $((N - 1)) ]; do sleep 0.2; done
done
sleep 6
closed="$(rss)"
echo "$N agents on $TRANSPORT, link_idle_ms $IDLE_MS: largest RssAnon with no link $none KiB; all $((N - 1)) links up, open and idle: $open KiB ($(( (open - none) * 1024 / (N - 1) )) B per link); all closed for idleness: $closed KiB ($(( (closed - none) * 1024 / (N - 1) )) B per closed peer)"
