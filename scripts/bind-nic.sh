#!/usr/bin/env bash
# Usage: scripts/bind-nic.sh [--dry-run] [--driver vfio-pci] PCI_ADDRESS
#        scripts/bind-nic.sh --unbind [--dry-run] [--driver KERNEL_DRIVER] PCI_ADDRESS
#
# Hands a real NIC to DPDK on an HPC node: binds the PCI function PCI_ADDRESS (e.g.
# 0000:3b:00.0, as `dpdk-devbind.py --status` lists it) to vfio-pci with dpdk-devbind.py,
# after loading the vfio-pci module. The kernel loses the interface: its addresses and
# routes go with it. Then run the agent with
#   --transport dpdk --dpdk-eal-args "-a 0000:3b:00.0 -l 2 --file-prefix=wyvern" --dpdk-port 0000:3b:00.0
# `--unbind` gives the function back to a kernel driver (--driver, e.g. ice, mlx5_core;
# default: the one dpdk-devbind.py reports as unused for it).
#
# Refuses:
#   - without an explicit PCI address (nothing is ever picked automatically);
#   - a function whose interface carries a default route (`ip route show default`), or
#     any interface with an address that routes the current SSH session: losing it
#     would cut the node off;
#   - an interface that is up with IPv4 addresses, unless --force;
#   - a PCI function that is not a network controller (class 0x02xxxx).
# --dry-run prints what would be done and changes nothing (no root needed).
# Mellanox/NVIDIA mlx5 NICs need no binding (their PMD works beside the kernel driver):
# the script says so and stops.
set -euo pipefail

log() { printf '[wyvern bind-nic] %s\n' "$*"; }
die() { printf '[wyvern bind-nic] REFUSED: %s\n' "$*" >&2; exit 2; }

dry=0
force=0
unbind=0
driver=""
pci=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry=1 ;;
        --force) force=1 ;;
        --unbind) unbind=1 ;;
        --driver) shift; driver="${1:-}" ;;
        --driver=*) driver="${1#--driver=}" ;;
        -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1" ;;
        *) [ -z "$pci" ] || die "one PCI address only (got $pci and $1)"; pci="$1" ;;
    esac
    shift
done

[ -n "$pci" ] || die "no PCI address given; name the function explicitly (see: dpdk-devbind.py --status)"
# Accept the short form 3b:00.0 and make it 0000:3b:00.0.
if [[ "$pci" =~ ^[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$ ]]; then
    pci="0000:$pci"
fi
[[ "$pci" =~ ^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$ ]] \
    || die "'$pci' is not a PCI address (DDDD:BB:DD.F)"
[ "$unbind" = 1 ] || driver="${driver:-vfio-pci}"

# BIND_NIC_SYSFS: another sysfs root (for tests of this script).
sysdev="${BIND_NIC_SYSFS:-/sys}/bus/pci/devices/$pci"
[ -e "$sysdev" ] || die "no PCI device $pci on this machine ($sysdev does not exist)"

# Only network controllers (PCI class 0x02xxxx).
class="$(cat "$sysdev/class" 2>/dev/null || echo unknown)"
case "$class" in
    0x02*) ;;
    *) die "$pci is not a network controller (PCI class $class)" ;;
esac

# The kernel interfaces of the function (none if already bound to a DPDK driver).
ifaces=()
# (Directly under net/, or one level down: virtio NICs have them under virtioN/net/.)
for d in "$sysdev"/net/* "$sysdev"/*/net/*; do
    [ -e "$d" ] && ifaces+=("$(basename "$d")")
done
cur_driver=""
[ -e "$sysdev/driver" ] && cur_driver="$(basename "$(readlink -f "$sysdev/driver")")"
log "device $pci: driver ${cur_driver:-none}, interfaces: ${ifaces[*]:-none}"

if [ "$unbind" = 0 ]; then
    case "$cur_driver" in
        mlx5_core|mlx4_core)
            log "$cur_driver NICs are driven by DPDK beside the kernel driver (bifurcated): no binding needed"
            log "use: --dpdk-eal-args \"-a $pci -l 2 --file-prefix=wyvern\""
            exit 0 ;;
        vfio-pci|uio_pci_generic|igb_uio)
            log "$pci is already bound to $cur_driver: nothing to do"
            exit 0 ;;
    esac
    default_devs="$(ip route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1)}' | sort -u)"
    default6_devs="$(ip -6 route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1)}' | sort -u)"
    ssh_dev=""
    if [ -n "${SSH_CONNECTION:-}" ]; then
        ssh_peer="$(printf '%s' "$SSH_CONNECTION" | awk '{print $1}')"
        ssh_dev="$(ip route get "$ssh_peer" 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1)}' | head -n1)"
    fi
    for ifc in "${ifaces[@]}"; do
        for d in $default_devs $default6_devs; do
            [ "$d" != "$ifc" ] || die "$pci is $ifc, which carries the default route ($(ip route show default dev "$ifc" 2>/dev/null | head -n1)); binding it would cut this node off"
        done
        [ "$ifc" != "$ssh_dev" ] || die "$pci is $ifc, which carries this SSH session"
        if [ "$force" = 0 ] && ip -4 -br addr show dev "$ifc" 2>/dev/null | awk '$2 == "UP" && NF > 2 {f = 1} END {exit !f}'; then
            die "$ifc is up with IPv4 addresses ($(ip -4 -br addr show dev "$ifc" | cut -d' ' -f3-)); take it down first or pass --force"
        fi
    done
fi

devbind="$(command -v dpdk-devbind.py || command -v dpdk-devbind || true)"
run() {
    if [ "$dry" = 1 ]; then
        log "would run: $*"
    else
        log "running: $*"
        "$@"
    fi
}

if [ "$dry" = 0 ]; then
    [ "$(id -u)" -eq 0 ] || die "needs root (or use --dry-run)"
    [ -n "$devbind" ] || die "dpdk-devbind.py not found (Debian: apt-get install dpdk)"
fi
devbind="${devbind:-dpdk-devbind.py}"

if [ "$unbind" = 1 ]; then
    if [ -n "$driver" ]; then
        run "$devbind" --bind="$driver" "$pci"
    else
        run "$devbind" --unbind "$pci"
        log "unbound; bind it to its kernel driver with --unbind --driver NAME"
    fi
else
    if [ "$driver" = vfio-pci ]; then
        run modprobe vfio-pci
        if [ ! -d /sys/kernel/iommu_groups ] || [ -z "$(ls -A /sys/kernel/iommu_groups 2>/dev/null)" ]; then
            log "note: no IOMMU groups: enable the IOMMU (intel_iommu=on / amd_iommu=on) or use vfio's no-IOMMU mode"
        fi
    fi
    for ifc in "${ifaces[@]}"; do run ip link set "$ifc" down; done
    run "$devbind" --bind="$driver" "$pci"
    [ "$dry" = 1 ] || "$devbind" --status-dev net | grep -F "$pci" || true
fi
[ "$dry" = 0 ] || log "dry run: nothing changed"
