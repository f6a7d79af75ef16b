#!/usr/bin/env bash
# Usage: scripts/rxe-vm.sh scripts/rxe-smoke.sh      (runs inside the Soft-RoCE VM)
#
# Proves the VM's two rxe devices work and carry traffic across the veth between them:
#   1. ibv_devinfo shows both devices with port 1 PORT_ACTIVE (and the expected active MTU);
#   2. ib_send_lat (RC send/recv, 200 iterations) server on the second device, client on the
#      first, connecting to the second's address with GID index 1 (RoCE v2, IPv4-mapped);
#   3. ib_write_bw (RDMA write, 64 KiB, 50 iterations) the same way;
#   4. the first veth end's tx counter and the devices' packet counters grew by at least the
#      number of messages, so the packets really went through the veth (not through lo).
# Reads WYVERN_RXE_DEVS, WYVERN_RXE_NETDEVS, WYVERN_RXE_ADDRS, WYVERN_RXE_GID_INDEX and
# WYVERN_RXE_MTU, which scripts/rxe-vm.sh sets. Every step has a timeout of seconds (the VM
# is emulated: a 2-byte round trip takes ~0.1 ms idle, several ms on a busy host).
# Exits 0 when everything held, 1 otherwise.
set -euo pipefail

log() { printf '[rxe-smoke] %s\n' "$*"; }
fail() { printf '[rxe-smoke] FAILED: %s\n' "$*" >&2; exit 1; }

case "${1:-}" in -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
[ -n "${WYVERN_RXE_DEVS:-}" ] || fail "WYVERN_RXE_DEVS is not set: run me through scripts/rxe-vm.sh"
read -r dev0 dev1 _ <<<"$WYVERN_RXE_DEVS"
read -r net0 _ <<<"${WYVERN_RXE_NETDEVS:-}"
read -r _ addr1 _ <<<"${WYVERN_RXE_ADDRS:-}"
gid="${WYVERN_RXE_GID_INDEX:-1}"
if [ -z "$dev1" ] || [ -z "$net0" ] || [ -z "$addr1" ]; then
    fail "need two devices, netdevs and addresses in WYVERN_RXE_DEVS, _NETDEVS, _ADDRS"
fi
for t in ibv_devinfo ib_send_lat ib_write_bw; do
    command -v "$t" >/dev/null 2>&1 || fail "$t not found (packages ibverbs-utils, perftest)"
done

# ------------------------------------------------------------------ 1. ibv_devinfo
for d in "$dev0" "$dev1"; do
    info="$(timeout 30 ibv_devinfo -d "$d")" || fail "ibv_devinfo -d $d"
    state="$(awk '/state:/ { print $2; exit }' <<<"$info")"
    mtu="$(awk '/active_mtu:/ { print $2; exit }' <<<"$info")"
    log "$d: port 1 $state, active MTU $mtu"
    [ "$state" = PORT_ACTIVE ] || fail "$d port 1 is $state, not PORT_ACTIVE"
    if [ -n "${WYVERN_RXE_MTU:-}" ] && [ "$mtu" != "$WYVERN_RXE_MTU" ]; then
        fail "$d active MTU $mtu, expected $WYVERN_RXE_MTU"
    fi
done

counter() { cat "$1" 2>/dev/null || echo 0; }
veth_tx="/sys/class/net/$net0/statistics/tx_packets"
sent0="/sys/class/infiniband/$dev0/ports/1/hw_counters/sent_pkts"
rcvd1="/sys/class/infiniband/$dev1/ports/1/hw_counters/rcvd_pkts"
tx_before="$(counter "$veth_tx")"
rcvd_before="$(counter "$rcvd1")"

# Runs one perftest pair: server on dev1 (in the background), client on dev0 to addr1.
port=18515
pair() {
    local name="$1"; shift
    port=$((port + 1))
    local out server rc=0 src=0
    out="$(mktemp)"
    timeout 120 stdbuf -oL "$name" -d "$dev1" -x "$gid" -p "$port" "$@" >"$out" 2>&1 &
    server=$!
    # The client cannot retry a refused connection: wait for the server to listen.
    for _ in $(seq 1 100); do
        ss -ltn "sport = :$port" 2>/dev/null | grep -q ":$port" && break
        sleep 0.2
    done
    log "$name $* : $dev0 -> $dev1 ($addr1), GID index $gid"
    timeout 120 stdbuf -oL "$name" -d "$dev0" -x "$gid" -p "$port" "$@" "$addr1" || rc=$?
    wait "$server" || src=$?
    if [ "$src" != 0 ]; then
        log "server side:"; cat "$out"; rm -f "$out"
        fail "$name server on $dev1 exited $src (124: timed out)"
    fi
    rm -f "$out"
    [ "$rc" = 0 ] || fail "$name client on $dev0 exited $rc (124: timed out)"
}

# ------------------------------------------------------------------ 2, 3. perftest
pair ib_send_lat -n 200 -s 2
pair ib_write_bw -n 50 -s 65536

# ------------------------------------------------------------------ 4. counters
tx_after="$(counter "$veth_tx")"
rcvd_after="$(counter "$rcvd1")"
log "$net0 tx_packets +$((tx_after - tx_before)); $dev1 rcvd_pkts +$((rcvd_after - rcvd_before));" \
    "$dev0 sent_pkts $(counter "$sent0")"
[ $((tx_after - tx_before)) -ge 250 ] \
    || fail "only $((tx_after - tx_before)) packets left $net0: the RDMA traffic did not cross the veth"
if [ -e "$rcvd1" ]; then
    [ $((rcvd_after - rcvd_before)) -ge 250 ] || fail "$dev1 received only $((rcvd_after - rcvd_before)) packets"
fi
log "OK: $dev0 and $dev1 exchanged RDMA traffic across $net0"
