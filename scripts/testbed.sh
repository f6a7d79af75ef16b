#!/usr/bin/env bash
# Usage: scripts/testbed.sh up N     make N "nodes" on this machine (N >= 2)
#        scripts/testbed.sh down     remove them
#        scripts/testbed.sh status   print the state
#        scripts/testbed.sh memif [SOCKET]   print two agents' command lines on a memif pair
#
# memif (no namespaces, nothing to make): DPDK's net_memif joins exactly two processes
# through shared memory, one the memif server and one the client, named by one socket
# (SOCKET, default /tmp/wyvern-memif.sock; in the abstract namespace, memif's default, so
# no file is made). Nothing of the kernel on the data path, no root, no hugepages
# (--no-huge). `memif` prints the command lines; the agents may start in either order.
# A pair joins two agents only: three or more need the namespaces below (or one memif
# port per peer, which the dpdk transport does not have).
#
# Each node is a network namespace ${PREFIX}0 .. ${PREFIX}{N-1} (PREFIX: $TESTBED_PREFIX,
# default "wyv") with one veth interface, veth0, addressed 10.77.0.{i+1}/24 (IPv6 off, so
# the kernel stays quiet on it). N = 2: the two veth0 are the two ends of one pair. N > 2:
# each veth0 is paired with a port of a bridge, br0, in a hub namespace ${PREFIX}hub.
# The dpdk transport runs on them with net_af_packet:
#   ip netns exec wyv0 wyvern agent --transport dpdk \
#       --dpdk-eal-args "--no-pci --vdev=net_af_packet0,iface=veth0 --file-prefix=wyv0 --no-shconf --no-huge -m 128" ...
# TESTBED_MIDDLE=1 (N = 2 only): no direct pair; instead a middle namespace ${PREFIX}mid holds
# the other ends, l0 (towards ${PREFIX}0) and l1 (towards ${PREFIX}1), and nothing passes unless
# a forwarder runs there (the impaired-hop test runs one on DPDK).
# Environment: TESTBED_PREFIX (namespace names), TESTBED_MTU (default 1500; e.g. 9000 for
# jumbo frames), TESTBED_HUGEPAGES (hugepages to make sure are reserved, via
# scripts/setup-hugepages.sh; default 512, never lowered; "skip" to leave them alone).
# Needs root and iproute2. Idempotent: `up` creates only what is missing; `down` removes
# everything it made (and nothing else: only namespaces named ${PREFIX}<digits>,
# ${PREFIX}hub and ${PREFIX}mid). Never touches the root namespace's interfaces.
set -euo pipefail

prefix="${TESTBED_PREFIX:-wyv}"
mtu="${TESTBED_MTU:-1500}"
huge="${TESTBED_HUGEPAGES:-512}"
hub="${prefix}hub"
mid="${prefix}mid"
middle="${TESTBED_MIDDLE:-0}"
here="$(cd "$(dirname "$0")" && pwd)"

log() { printf '[wyvern testbed] %s\n' "$*"; }
die() { printf '[wyvern testbed] ERROR: %s\n' "$*" >&2; exit 1; }

case "$prefix" in ''|*[!a-zA-Z0-9_-]*) die "TESTBED_PREFIX must be [a-zA-Z0-9_-]+, got '$prefix'" ;; esac
[ "${#prefix}" -le 10 ] || die "TESTBED_PREFIX is too long (at most 10 characters)"
case "$mtu" in ''|*[!0-9]*) die "TESTBED_MTU must be a number, got '$mtu'" ;; esac

ns_exists() { ip netns list | awk '{print $1}' | grep -qx "$1"; }
# Namespaces this script made: ${prefix}<digits> and ${prefix}hub.
our_namespaces() {
    ip netns list | awk '{print $1}' | grep -E "^${prefix}([0-9]+|hub|mid)\$" || true
}

setup_ns() {
    local ns="$1"
    ns_exists "$ns" || ip netns add "$ns"
    ip -n "$ns" link set lo up
}

quiet_link() {
    local ns="$1" dev="$2"
    ip netns exec "$ns" sysctl -qw "net.ipv6.conf.${dev}.disable_ipv6=1" >/dev/null 2>&1 || true
    ip -n "$ns" link set "$dev" mtu "$mtu"
    ip -n "$ns" link set "$dev" up
}

status() {
    local any=0
    for ns in $(our_namespaces); do
        any=1
        log "namespace $ns:"
        { ip -n "$ns" -br link show | grep -v '^lo ' || true; } | sed 's/^/[wyvern testbed]   /'
        { ip -n "$ns" -br -4 addr show | grep -v '^lo ' || true; } | sed 's/^/[wyvern testbed]   /'
    done
    [ "$any" = 1 ] || log "no namespaces named ${prefix}N or ${hub}"
}

