#!/usr/bin/env bash
# Usage: scripts/setup-hugepages.sh [options] [N]
#        scripts/setup-hugepages.sh --show | --clear | --mount | --unmount [options]
#
# Hugepage reservations and hugetlbfs mounts, in the manner of DPDK's dpdk-hugepages.py.
# Without an action: reserves at least N pages (default: 1 GiB worth, 512 x 2M) of the page
# size, mounts hugetlbfs for that size, and shows the result. An existing larger reservation
# is never lowered (use --clear first). wyvern's pool takes 2 MiB pages (and falls back to normal
# shared pages without them); 1 GiB pages serve DPDK.
#
# Actions (one at most):
#   -s, --show             show, per page size and NUMA node, the pages reserved and free,
#                          and the hugetlbfs mounts; change nothing
#   -c, --clear            free the reservations: of the -p size (default: every size), on
#                          the -n node (default: every node); mounts stay
#   -m, --mount            only mount hugetlbfs for the -p size at the -d directory
#   -u, --unmount          only unmount the hugetlbfs at the -d directory
# Options:
#   N                      pages to reserve at least (default: 1 GiB worth: 512 x 2M, 1 x 1G)
#   -r, --reserve AMOUNT   reserve at least AMOUNT of memory instead of N pages: bytes
#                          with K, M or G (e.g. 1G, 512M), rounded up to whole pages
#   -p, --pagesize SIZE    2M or 1G (or what else /sys/kernel/mm/hugepages offers, as
#                          2048kB, 1GB, ...); default: the kernel's default size
#   -n, --node N           on NUMA node N only (default: the kernel spreads them)
#   -d, --directory DIR    the hugetlbfs mount point (default /dev/hugepages for the
#                          default size, /dev/hugepages-SIZE for another, e.g. -1G)
#   --no-mount             reserve only
#   --drop-caches          when the kernel grants too few pages, drop clean page caches
#                          (besides compacting memory) before the one retry; never by default
#   -h, --help             this text
# Exit status: 0 when everything asked for is in place; 1 when it is not (the kernel granted
# fewer pages than asked, not root, no hugetlb support, a mount failed), with an ERROR line
# saying why; 2 for usage errors (an unsupported page size, a missing node, a request larger
# than the machine's memory, which is refused before asking the kernel).
# HUGEPAGES_ROOT (tests only) prefixes /sys and /proc, to run against a fake tree.
set -euo pipefail

log() { printf '[wyvern hugepages] %s\n' "$*"; }
err() { printf '[wyvern hugepages] ERROR: %s\n' "$*" >&2; }
die() { err "$1"; exit "${2:-1}"; }
usage_err() { die "$1 (see --help)" 2; }

root="${HUGEPAGES_ROOT:-}"
sys_hp="$root/sys/kernel/mm/hugepages"
sys_node="$root/sys/devices/system/node"
meminfo="$root/proc/meminfo"
mounts="$root/proc/mounts"

action=setup
want=""
reserve=""
pagesize=""
node=""
dir=""
mount=1
drop_caches=0
set_action() {
    [ "$action" = setup ] || usage_err "only one of --show, --clear, --mount, --unmount"
    action="$1"
}
need_val() { [ "$#" -ge 2 ] || usage_err "$1 needs a value"; }
while [ "$#" -gt 0 ]; do
    case "$1" in
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        -s|--show) set_action show; shift ;;
        -c|--clear) set_action clear; shift ;;
        -m|--mount) set_action mount; shift ;;
        -u|--unmount) set_action unmount; shift ;;
        -r|--reserve) need_val "$@"; reserve="$2"; shift 2 ;;
        -p|--pagesize) need_val "$@"; pagesize="$2"; shift 2 ;;
        -n|--node) need_val "$@"; node="$2"; shift 2 ;;
        -d|--directory) need_val "$@"; dir="$2"; shift 2 ;;
        --no-mount) mount=0; shift ;;
        --drop-caches) drop_caches=1; shift ;;
        --) shift; break ;;
        -*) usage_err "unknown option '$1'" ;;
        *) [ -z "$want" ] || usage_err "one page count at most (got '$want' and '$1')"
           want="$1"; shift ;;
    esac
done
if [ "$#" -gt 0 ]; then
    [ -z "$want" ] && [ "$#" -eq 1 ] || usage_err "too many arguments"
    want="$1"
