#!/usr/bin/env bash
# Usage: scripts/rxe-vm.sh [options] CMD [ARGS...]
#        scripts/rxe-vm.sh --check | -h | --help
#
# Runs CMD on real Soft-RoCE (rdma_rxe) inside a small emulated VM, for machines whose own
# kernel has no RDMA. The VM boots Debian 12's 6.1 kernel (package linux-image-amd64,
# installed beside the running kernel, which stays untouched) with a busybox initramfs this
# script builds and caches; the host's root file system is shared read-only over 9p and the
# guest chroots into it, so host binaries (cargo test binaries included) run unchanged.
# In the guest: two rxe devices on the two ends of a veth pair, with policy routing so that
# rxe0 <-> rxe1 traffic really crosses the veth, and a second such pair (rxe2 <-> rxe3) for
# multi-rail tests (each node's second rail); hugetlbfs at /dev/hugepages; fresh tmpfs on
# /tmp /run /dev/shm; `ulimit -l unlimited`. CMD runs as root in the caller's working
# directory. The guest's /tmp, /run and /dev/shm are its own, so a working directory under
# them (a clone in /tmp), CMD's own directory and $CARGO_TARGET_DIR when they lie there, and
# each --share DIR, are shared again, read-only, each over a 9p share of its own, mounted at
# the same path in the guest. (Under /proc, /sys or the rest of /dev they are refused.)
# CMD's stdout and stderr come back live; the script exits with CMD's exit status.
#
# CMD's environment is clean except: PATH, RUST_BACKTRACE, RUST_LOG, every WYVERN_* variable
# of the caller, the variables named with --env, HOME=/tmp/home (a tmpfs; the caller's home
# stays visible read-only), and what the guest adds:
#   WYVERN_RXE_VM=1  WYVERN_RXE_DEVS="rxe0 rxe1"  WYVERN_RXE_NETDEVS="veth0 veth1"
#   WYVERN_RXE_ADDRS="10.77.0.1 10.77.0.2"  WYVERN_RXE_GID_INDEX=1 (IPv4-mapped, RoCE v2)
#   WYVERN_RXE_RAIL_DEVS="rxe2 rxe3"  WYVERN_RXE_RAIL_NETDEVS="veth2 veth3"
#   WYVERN_RXE_RAIL_ADDRS="10.77.1.1 10.77.1.2" (the second pair: node i's second rail)
#   WYVERN_RXE_MTU (active path MTU, 4096 by default)  WYVERN_RXE_HUGEPAGES (2 MiB pages granted)
#
# Options:
#   --env NAME[=VALUE]  forward NAME from the caller's environment (or set it); repeatable
#   --share DIR         make DIR (under /tmp, /run or /dev/shm) visible at the same path in
#                       the guest, read-only; repeatable (the working directory is by itself)
#   --timeout SECS      kill the VM after SECS in all (default 900, WYVERN_RXE_VM_TIMEOUT)
#   --boot-timeout SECS the guest's init must start within SECS (default 180)
#   --mem MIB           guest memory (default 2048)       --smp N   vCPUs (default 2)
#   --hugepages N       2 MiB pages to reserve in the guest (default 256; 0 = none)
#   --mtu N             veth MTU (default 9000, so the active RDMA MTU is 4096)
#   --accel tcg|kvm     tcg (default; emulation) or kvm (hosts with VT-x/AMD-V; untested here)
#   --kernel KVER       guest kernel version (default: newest /boot/vmlinuz-KVER whose modules
#                       have rdma_rxe; WYVERN_RXE_VM_KERNEL)
#   --keep              keep the run's control directory (console log, output) afterwards
#   -v, --verbose       copy the guest's console (kernel, set-up) to stderr as well
#   --check             only check the prerequisites and say what is missing
#   -h, --help          this text
# Exit status: CMD's own status when it ran; 77 when the VM could not start at all
# (prerequisites missing, qemu failed, the guest's init never started); 124 on --timeout;
# 125 when the VM booted but its set-up failed or it stopped before CMD finished;
# 2 for usage errors; 130/143 when interrupted. Progress lines go to stderr as [rxe-vm] ...
# Cache: the initramfs is kept in $WYVERN_RXE_VM_CACHE (default target/rxe-vm of the repo,
# or $CARGO_TARGET_DIR/rxe-vm) and rebuilt when the kernel or this script changes; each run
# gets its own control directory there, so runs may overlap.
# Needs (scripts/install-deps.sh test): qemu-system-x86 linux-image-amd64 busybox-static
# cpio kmod iproute2 rdma-core ibverbs-providers (ibverbs-utils perftest for the smoke test).
set -euo pipefail

