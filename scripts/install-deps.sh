#!/usr/bin/env bash
# Usage: scripts/install-deps.sh [core|bench|all]     (default: core)
#
# Installs the Debian packages wyvern needs, but only the ones that are missing
# (checked with dpkg-query first; apt-get runs only when something is missing),
# and makes sure the rustfmt and clippy rustup components exist.
#   core  - what the build and the test suite need: pkg-config build-essential
#           iproute2 procps util-linux, slurm-wlm munge (tests/slurm.rs runs a
#           real two-node Slurm through scripts/slurm-local.sh), and for the
#           `dpdk` feature libdpdk-dev dpdk-dev (DPDK >= 22.11) clang
#           libclang-dev (bindgen), python3 python3-venv
#           (scripts/test-python.sh makes a venv; pip then installs numpy pytest cffi),
#           and for the `verbs` feature and its tests on Soft-RoCE (scripts/rxe-vm.sh):
#           libibverbs-dev librdmacm-dev rdma-core ibverbs-providers ibverbs-utils perftest,
#           qemu-system-x86 linux-image-amd64 (a 6.1 kernel for the VM, installed beside the
#           running one, which stays untouched) busybox-static cpio kmod
#   bench - core + sockperf iperf3 ucx-utils openmpi-bin libopenmpi-dev hyperfine
#   all   - same as bench (for now)
# Idempotent: a second run installs nothing. Needs root (or sudo) only when
# something has to be installed.
set -euo pipefail

log() { printf '[wyvern setup] %s\n' "$*"; }
die() { printf '[wyvern setup] ERROR: %s\n' "$*" >&2; exit 1; }

mode="${1:-core}"
case "$mode" in
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    core|bench|all) ;;
    *) die "unknown mode '$mode' (expected core, bench or all)" ;;
esac
[ "$#" -le 1 ] || die "too many arguments (usage: $0 [core|bench|all])"

core_pkgs=(pkg-config build-essential iproute2 procps util-linux slurm-wlm munge libdpdk-dev dpdk-dev
           clang libclang-dev python3 python3-venv
           libibverbs-dev librdmacm-dev rdma-core ibverbs-providers ibverbs-utils perftest
           qemu-system-x86 linux-image-amd64 busybox-static cpio kmod)
bench_pkgs=(sockperf iperf3 ucx-utils openmpi-bin libopenmpi-dev hyperfine)

pkgs=("${core_pkgs[@]}")
if [ "$mode" != core ]; then
    pkgs+=("${bench_pkgs[@]}")
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