fi
is_num() { case "$1" in ''|*[!0-9]*) return 1 ;; *) return 0 ;; esac; }
if [ -n "$want" ]; then
    is_num "$want" || usage_err "N must be a non-negative integer, got '$want'"
    [ -z "$reserve" ] || usage_err "give N pages or --reserve AMOUNT, not both"
    want=$((10#$want))
fi
if [ -n "$node" ]; then is_num "$node" || usage_err "--node needs a node number, got '$node'"; fi

meminfo_kb() { awk -v k="$1:" '$1 == k { print $2; exit }' "$meminfo" 2>/dev/null; }

# ------------------------------------------------------------------ page sizes
[ -d "$sys_hp" ] || die "this kernel has no hugetlb support ($sys_hp missing)"
sizes_kb=()   # every size the kernel offers, in kB, ascending
for d in "$sys_hp"/hugepages-*kB; do
    [ -d "$d" ] || continue
    k="${d##*/hugepages-}"; sizes_kb+=("${k%kB}")
done
[ "${#sizes_kb[@]}" -gt 0 ] || die "this kernel offers no hugepage size ($sys_hp is empty)"
mapfile -t sizes_kb < <(printf '%s\n' "${sizes_kb[@]}" | sort -n)
default_kb="$(meminfo_kb Hugepagesize)"
default_kb="${default_kb:-${sizes_kb[0]}}"

# 2M, 2MB, 2048k, 2048kB, 1G, 1GB, 1048576kB -> kB
size_kb() {
    local v="${1%[bB]}" n
    case "$v" in
        *[kK]) n="${v%[kK]}"; is_num "$n" && echo "$n" ;;
        *[mM]) n="${v%[mM]}"; is_num "$n" && echo $((n * 1024)) ;;
        *[gG]) n="${v%[gG]}"; is_num "$n" && echo $((n * 1024 * 1024)) ;;
        *) return 1 ;;
    esac
}
# kB -> 2M, 1G
size_name() {
    local k="$1"
    if [ $((k % 1048576)) -eq 0 ]; then echo "$((k / 1048576))G"
    elif [ $((k % 1024)) -eq 0 ]; then echo "$((k / 1024))M"
    else echo "${k}K"; fi
}
offered="$(for k in "${sizes_kb[@]}"; do printf '%s ' "$(size_name "$k")"; done)"
offered="${offered% }"
if [ -n "$pagesize" ]; then
    kb="$(size_kb "$pagesize" || true)"
    [ -n "$kb" ] || usage_err "--pagesize '$pagesize' is not a size (e.g. 2M or 1G)"
    [ -d "$sys_hp/hugepages-${kb}kB" ] \
        || die "page size $pagesize is not supported by this kernel/CPU (it offers: $offered)" 2
else
    kb="$default_kb"
fi
name="$(size_name "$kb")"

# The nr_hugepages / free_hugepages files of size $1 (kB) on node $2 (empty: all nodes).
hp_dir() {
    if [ -n "$2" ]; then echo "$sys_node/node$2/hugepages/hugepages-$1kB"
    else echo "$sys_hp/hugepages-$1kB"; fi
}
nodes=()
for d in "$sys_node"/node[0-9]*; do [ -d "$d/hugepages" ] && nodes+=("${d##*/node}"); done
if [ -n "$node" ]; then
    [ -d "$(hp_dir "$kb" "$node")" ] || die "no NUMA node $node with hugepages here (nodes: ${nodes[*]:-none})" 2
fi
read_n() { local v; v="$(cat "$1" 2>/dev/null)" || v=0; echo "${v:-0}"; }

default_dir() {
    if [ "$1" = "$default_kb" ]; then echo /dev/hugepages; else echo "/dev/hugepages-$(size_name "$1")"; fi
}
[ -n "$dir" ] || dir="$(default_dir "$kb")"
mount_line() { awk -v m="$1" '$2 == m && $3 == "hugetlbfs"' "$mounts" 2>/dev/null | tail -n 1; }

# --------------------------------------------------------------------- show
show() {
    local k n d t f
    printf '%-6s %-5s %10s %10s\n' size node total free
    for k in "${sizes_kb[@]}"; do
        d="$(hp_dir "$k" "")"
        printf '%-6s %-5s %10s %10s%s\n' "$(size_name "$k")" all "$(read_n "$d/nr_hugepages")" \
            "$(read_n "$d/free_hugepages")" "$([ "$k" = "$default_kb" ] && echo "   (default size)")"
        for n in "${nodes[@]}"; do
            d="$(hp_dir "$k" "$n")"
            [ -d "$d" ] || continue
            printf '%-6s %-5s %10s %10s\n' "$(size_name "$k")" "$n" "$(read_n "$d/nr_hugepages")" \
                "$(read_n "$d/free_hugepages")"
        done
    done
    local m
    m="$(awk '$3 == "hugetlbfs" { print "mount: " $2 " (" $4 ")" }' "$mounts" 2>/dev/null)"
    printf '%s\n' "${m:-mount: no hugetlbfs mounted}"
}

# ------------------------------------------------------------------ reserve
# set_pages FILE N: write N; returns what the kernel then holds.
set_pages() {
    local e
    if ! e="$( { printf '%s\n' "$2" >"$1"; } 2>&1 )"; then
        e="${e##*: }"
        if [ "$(id -u)" -ne 0 ]; then
            die "cannot write $1: not root (${e:-permission denied})"
        fi
        die "the kernel refused writing $2 to $1 (${e:-unknown error})"
    fi
    read_n "$1"
}