log()  { printf '[rxe-vm] %s\n' "$*" >&2; }
die()  { printf '[rxe-vm] ERROR: %s\n' "$*" >&2; exit "${2:-2}"; }
qesc() { printf '%s' "${1//,/,,}"; }   # qemu option values double their commas

# Fixed guest network: rxe0 on veth0 (10.77.0.1), rxe1 on veth1 (10.77.0.2); and the rails'
# second pair, rxe2 on veth2 (10.77.1.1), rxe3 on veth3 (10.77.1.2).
RXE_DEVS=(rxe0 rxe1 rxe2 rxe3)
RXE_NETDEVS=(veth0 veth1 veth2 veth3)
RXE_ADDRS=(10.77.0.1 10.77.0.2 10.77.1.1 10.77.1.2)
GUEST_CTL=/run/rxe-vm          # where the guest sees the run's control directory

# =========================================================================== guest side
# `rxe-vm.sh --in-guest DIR` runs inside the VM, in the chroot of the host's root, started by
# the initramfs' /init with a copy of this script from the control directory. It sets up the
# devices, then runs DIR/cmd.sh with output to DIR/stdout, DIR/stderr and writes DIR/status.
in_guest() {
    # Every program started here is read from the host over 9p under emulation: keep the
    # number of processes small (bash built-ins, one `ip -batch`, one `sysctl`).
    local ctl="$1" up _
    glog() { read -r up _ </proc/uptime; printf '[rxe-vm guest %6s] %s\n' "$up" "$*" >&2; }
    gfail() { printf '%s\n' "$*" >"$ctl/setup-failed"; glog "ERROR: $*"; exit 1; }
    local hugepages=256 mtu=9000 k v i
    while IFS='=' read -r k v; do
        case "$k" in
            hugepages) hugepages="$v" ;;
            mtu) mtu="$v" ;;
        esac
    done <"$ctl/config"

    glog "set-up: modules"
    modprobe -a crc32_generic rdma_rxe ib_uverbs rdma_ucm veth \
        || gfail "modprobe crc32_generic rdma_rxe ib_uverbs rdma_ucm veth failed"

    local granted=0
    if [ "$hugepages" -gt 0 ]; then
        echo "$hugepages" >/proc/sys/vm/nr_hugepages 2>/dev/null || true
        read -r granted </proc/sys/vm/nr_hugepages
        mkdir -p /dev/hugepages
        mount -t hugetlbfs -o pagesize=2M hugetlbfs /dev/hugepages || glog "could not mount hugetlbfs"
        glog "set-up: hugepages: $granted of $hugepages reserved"
    fi

    local n0="${RXE_NETDEVS[0]}" n1="${RXE_NETDEVS[1]}" a0="${RXE_ADDRS[0]}" a1="${RXE_ADDRS[1]}"
    local n2="${RXE_NETDEVS[2]}" n3="${RXE_NETDEVS[3]}" a2="${RXE_ADDRS[2]}" a3="${RXE_ADDRS[3]}"
    glog "set-up: network $n0 $a0 <-> $n1 $a1, $n2 $a2 <-> $n3 $a3, mtu $mtu"
    # Both addresses are local, so by default the kernel would route rxe0 -> rxe1 through lo,
    # where rxe drops it. Policy routing sends it out of the own end of the veth instead, and
    # lets what arrives on a veth end be delivered locally: first the rules for packets
    # arriving on a veth end (pref 10, 11), then table 100 (each peer out of the own end, with
    # the own address as source; pref 20), then `local` (moved from pref 0 to 1000).
    ip -batch - <<NET || gfail "network set-up (ip -batch) failed"
