#!/usr/bin/env bash
# Usage: scripts/setup-hugepages.sh [N]     (default N=512 default-size pages, i.e. 2 MiB each = 1 GiB)
#
# Reserves at least N hugepages (via /proc/sys/vm/nr_hugepages; an existing larger
# reservation is never lowered), mounts hugetlbfs at /dev/hugepages if it is not
# mounted yet, and prints the resulting state.
# Never fails because of permissions or the kernel: when not root, or when the
# kernel refuses (or grants only part of the pages), it prints a warning that
# wyvern will fall back to normal shared pages and exits 0. Idempotent.
set -euo pipefail

log()  { printf '[wyvern setup] %s\n' "$*"; }
warn() { printf '[wyvern setup] WARNING: %s\n' "$*" >&2; }

want="${1:-512}"
case "$want" in
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    ''|*[!0-9]*) printf '[wyvern setup] ERROR: N must be a non-negative integer, got %s\n' "$want" >&2; exit 2 ;;
esac
want=$((10#$want))

sysctl_file=/proc/sys/vm/nr_hugepages
mnt=/dev/hugepages
degraded=()   # reasons why wyvern will (partly) fall back to normal pages

meminfo_kb() { awk -v k="$1:" '$1 == k { print $2; exit }' /proc/meminfo; }
hugetlbfs_mount_line() { awk -v m="$mnt" '$2 == m && $3 == "hugetlbfs"' /proc/mounts; }

# ------------------------------------------------------------------ reservation
if [ ! -r "$sysctl_file" ]; then
    degraded+=("kernel has no hugetlb support ($sysctl_file missing)")
else
    have="$(cat "$sysctl_file")"
    if [ "$have" -ge "$want" ]; then
        log "hugepages: $have reserved (>= $want wanted), leaving as is"
    else
        log "hugepages: $have reserved, asking the kernel for $want"
        if err="$( { printf '%s\n' "$want" > "$sysctl_file"; } 2>&1 )"; then
            # The kernel may grant fewer pages than asked (fragmented memory) without an error.
            have="$(cat "$sysctl_file")"
            if [ "$have" -lt "$want" ]; then
                # One retry after compacting memory and dropping clean caches often frees enough contiguous memory.
                log "hugepages: kernel granted only $have; compacting memory and retrying once"
                sync || true
                { echo 1 > /proc/sys/vm/compact_memory; } 2>/dev/null || true
                { echo 3 > /proc/sys/vm/drop_caches; } 2>/dev/null || true
                { printf '%s\n' "$want" > "$sysctl_file"; } 2>/dev/null || true
                have="$(cat "$sysctl_file")"
            fi
            if [ "$have" -lt "$want" ]; then
                degraded+=("kernel granted only $have of $want hugepages")
            else
                log "hugepages: now $have reserved"
            fi
        else
            err="${err##*: }"
            if [ "$(id -u)" -ne 0 ]; then
                degraded+=("cannot write $sysctl_file: not root (${err:-permission denied})")
            else
                degraded+=("kernel refused writing $sysctl_file (${err:-unknown error})")
            fi
        fi
    fi
    [ "$have" -gt 0 ] || degraded+=("no hugepages are reserved")
fi

# ------------------------------------------------------------------------ mount
if [ -n "$(hugetlbfs_mount_line)" ]; then
    log "hugetlbfs: already mounted at $mnt"
else
    if awk -v m="$mnt" '$2 == m { found = 1 } END { exit !found }' /proc/mounts; then
        degraded+=("$mnt is mounted but not as hugetlbfs; not touching it")
    elif ! grep -qw hugetlbfs /proc/filesystems 2>/dev/null; then
        degraded+=("kernel does not support hugetlbfs")
    else
        log "hugetlbfs: mounting at $mnt"
        if err="$( { mkdir -p "$mnt" && mount -t hugetlbfs nodev "$mnt"; } 2>&1 )"; then
            log "hugetlbfs: mounted at $mnt"
        else
            err="$(printf '%s' "$err" | tr -s '\n\t ' ' ')"
            degraded+=("could not mount hugetlbfs at $mnt: ${err:-unknown error}")
        fi
    fi
fi

# ------------------------------------------------------------------------ state
log "state:"
for k in HugePages_Total HugePages_Free HugePages_Rsvd Hugepagesize; do
    v="$(meminfo_kb "$k" || true)"
    if [ "$k" = Hugepagesize ]; then
        printf '[wyvern setup]   %-16s %s kB\n' "$k:" "${v:-?}"
    else
        printf '[wyvern setup]   %-16s %s\n' "$k:" "${v:-?}"
    fi
done
line="$(hugetlbfs_mount_line)"
printf '[wyvern setup]   %-16s %s\n' "mount:" "${line:-(hugetlbfs not mounted at $mnt)}"

if [ "${#degraded[@]}" -gt 0 ]; then
    for r in "${degraded[@]}"; do warn "$r"; done
    warn "wyvern will fall back to normal (non-huge) shared pages where hugepages are unavailable"
else
    log "hugepages ready"
fi
exit 0