reserve_pages() {
    local file have total_kb
    file="$(hp_dir "$kb" "$node")/nr_hugepages"
    if [ -n "$reserve" ]; then
        local bytes_kb
        bytes_kb="$(size_kb "$reserve" || true)"
        [ -n "$bytes_kb" ] || usage_err "--reserve '$reserve' is not an amount (e.g. 1G or 512M)"
        want=$(( (bytes_kb + kb - 1) / kb ))
    fi
    want="${want:-$(( (1048576 + kb - 1) / kb ))}"   # default: 1 GiB worth (512 x 2M, 1 x 1G)
    total_kb="$(meminfo_kb MemTotal)"
    if [ -n "$total_kb" ] && [ $((want * kb)) -ge "$total_kb" ]; then
        die "$want pages of $name ($((want * kb / 1024)) MiB) are more than this machine's memory ($((total_kb / 1024)) MiB); nothing changed" 2
    fi
    have="$(read_n "$file")"
    local where="${node:+ on node $node}"
    if [ "$have" -ge "$want" ]; then
        log "$name pages$where: $have reserved (>= $want wanted), leaving as is"
        return 0
    fi
    log "$name pages$where: $have reserved, asking the kernel for $want"
    have="$(set_pages "$file" "$want")"
    if [ "$have" -lt "$want" ]; then
        # Too little contiguous memory: compact it (and, if allowed, drop clean caches), retry once.
        log "$name pages$where: the kernel granted only $have; compacting memory and retrying once"
        { echo 1 >"$root/proc/sys/vm/compact_memory"; } 2>/dev/null || true
        if [ "$drop_caches" = 1 ]; then
            log "dropping clean page caches (--drop-caches)"
            sync || true
            { echo 3 >"$root/proc/sys/vm/drop_caches"; } 2>/dev/null || true
        fi
        have="$(set_pages "$file" "$want")"
    fi
    if [ "$have" -lt "$want" ]; then
        # Keep what was granted: it is still usable.
        die "the kernel granted only $have of $want $name pages$where (not enough free contiguous memory; try earlier after boot, --drop-caches, or fewer pages)"
    fi
    log "$name pages$where: now $have reserved"
}

# -------------------------------------------------------------------- mounts
do_mount() {
    local line
    line="$(mount_line "$dir")"
    if [ -n "$line" ]; then
        case "$line" in
            *"pagesize=$name"*|*"pagesize=${name}B"*) log "hugetlbfs ($name): already mounted at $dir"; return 0 ;;
        esac
        if [ "$kb" = "$default_kb" ] && [[ "$line" != *pagesize=* ]]; then
            log "hugetlbfs: already mounted at $dir"; return 0
        fi
        die "$dir is a hugetlbfs of another page size ($line); choose another --directory"
    fi
    if awk -v m="$dir" '$2 == m { f = 1 } END { exit !f }' "$mounts" 2>/dev/null; then
        die "$dir is mounted, but not as hugetlbfs; not touching it"
    fi
    local e
    if e="$( { mkdir -p "$dir" && mount -t hugetlbfs -o "pagesize=$name" nodev "$dir"; } 2>&1 )"; then
        log "hugetlbfs ($name): mounted at $dir"
    else
        die "could not mount hugetlbfs ($name) at $dir: $(printf '%s' "$e" | tr -s '\n\t ' ' ')"
    fi
}
do_unmount() {
    if [ -z "$(mount_line "$dir")" ]; then
        log "no hugetlbfs at $dir"
        return 0
    fi
    umount "$dir" || die "could not unmount $dir"
    log "unmounted $dir"
}

case "$action" in
    show) show ;;
    clear)
        [ -z "$want$reserve" ] || usage_err "--clear takes no page count"
        if [ -n "$pagesize" ]; then clear_kb=("$kb"); else clear_kb=("${sizes_kb[@]}"); fi
        for k in "${clear_kb[@]}"; do
            if [ -n "$node" ]; then
                f="$(hp_dir "$k" "$node")/nr_hugepages"
            else
                f="$(hp_dir "$k" "")/nr_hugepages"
            fi
            [ -e "$f" ] || continue
            left="$(set_pages "$f" 0)"
            # Pages in use stay reserved until freed.
            if [ "$left" -gt 0 ]; then
                log "$(size_name "$k") pages${node:+ on node $node}: $left still in use, freed when their users exit"
            else
                log "$(size_name "$k") pages${node:+ on node $node}: cleared"
            fi
        done
        show ;;
    mount) do_mount ;;
    unmount) do_unmount ;;
    setup)
        reserve_pages
        if [ "$mount" = 1 ]; then do_mount; fi
        show ;;
esac