link set lo up
link add $n0 mtu $mtu type veth peer name $n1 mtu $mtu
addr add $a0/24 dev $n0
addr add $a1/24 dev $n1
link set $n0 up
link set $n1 up
link add $n2 mtu $mtu type veth peer name $n3 mtu $mtu
addr add $a2/24 dev $n2
addr add $a3/24 dev $n3
link set $n2 up
link set $n3 up
rule add pref 10 iif $n0 lookup local
rule add pref 11 iif $n1 lookup local
rule add pref 12 iif $n2 lookup local
rule add pref 13 iif $n3 lookup local
route add $a1/32 dev $n0 src $a0 table 100
route add $a0/32 dev $n1 src $a1 table 100
route add $a3/32 dev $n2 src $a2 table 100
route add $a2/32 dev $n3 src $a3 table 100
rule add pref 20 lookup 100
rule add pref 1000 lookup local
rule del pref 0 lookup local
NET
    for d in all "$n0" "$n1" "$n2" "$n3"; do
        { echo 1 >"/proc/sys/net/ipv4/conf/$d/accept_local" && echo 0 >"/proc/sys/net/ipv4/conf/$d/rp_filter"; } \
            || gfail "accept_local/rp_filter for $d failed"
    done
    rdma -b - <<RDMA || gfail "rdma link add failed"
link add ${RXE_DEVS[0]} type rxe netdev $n0
link add ${RXE_DEVS[1]} type rxe netdev $n1
link add ${RXE_DEVS[2]} type rxe netdev $n2
link add ${RXE_DEVS[3]} type rxe netdev $n3
RDMA
    # Wait until every port is ACTIVE and GID 1 holds the IPv4-mapped address.
    local t state gid ok a b c e
    local -a want=()
    for i in 0 1 2 3; do
        IFS=. read -r a b c e <<<"${RXE_ADDRS[$i]}"
        printf -v "want[$i]" '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' "$a" "$b" "$c" "$e"
    done
    for ((t = 0; t < 100; t++)); do
        ok=1
        for i in 0 1 2 3; do
            state="" gid=""
            read -r state 2>/dev/null <"/sys/class/infiniband/${RXE_DEVS[$i]}/ports/1/state" || true
            read -r gid 2>/dev/null <"/sys/class/infiniband/${RXE_DEVS[$i]}/ports/1/gids/1" || true
            [[ "$state" == *ACTIVE* && "$gid" == "${want[$i]}" ]] || ok=0
        done
        [ "$ok" = 1 ] && break
        sleep 0.1
    done
    [ "$ok" = 1 ] || gfail "rxe ports not ACTIVE with the IPv4 GID at index 1 after 10 s"
    # rxe's active MTU: the largest IB MTU that fits the netdev's MTU less 80 header bytes.
    local active_mtu=256
    for v in 512 1024 2048 4096; do
        if [ $((mtu - 80)) -ge "$v" ]; then active_mtu="$v"; fi
    done
    {
        echo "export WYVERN_RXE_VM=1"
        echo "export WYVERN_RXE_DEVS='${RXE_DEVS[*]:0:2}'"
        echo "export WYVERN_RXE_NETDEVS='${RXE_NETDEVS[*]:0:2}'"
        echo "export WYVERN_RXE_ADDRS='${RXE_ADDRS[*]:0:2}'"
        echo "export WYVERN_RXE_RAIL_DEVS='${RXE_DEVS[*]:2:2}'"
        echo "export WYVERN_RXE_RAIL_NETDEVS='${RXE_NETDEVS[*]:2:2}'"
        echo "export WYVERN_RXE_RAIL_ADDRS='${RXE_ADDRS[*]:2:2}'"
        echo "export WYVERN_RXE_GID_INDEX=1"
        echo "export WYVERN_RXE_MTU=$active_mtu"
        echo "export WYVERN_RXE_HUGEPAGES=$granted"
    } >"$ctl/guest-env"

    read -r up _ </proc/uptime
    # One short write each: the host polls for these files being non-empty.
    echo "$up ${RXE_DEVS[0]}/$n0 $a0, ${RXE_DEVS[1]}/$n1 $a1, ${RXE_DEVS[2]}/$n2 $a2, ${RXE_DEVS[3]}/$n3 $a3, active MTU $active_mtu, $granted hugepages" \
        >"$ctl/up"
    glog "running the command"
    local st=0
    env -i /bin/bash --noprofile --norc "$ctl/cmd.sh" </dev/null >>"$ctl/stdout" 2>>"$ctl/stderr" || st=$?
    echo "$st" >"$ctl/status"
    glog "command exited with $st"
}

if [ "${1:-}" = --in-guest ]; then
    [ "$#" -eq 2 ] || die "--in-guest takes the control directory"
    # Only ever inside the VM: it rewires the network.
    grep -qw wyvern_rxe_vm /proc/cmdline || die "--in-guest is for the VM's init only"
    in_guest "$2"
    exit 0