up() {
    local n="$1"
    case "$n" in ''|*[!0-9]*) die "N must be a number, got '$n'" ;; esac
    [ "$n" -ge 2 ] || die "N must be at least 2"
    [ "$n" -le 200 ] || die "N must be at most 200"
    [ "$(id -u)" -eq 0 ] || die "needs root (network namespaces)"
    command -v ip >/dev/null || die "needs iproute2 (ip)"
    if [ "$huge" != skip ]; then
        # Short of hugepages, wyvern falls back to normal shared pages: not a reason to stop.
        { bash "$here/setup-hugepages.sh" "$huge" 2>&1 \
            || echo "WARNING: hugepages not (fully) set up; wyvern falls back to normal shared pages"; } \
            | sed 's/^/  /'
    fi
    local i
    for ((i = 0; i < n; i++)); do setup_ns "${prefix}${i}"; done
    if [ "$middle" = 1 ]; then
        [ "$n" -eq 2 ] || die "TESTBED_MIDDLE=1 needs N = 2"
        setup_ns "$mid"
        for i in 0 1; do
            if ! ip -n "${prefix}${i}" link show veth0 >/dev/null 2>&1; then
                ip -n "$mid" link del "l$i" 2>/dev/null || true
                ip link add veth0 netns "${prefix}${i}" type veth peer name "l$i" netns "$mid"
            fi
            quiet_link "$mid" "l$i"
            quiet_link "${prefix}${i}" veth0
        done
    elif [ "$n" -eq 2 ]; then
        local a="${prefix}0" b="${prefix}1"
        if ! ip -n "$a" link show veth0 >/dev/null 2>&1; then
            # A stale half (the other end's namespace was deleted) goes first.
            ip -n "$b" link del veth0 2>/dev/null || true
            ip link add veth0 netns "$a" type veth peer name veth0 netns "$b"
        fi
        quiet_link "$a" veth0
        quiet_link "$b" veth0
    else
        setup_ns "$hub"
        if ! ip -n "$hub" link show br0 >/dev/null 2>&1; then
            ip -n "$hub" link add br0 type bridge
        fi
        ip netns exec "$hub" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 >/dev/null 2>&1 || true
        ip -n "$hub" link set br0 mtu "$mtu" 2>/dev/null || true
        ip -n "$hub" link set br0 up
        for ((i = 0; i < n; i++)); do
            local ns="${prefix}${i}"
            if ! ip -n "$ns" link show veth0 >/dev/null 2>&1; then
                ip -n "$hub" link del "p$i" 2>/dev/null || true
                ip link add veth0 netns "$ns" type veth peer name "p$i" netns "$hub"
            fi
            quiet_link "$hub" "p$i"
            ip -n "$hub" link set "p$i" master br0
            quiet_link "$ns" veth0
        done
    fi
    for ((i = 0; i < n; i++)); do
        ip -n "${prefix}${i}" addr replace "10.77.0.$((i + 1))/24" dev veth0
    done
    local how=", one veth pair"
    [ "$n" -gt 2 ] && how=", bridge br0 in $hub"
    [ "$middle" = 1 ] && how=", through $mid (l0, l1; a forwarder must run there)"
    log "up: $n nodes (${prefix}0..${prefix}$((n - 1))), MTU $mtu$how"
    status
}

down() {
    local ns
    for ns in $(our_namespaces); do
        ip netns del "$ns" && log "removed namespace $ns"
    done
    status
}

memif() {
    local sock="${1:-/tmp/wyvern-memif.sock}" i role
    case "$sock" in *,*|*' '*) die "SOCKET must not hold commas or spaces" ;; esac
    for i in 0 1; do
        role=server
        [ "$i" = 1 ] && role=client
        cat <<EOF
wyvern agent --node-id $i --nodes 127.0.0.1:0,127.0.0.1:0 --connect all --socket /tmp/wyvern-agent-$i.sock \\
    --transport dpdk --dpdk-eal-args "--no-pci --vdev=net_memif0,role=$role,socket=$sock \\
    --file-prefix=wyvmemif$i --no-shconf --no-huge -m 128 --no-telemetry"
EOF
    done
    echo "# clients: wyvern-peer --socket /tmp/wyvern-agent-I.sock ...; jumbo frames: --dpdk-mtu 9000"
    echo "# and ,bsize=9216 on both --vdev (a memif buffer must hold a whole frame); docs/dpdk.md"
}

case "${1:-}" in
    up) up "${2:-2}" ;;
    memif) memif "${2:-}" ;;
    down) down ;;
    status) status ;;
    -h|--help|'') sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; [ -n "${1:-}" ] ;;
    *) die "unknown command '$1' (up N | down | status | memif [SOCKET])" ;;
esac
