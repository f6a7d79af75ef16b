#!/usr/bin/env bash
# Usage: scripts/install-deps.sh [SET...]      (default: core)
#        scripts/install-deps.sh --list [SET...]
#
# Installs the Debian packages of the named sets, but only the ones that are missing
# (checked with dpkg-query first; apt-get runs only when something is missing). Sets:
#   runtime - what running a wyvern built with --features dpdk,verbs needs on a node:
#             rdma-core libibverbs1 librdmacm1 ibverbs-providers (RDMA devices) libnuma1,
#             dpdk (its libraries and poll-mode drivers, dpdk-devbind.py for
#             scripts/bind-nic.sh, dpdk-hugepages.py). A default build (no features) needs
#             nothing beyond libc. Hugepages: scripts/setup-hugepages.sh.
#   build   - what building needs: pkg-config build-essential, clang libclang-dev (bindgen),
#             libdpdk-dev dpdk-dev (DPDK >= 22.11) for `dpdk`, libibverbs-dev librdmacm-dev
#             for `verbs`; and the rustup components rustfmt and clippy
#   test    - what scripts/test.sh needs besides a build: iproute2 procps util-linux
#             (namespaces, setpriv), slurm-wlm munge (tests/slurm.rs runs a real two-node
#             Slurm through scripts/slurm-local.sh), python3 python3-venv
#             (scripts/test-python.sh; pip then installs numpy pytest cffi), python3-matplotlib
#             (bench/plot.py, which tests/scripts.rs runs), and the
#             Soft-RoCE VM of scripts/rxe-vm.sh: qemu-system-x86 linux-image-amd64 (a 6.1
#             kernel for the VM, installed beside the running one, which stays untouched)
#             busybox-static cpio kmod rdma-core ibverbs-providers ibverbs-utils perftest
#   core    - build + test: what CI (scripts/test.sh, step (a)) installs
#   bench   - core + the peers bench/run.sh compares against: sockperf iperf3 ucx-utils
#             openmpi-bin libopenmpi-dev hyperfine (the test suite does not use them)
#   all     - every set
# --list prints the packages of the sets, one a line, and installs nothing.
# Idempotent: a second run installs nothing. Needs root (or sudo) only when something has to
# be installed. It changes nothing else (no hugepages, no caches dropped).
set -euo pipefail

log() { printf '[wyvern setup] %s\n' "$*"; }
die() { printf '[wyvern setup] ERROR: %s\n' "$*" >&2; exit "${2:-1}"; }

runtime_pkgs=(rdma-core libibverbs1 librdmacm1 ibverbs-providers libnuma1 dpdk)
build_pkgs=(pkg-config build-essential clang libclang-dev libdpdk-dev dpdk-dev libibverbs-dev librdmacm-dev)
test_pkgs=(iproute2 procps util-linux slurm-wlm munge python3 python3-venv python3-matplotlib
           qemu-system-x86 linux-image-amd64 busybox-static cpio kmod
           rdma-core ibverbs-providers ibverbs-utils perftest)
bench_pkgs=(sockperf iperf3 ucx-utils openmpi-bin libopenmpi-dev hyperfine)

list_only=0
sets=()
for a in "$@"; do
    case "$a" in
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        --list) list_only=1 ;;
        runtime|build|test|core|bench|all) sets+=("$a") ;;
        *) die "unknown set '$a' (expected runtime, build, test, core, bench or all; see --help)" 2 ;;
    esac
done
[ "${#sets[@]}" -gt 0 ] || sets=(core)
mode="${sets[*]}"

pkgs=()
rust_components=0
for set in "${sets[@]}"; do
    case "$set" in
        runtime) pkgs+=("${runtime_pkgs[@]}") ;;
        build) pkgs+=("${build_pkgs[@]}"); rust_components=1 ;;
        test) pkgs+=("${test_pkgs[@]}") ;;
        core) pkgs+=("${build_pkgs[@]}" "${test_pkgs[@]}"); rust_components=1 ;;
        bench) pkgs+=("${build_pkgs[@]}" "${test_pkgs[@]}" "${bench_pkgs[@]}"); rust_components=1 ;;
        all) pkgs+=("${runtime_pkgs[@]}" "${build_pkgs[@]}" "${test_pkgs[@]}" "${bench_pkgs[@]}")
             rust_components=1 ;;
    esac
done
# Each once, in first-seen order.
mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | awk '!seen[$0]++')

if [ "$list_only" = 1 ]; then
    printf '%s\n' "${pkgs[@]}"
    exit 0
fi

# ---------------------------------------------------------------- apt packages
log "checking apt packages for '$mode': ${pkgs[*]}"
missing=()
for p in "${pkgs[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
    if [ "$status" != "install ok installed" ]; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    log "apt packages: all already present"
else
    log "apt packages missing: ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install these by hand: ${missing[*]}"
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "not root and no sudo; cannot install: ${missing[*]}"
        SUDO=(sudo)
    fi
    apt_opts=(-o Acquire::Retries=3 -o DPkg::Lock::Timeout=300)
    export DEBIAN_FRONTEND=noninteractive
    log "running apt-get update"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" update -q \
        || die "apt-get update failed"
    log "running apt-get install -y --no-install-recommends ${missing[*]}"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y -q \
        --no-install-recommends "${missing[@]}" \
        || die "apt-get install failed for: ${missing[*]}"
    # Verify, so a silently skipped package is caught here and not later.
    for p in "${missing[@]}"; do
        status="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
        [ "$status" = "install ok installed" ] || die "package $p still not installed after apt-get"
    done
    log "apt packages installed: ${missing[*]}"
fi

# ---------------------------------------------------------- rustup components
if [ "$rust_components" = 0 ]; then
    log "install-deps ($mode) done"
    exit 0
fi
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found on PATH (is the Rust toolchain installed via rustup?)"

components=()
if ! cargo fmt --version >/dev/null 2>&1; then components+=(rustfmt); fi
if ! cargo clippy --version >/dev/null 2>&1; then components+=(clippy); fi

if [ "${#components[@]}" -eq 0 ]; then
    log "rustup components rustfmt, clippy: already present"
else
    command -v rustup >/dev/null 2>&1 || die "rustup not found; cannot add components: ${components[*]}"
    log "running rustup component add ${components[*]}"
    rustup component add "${components[@]}" || die "rustup component add failed"
    cargo fmt --version >/dev/null 2>&1 || die "cargo fmt still unavailable after rustup component add"
    cargo clippy --version >/dev/null 2>&1 || die "cargo clippy still unavailable after rustup component add"
    log "rustup components installed: ${components[*]}"
fi

log "install-deps ($mode) done"