fi

# ============================================================================ host side
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

timeout_s="${WYVERN_RXE_VM_TIMEOUT:-900}"
boot_timeout_s=180
mem=2048
smp=2
hugepages=256
mtu=9000
accel=tcg
kver="${WYVERN_RXE_VM_KERNEL:-}"
keep=0
verbose=0
check_only=0
env_args=()
share_args=()

is_num() { case "$1" in ''|*[!0-9]*) return 1 ;; *) return 0 ;; esac; }
need_val() { [ "$#" -ge 2 ] || die "$1 needs a value (see --help)"; }
num_opt() { need_val "$@"; is_num "$2" || die "$1 needs a non-negative integer, got '$2'"; }

while [ "$#" -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --check) check_only=1; shift ;;
        --env) need_val "$@"
               case "$2" in
                   [A-Za-z_]*) ;;
                   *) die "--env needs NAME or NAME=VALUE, got '$2'" ;;
               esac
               name="${2%%=*}"
               case "$name" in *[!A-Za-z0-9_]*) die "--env: '$name' is not a variable name" ;; esac
               env_args+=("$2"); shift 2 ;;
        --share) need_val "$@"; share_args+=("$2"); shift 2 ;;
        --timeout) num_opt "$@"; timeout_s="$2"; shift 2 ;;
        --boot-timeout) num_opt "$@"; boot_timeout_s="$2"; shift 2 ;;
        --mem) num_opt "$@"; mem="$2"; shift 2 ;;
        --smp) num_opt "$@"; smp="$2"; shift 2 ;;
        --hugepages) num_opt "$@"; hugepages="$2"; shift 2 ;;
        --mtu) num_opt "$@"; mtu="$2"; shift 2 ;;
        --accel) need_val "$@"
                 case "$2" in tcg|kvm) accel="$2" ;; *) die "--accel must be tcg or kvm, got '$2'" ;; esac
                 shift 2 ;;
        --kernel) need_val "$@"; kver="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        -v|--verbose) verbose=1; shift ;;
        --) shift; break ;;
        -*) die "unknown option '$1' (see --help)" ;;
        *) break ;;
    esac
done
is_num "$timeout_s" || die "WYVERN_RXE_VM_TIMEOUT must be a number of seconds, got '$timeout_s'"
[ "$mem" -ge 256 ] || die "--mem: at least 256 MiB"
[ "$smp" -ge 1 ] || die "--smp: at least 1"
[ "$check_only" = 1 ] || [ "$#" -gt 0 ] || die "no command given (usage: $0 [options] CMD [ARGS...]; see --help)"

# Paths the guest replaces with fresh file systems: a directory there is shared again (its
# own 9p share, read-only, at the same path); one under /proc, /sys or /dev (but /dev/shm)
# cannot be, nor can /tmp, /run and /dev/shm themselves (the guest needs its own).
under_tmpfs() {
    case "$1" in
        /tmp/*|/run/*|/dev/shm/*) return 0 ;;
        *) return 1 ;;
    esac
}
unshareable() {
    case "$1" in
        /tmp|/run|/dev/shm|/proc|/proc/*|/sys|/sys/*) return 0 ;;
        /dev/shm/*) return 1 ;;
        /dev|/dev/*) return 0 ;;
        *) return 1 ;;
    esac
}
shares=()    # directories to share, each at most once and none inside another
add_share() {   # add_share WHAT DIR
    local d="$2" s kept=()
    case "$d" in *$'\n'*) die "$1 $d: a path with a newline cannot be shared with the guest" ;; esac
    if unshareable "$d"; then
        die "$1 $d is under ${d%"${d#/*/}"}, which the guest replaces with its own (fresh tmpfs, /dev, /proc or /sys) and which cannot be shared; use a directory below /tmp, /run or /dev/shm, or elsewhere"
    fi
    under_tmpfs "$d" || return 0
    for s in "${shares[@]}"; do
        case "$d/" in "$s"/*) return 0 ;; esac   # already inside a share
        case "$s/" in "$d"/*) ;; *) kept+=("$s") ;; esac   # inside the new one: dropped
    done
    shares=("${kept[@]}" "$d")
}
cwd="$(pwd -P)"
if [ "$check_only" = 0 ]; then
    add_share "the current directory" "$cwd"
    case "$1" in
        */*) if [ -e "$1" ]; then
                 real="$(realpath -- "$1")"
                 add_share "the command $1 lives in $real: its directory" "$(dirname "$real")"
             fi ;;
    esac
    if [ -n "${CARGO_TARGET_DIR:-}" ] && [ -d "$CARGO_TARGET_DIR" ]; then
        add_share "CARGO_TARGET_DIR" "$(realpath -- "$CARGO_TARGET_DIR")"
    fi
    for d in "${share_args[@]}"; do
        [ -d "$d" ] || die "--share $d: not a directory"
        add_share "--share" "$(realpath -- "$d")"
    done
fi

repo="$(cd "$(dirname "$0")/.." && pwd -P)"
script="$repo/scripts/$(basename "$0")"
[ -f "$script" ] || script="$(realpath -- "$0")"
cache="${WYVERN_RXE_VM_CACHE:-${CARGO_TARGET_DIR:-$repo/target}/rxe-vm}"

# -------------------------------------------------------------------- prerequisites
qemu="$(command -v qemu-system-x86_64 || true)"
busybox=""
for b in /bin/busybox /usr/bin/busybox; do
    if [ -x "$b" ] && ! ldd "$b" >/dev/null 2>&1; then busybox="$b"; break; fi
done

# The newest kernel with rdma_rxe among its modules and a readable /boot/vmlinuz.
find_kernel() {
    local d k
    for k in $(find /lib/modules -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -rV); do
        d="/lib/modules/$k"
        if compgen -G "$d/kernel/drivers/infiniband/sw/rxe/rdma_rxe.ko*" >/dev/null \
            && [ -r "/boot/vmlinuz-$k" ]; then
            echo "$k"
            return 0
        fi
    done
    return 1
}
[ -n "$kver" ] || kver="$(find_kernel || true)"

missing=()
[ -n "$qemu" ] || missing+=("qemu-system-x86_64 (package qemu-system-x86)")
if [ -z "$kver" ]; then
    missing+=("a kernel with rdma_rxe: /boot/vmlinuz-KVER and /lib/modules/KVER (package linux-image-amd64)")
else
    [ -r "/boot/vmlinuz-$kver" ] || missing+=("/boot/vmlinuz-$kver (readable)")
    for m in rdma_rxe ib_uverbs veth 9p 9pnet_virtio virtio_pci; do
        modinfo -k "$kver" -F filename "$m" >/dev/null 2>&1 || missing+=("module $m of kernel $kver")
    done
fi
[ -n "$busybox" ] || missing+=("a static busybox (package busybox-static)")
for t in cpio gzip modprobe modinfo ip rdma setpriv; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
compgen -G "/usr/lib/*/libibverbs/librxe-rdmav*.so" >/dev/null \
    || missing+=("the rxe provider of libibverbs (package ibverbs-providers)")
if [ "$accel" = kvm ] && [ ! -w /dev/kvm ]; then missing+=("/dev/kvm (writable) for --accel kvm"); fi

if [ "$check_only" = 1 ]; then
    log "qemu:    ${qemu:-MISSING}"
    log "kernel:  ${kver:-MISSING}${kver:+ (/boot/vmlinuz-$kver)}"
    log "busybox: ${busybox:-MISSING}"
    log "cache:   $cache"
    for t in ibv_devinfo ib_send_lat; do
        command -v "$t" >/dev/null 2>&1 || log "note: $t not found (the smoke test needs ibverbs-utils, perftest)"
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        for m in "${missing[@]}"; do log "missing: $m"; done
        log "not ready: install with scripts/install-deps.sh test"
        exit 77
    fi
    log "ready"
    exit 0
fi
if [ "${#missing[@]}" -gt 0 ]; then
    log "******************************************************************"
    log "*** VM CANNOT START: prerequisites missing"
    for m in "${missing[@]}"; do log "***   missing: $m"; done
    log "*** (scripts/install-deps.sh test installs them)"
    log "******************************************************************"
    exit 77
fi

# --------------------------------------------------------------------- initramfs
# Busybox, the modules for virtio-pci and 9p in load order, /init and the modprobe wrapper.
# Named by a hash of what goes into it (kernel version and image, busybox, /init, the build
# steps), so a new kernel or a change of those parts of this script builds a new one.
mkdir -p "$cache/runs" || die "cannot create $cache" 77

write_init() {
    cat <<'EOF'
#!/bin/sh
# wyvern rxe-vm guest init (generated by scripts/rxe-vm.sh)
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
stop() { sync; poweroff -f; }
while read -r m; do
    insmod "/lib/modules/$m" || { echo "[rxe-vm init] insmod $m failed"; stop; }
done </modules.list
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 rxectl /ctl \
    || { echo "[rxe-vm init] cannot mount the control share"; stop; }
cut -d' ' -f1 /proc/uptime >/ctl/init
fail() { echo "$*" >/ctl/setup-failed; echo "[rxe-vm init] $*"; stop; }
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro hostroot /host \
    || fail "cannot mount the host root"
mount -t proc proc /host/proc || fail "mount proc"
mount -t sysfs sys /host/sys || fail "mount sys"
mount -t devtmpfs dev /host/dev || fail "mount devtmpfs"
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /host/dev/pts || fail "mount devpts"
mount -t tmpfs -o mode=1777 shm /host/dev/shm || fail "mount /dev/shm"
mount -t tmpfs -o mode=1777 tmp /host/tmp || fail "mount /tmp"
mount -t tmpfs -o mode=755 run /host/run || fail "mount /run"
mkdir -p /host/run/rxe-vm /host/tmp/home
mount -o bind /ctl /host/run/rxe-vm || fail "bind the control share"
# Directories under /tmp, /run or /dev/shm the host shares again (the working directory of
# a clone in /tmp): one 9p share each, "TAG PATH" a line in /ctl/shares, at the same path.
if [ -s /ctl/shares ]; then
    while IFS= read -r line; do
        tag="${line%% *}"; dir="${line#* }"
        mkdir -p "/host$dir" \
            && mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro "$tag" "/host$dir" \
            || fail "cannot mount the shared directory $dir"
    done </ctl/shares
fi
# Modules the kernel asks for by itself (rdma_rxe wants crc32) come from the host root.
echo /sbin/modprobe-host >/proc/sys/kernel/modprobe
chroot /host /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp/home /bin/bash /run/rxe-vm/rxe-vm.sh --in-guest /run/rxe-vm
stop
EOF
}

build_initrd() {
    local tmp mods m f n=0
    tmp="$(mktemp -d "$cache/initramfs-build.XXXXXX")"
    mkdir -p "$tmp"/{bin,sbin,dev,proc,sys,host,ctl,lib/modules}
    cp "$busybox" "$tmp/bin/busybox"
    ln -s busybox "$tmp/bin/sh"
    mods="$(modprobe -a -S "$kver" --show-depends virtio_pci 9pnet_virtio 9p | awk '$1 == "insmod" { print $2 }' \
        | awk '!seen[$0]++')"
    : >"$tmp/modules.list"
    for f in $mods; do
        n=$((n + 1))
        m="$(printf '%02d-%s' "$n" "$(basename "$f")")"
        case "$f" in
            *.ko) cp "$f" "$tmp/lib/modules/$m" ;;
            *.ko.xz) m="${m%.xz}"; xz -dc "$f" >"$tmp/lib/modules/$m" ;;
            *.ko.zst) m="${m%.zst}"; zstd -qdc "$f" >"$tmp/lib/modules/$m" ;;
            *.ko.gz) m="${m%.gz}"; gzip -dc "$f" >"$tmp/lib/modules/$m" ;;
            *) rm -rf "$tmp"; die "unexpected module file $f" 77 ;;
        esac
        echo "$m" >>"$tmp/modules.list"
    done
    write_init >"$tmp/init"
    printf '#!/bin/sh\nexec /bin/chroot /host /sbin/modprobe "$@"\n' >"$tmp/sbin/modprobe-host"
    chmod 755 "$tmp/init" "$tmp/sbin/modprobe-host"
    (cd "$tmp" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -1) \
        >"$initrd.tmp.$$" || { rm -rf "$tmp" "$initrd.tmp.$$"; die "building the initramfs failed" 77; }
    mv -f "$initrd.tmp.$$" "$initrd"
    rm -rf "$tmp"
    # Older images (another kernel or script version) go once nobody can still be starting them.
    find "$cache" -maxdepth 1 -name 'initramfs-*.cpio.gz' ! -name "$(basename "$initrd")" -mmin +60 \
        -delete 2>/dev/null || true
}
key="$( { echo "$kver"; stat -c '%s %Y' "/boot/vmlinuz-$kver" "$busybox"; write_init
           declare -f build_initrd; } \
    | sha256sum | cut -c1-16)"
initrd="$cache/initramfs-$kver-$key.cpio.gz"
if [ ! -s "$initrd" ]; then
    log "building the initramfs for kernel $kver ($initrd)"
    build_initrd
fi

# ----------------------------------------------------------------- control directory
# A control directory more than a day old was left by a run that was SIGKILLed.
find "$cache/runs" -mindepth 1 -maxdepth 1 -name 'run.*' -mmin +1440 -exec rm -rf {} + 2>/dev/null || true
ctl="$(mktemp -d "$cache/runs/run.XXXXXX")"
cp "$script" "$ctl/rxe-vm.sh"
printf 'hugepages=%s\nmtu=%s\n' "$hugepages" "$mtu" >"$ctl/config"
share_qemu=()
: >"$ctl/shares"
for i in "${!shares[@]}"; do
    printf 'share%d %s\n' "$i" "${shares[$i]}" >>"$ctl/shares"
    share_qemu+=(-virtfs "local,path=$(qesc "${shares[$i]}"),mount_tag=share$i,security_model=none,readonly=on,multidevs=remap")
done
[ "${#shares[@]}" -eq 0 ] || log "sharing with the guest, read-only at the same path: ${shares[*]}"
: >"$ctl/stdout"
: >"$ctl/stderr"
: >"$ctl/console.log"
{
    echo '#!/bin/bash'
    echo '# generated by scripts/rxe-vm.sh: the command and its environment'
    fwd=(PATH RUST_BACKTRACE RUST_LOG)
    while IFS= read -r n; do fwd+=("$n"); done < <(compgen -e | grep '^WYVERN_' || true)
    for n in "${fwd[@]}"; do
        if [ -n "${!n+x}" ]; then printf 'export %s=%q\n' "$n" "${!n}"; fi
    done
    for a in "${env_args[@]}"; do
        case "$a" in
            *=*) printf 'export %s=%q\n' "${a%%=*}" "${a#*=}" ;;
            *) if [ -n "${!a+x}" ]; then printf 'export %s=%q\n' "$a" "${!a}"; fi ;;
        esac
    done
    echo 'export HOME=/tmp/home'
    printf '. %q\n' "$GUEST_CTL/guest-env"
    printf 'cd -- %q || exit 126\n' "$cwd"
    echo 'ulimit -l unlimited'
    printf 'exec'
    printf ' %q' "$@"
    printf '\n'
} >"$ctl/cmd.sh"

# -------------------------------------------------------------------------- run it
qemu_pid=""
tail_pids=()
# shellcheck disable=SC2317  # (called by the EXIT trap)
cleanup() {
    if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill -KILL "$qemu_pid" 2>/dev/null || true
        wait "$qemu_pid" 2>/dev/null || true
    fi
    for p in "${tail_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ "$keep" = 1 ]; then
        log "kept the control directory $ctl"
    else
        rm -rf "$ctl"
    fi
}
trap cleanup EXIT
trap 'log "interrupted: stopping the VM"; exit 130' INT
trap 'log "terminated: stopping the VM"; exit 143' TERM

case "$accel" in
    tcg) accel_args=(-accel "tcg,thread=multi" -cpu max) ;;
    kvm) accel_args=(-accel kvm -cpu host) ;;
esac
qemu_args=(
    "${accel_args[@]}" -M pc -smp "$smp" -m "$mem"
    -kernel "/boot/vmlinuz-$kver" -initrd "$initrd"
    -append "console=ttyS0 panic=-1 quiet wyvern_rxe_vm"
    -nodefaults -display none -no-reboot -nic none
    -chardev "file,id=con,path=$(qesc "$ctl/console.log")" -serial chardev:con
    -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
    -virtfs "local,path=$(qesc "$ctl"),mount_tag=rxectl,security_model=none,multidevs=remap"
    "${share_qemu[@]}"
)

elapsed() { local n="${EPOCHREALTIME//[!0-9]/}"; n=$((n / 1000 - t0_ms)); printf '%d.%d' $((n / 1000)) $((n % 1000 / 100)); }
t0_ms=$(( ${EPOCHREALTIME//[!0-9]/} / 1000 ))
log "booting: kernel $kver, $accel, $smp vCPUs, $mem MiB, timeout ${timeout_s}s; command: $*"
# setpriv --pdeathsig: qemu dies with this script even if the script is SIGKILLed.
setpriv --pdeathsig KILL "$qemu" "${qemu_args[@]}" </dev/null >"$ctl/qemu.log" 2>&1 &
qemu_pid=$!

# CMD's output, live: the guest appends to files in the control share, tail follows them
# until qemu is gone (then reads what is left and stops).
tail -n +1 -s 0.2 --pid="$qemu_pid" -f "$ctl/stdout" &
tail_pids+=($!)
tail -n +1 -s 0.2 --pid="$qemu_pid" -f "$ctl/stderr" >&2 &
tail_pids+=($!)
if [ "$verbose" = 1 ]; then
    tail -n +1 -s 0.2 --pid="$qemu_pid" -f "$ctl/console.log" | sed -u 's/^/[rxe-vm console] /' >&2 &
    tail_pids+=($!)
fi

seen_init=0 seen_up=0 outcome=""
while kill -0 "$qemu_pid" 2>/dev/null; do
    now=$(( ${EPOCHREALTIME//[!0-9]/} / 1000 - t0_ms ))
    if [ "$seen_init" = 0 ] && [ -s "$ctl/init" ]; then
        seen_init=1
        log "guest kernel started its init after $(elapsed) s (guest uptime $(cat "$ctl/init") s)"
    fi
    if [ "$seen_up" = 0 ] && [ -s "$ctl/up" ]; then
        seen_up=1
        read -r up_uptime up_info <"$ctl/up" || true
        log "guest up after $(elapsed) s (guest uptime $up_uptime s): $up_info"
        t_cmd_ms=$now
    fi
    if [ "$seen_init" = 0 ] && [ "$now" -ge $((boot_timeout_s * 1000)) ]; then
        outcome=boot-timeout; break
    fi
    if [ "$timeout_s" -gt 0 ] && [ "$now" -ge $((timeout_s * 1000)) ]; then
        outcome=timeout; break
    fi
    sleep 0.2
done
if [ -n "$outcome" ]; then
    kill -KILL "$qemu_pid" 2>/dev/null || true
fi
qemu_rc=0
wait "$qemu_pid" 2>/dev/null || qemu_rc=$?
qemu_pid=""
for p in "${tail_pids[@]}"; do wait "$p" 2>/dev/null || true; done
tail_pids=()

show_logs() {
    if [ -s "$ctl/qemu.log" ]; then
        log "--- qemu's output:"; sed 's/^/[rxe-vm qemu] /' "$ctl/qemu.log" | tail -n 20 >&2
    fi
    if [ "$verbose" = 0 ] && [ -s "$ctl/console.log" ]; then
        log "--- the guest console's last lines:"
        tr -d '\r' <"$ctl/console.log" | tail -n 30 | sed 's/^/[rxe-vm console] /' >&2
    fi
}

total="$(elapsed)"
if [ -s "$ctl/status" ]; then
    st="$(cat "$ctl/status")"
    cmd_s=$(( ( ${EPOCHREALTIME//[!0-9]/} / 1000 - t0_ms - ${t_cmd_ms:-0} ) / 1000 ))
    log "command exited with $st after ${cmd_s} s (total ${total} s)"
    exit "$st"
fi
case "$outcome" in
    timeout)
        show_logs
        log "TIMEOUT: killed the VM after ${timeout_s} s (--timeout); the command did not finish"
        exit 124 ;;
    boot-timeout)
        show_logs
        log "******************************************************************"
        log "*** VM COULD NOT START: no sign of the guest's init after ${boot_timeout_s} s"
        log "******************************************************************"
        exit 77 ;;
esac
show_logs
if [ "$seen_init" = 0 ] && [ ! -s "$ctl/init" ]; then
    log "******************************************************************"
    log "*** VM COULD NOT START: qemu exited ($qemu_rc) after ${total} s before the guest's init ran"
    log "******************************************************************"
    exit 77
fi
if [ -s "$ctl/setup-failed" ]; then
    log "guest set-up failed: $(cat "$ctl/setup-failed")"
elif [ -s "$ctl/up" ]; then
    log "the VM stopped after ${total} s while the command ran (no exit status; guest crash or out of memory?)"
else
    log "the VM stopped after ${total} s during the guest's set-up"
fi
exit 125
