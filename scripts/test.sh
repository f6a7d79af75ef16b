#!/usr/bin/env bash
# Usage: scripts/test.sh [extra cargo test args...]
#   e.g. scripts/test.sh                  # everything, as CI runs it
#        scripts/test.sh ring             # only tests whose name contains "ring"
#        scripts/test.sh -- --nocapture   # args after -- go to the test binaries
#
# The project's one test command (CI runs it through .ci/run). Steps:
#   (a) scripts/install-deps.sh core      (skipped with WYVERN_SKIP_DEPS=1)
#   (b) scripts/setup-hugepages.sh        (N from WYVERN_HUGEPAGES, default 512; never fails)
#   (c) cargo fmt --all -- --check
#   (d) cargo check --locked                (the default build, no features), then
#       cargo clippy --workspace --features dpdk --all-targets --locked -- -D warnings
#   (e) cargo test --workspace --features dpdk --lib --bins --tests --locked [args], then
#       the end-to-end suite again on the udp transport (WYVERN_TEST_TRANSPORT=udp --test e2e)
#       and on the dpdk transport (WYVERN_TEST_TRANSPORT=dpdk: agents in network namespaces
#       on net_af_packet) where network namespaces can be made (root, iproute2);
#       WYVERN_TEST_DPDK_E2E=0 skips that run. Then
#       cargo test --workspace --features dpdk --doc --locked [args]
# The workspace is wyvern and vendor/dpdk-sys; `--features dpdk` builds the DPDK layer
# against the system's DPDK (libdpdk-dev, installed in (a)) and its tests run it on
# virtual devices. The lib's cdylib and staticlib, built by (e) with the rlib, are what
# tests/capi.rs installs with scripts/install.sh --from-build and compiles C programs against.
# WYVERN_NO_DPDK=1 drops `--workspace --features dpdk` everywhere.
# Extra args go to both cargo test runs. When they select targets (--lib, --test X, ...)
# they replace the default targets and the doc-test run is skipped; it is also skipped when
# the package has no library.
# Each cargo test run is killed after WYVERN_TEST_TIMEOUT seconds (default 900; 0 = none).
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUST_BACKTRACE=1
if [ "${CI:-}" = true ]; then
    export CARGO_INCREMENTAL=0   # fresh clone: incremental state would be wasted work
fi

log() { printf '[wyvern test] %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { log "ERROR: cargo not found on PATH (install Rust via rustup)"; exit 1; }

current_step="start"
script_start=$SECONDS
results_file="$(mktemp "${TMPDIR:-/tmp}/wyvern-test-results.XXXXXX")"
on_exit() {
    local rc=$?
    rm -f "$results_file"
    if [ "$rc" -ne 0 ]; then
        log "FAILED in step: $current_step (exit $rc) after $((SECONDS - script_start))s"
    fi
}
trap on_exit EXIT

step_start=$SECONDS
step() {
    if [ "$current_step" != start ]; then
        log "    ($current_step took $((SECONDS - step_start))s)"
    fi
    current_step="$1"
    step_start=$SECONDS
    log "==> $current_step"
}

dpdk=(--workspace --features dpdk)
if [ "${WYVERN_NO_DPDK:-0}" = 1 ]; then
    dpdk=()
fi

locked=()
if [ -f Cargo.lock ]; then
    locked=(--locked)
fi

timeout_s="${WYVERN_TEST_TIMEOUT:-900}"
case "$timeout_s" in ''|*[!0-9]*) log "WYVERN_TEST_TIMEOUT must be a number of seconds"; exit 2 ;; esac
with_timeout() {
    if [ "$timeout_s" -gt 0 ]; then
        timeout -k 30 "$timeout_s" "$@"
    else
        "$@"
    fi
}

log "toolchain: $(cargo --version), $(rustc --version)"

# ------------------------------------------------------------------------- (a)
if [ "${WYVERN_SKIP_DEPS:-0}" = 1 ]; then
    step "(a) install deps: skipped (WYVERN_SKIP_DEPS=1)"
else
    step "(a) scripts/install-deps.sh core"
    bash scripts/install-deps.sh core
fi

# ------------------------------------------------------------------------- (b)
step "(b) scripts/setup-hugepages.sh${WYVERN_HUGEPAGES:+ $WYVERN_HUGEPAGES}"
bash scripts/setup-hugepages.sh ${WYVERN_HUGEPAGES:+"$WYVERN_HUGEPAGES"}

# ------------------------------------------------------------------------- (c)
step "(c) cargo fmt --all -- --check"
cargo fmt --all -- --check

# ------------------------------------------------------------------------- (d)
if [ "${#dpdk[@]}" -gt 0 ]; then
    step "(d) cargo check ${locked[*]} (default features)"
    cargo check "${locked[@]}"
fi
step "(d) cargo clippy ${dpdk[*]} --all-targets ${locked[*]} -- -D warnings"
cargo clippy "${dpdk[@]}" --all-targets "${locked[@]}" -- -D warnings

# ------------------------------------------------------------------------- (e)
# Runs one `cargo test`, copying its stdout (where the "test result:" lines are)
# to $results_file; returns cargo's exit code.
run_cargo_test() {
    local rc
    set +e
    with_timeout cargo test "$@" | tee -a "$results_file"
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        log "cargo test timed out after ${timeout_s}s (WYVERN_TEST_TIMEOUT)"
    fi
    return "$rc"
}

# Do the extra args select targets (--lib, --test X, ...)? Then they replace --all-targets
# (which would otherwise still build and run everything) and the --doc run is skipped.
selects_targets=0
for a in "$@"; do
    case "$a" in
        --) break ;;
        --lib|--bins|--tests|--benches|--examples|--all-targets|--doc \
        |--bin|--bin=*|--test|--test=*|--bench|--bench=*|--example|--example=*) selects_targets=1 ;;
    esac
done

targets=(--lib --bins --tests)   # not --benches: benchmarks run under bench/, never as tests
if [ "$selects_targets" = 1 ]; then
    targets=()
fi

test_args=("${dpdk[@]}" "${targets[@]}" "${locked[@]}" --no-fail-fast "$@")
step "(e) cargo test ${test_args[*]}"
test_rc=0
run_cargo_test "${test_args[@]}" || test_rc=$?

# The end-to-end suite once more on the udp transport (reliable links over datagrams).
if [ "$selects_targets" = 0 ]; then
    udp_args=("${dpdk[@]}" "${locked[@]}" --no-fail-fast --test e2e "$@")
    step "(e) WYVERN_TEST_TRANSPORT=udp cargo test ${udp_args[*]}"
    WYVERN_TEST_TRANSPORT=udp run_cargo_test "${udp_args[@]}" || test_rc=$?
fi

# And on the dpdk transport (needs the feature, root and iproute2: every cluster runs in
# network namespaces of its own, scripts/testbed.sh), unless WYVERN_TEST_DPDK_E2E=0.
# Whether a namespace can be made is tried, not guessed (a container may forbid it even to root).
can_netns() {
    [ "$(id -u)" -eq 0 ] && command -v ip >/dev/null 2>&1 || return 1
    local probe="wyvprobe$$"
    ip netns add "$probe" >/dev/null 2>&1 || return 1
    ip netns del "$probe" >/dev/null 2>&1
    return 0
}
if [ "$selects_targets" = 0 ] && [ "${#dpdk[@]}" -gt 0 ]; then
    if [ "${WYVERN_TEST_DPDK_E2E:-1}" = 0 ]; then
        step "(e) end-to-end suite on the dpdk transport: skipped (WYVERN_TEST_DPDK_E2E=0)"
    elif can_netns; then
        dpdk_e2e_args=("${dpdk[@]}" "${locked[@]}" --no-fail-fast --test e2e "$@")
        step "(e) WYVERN_TEST_TRANSPORT=dpdk cargo test ${dpdk_e2e_args[*]}"
        WYVERN_TEST_TRANSPORT=dpdk run_cargo_test "${dpdk_e2e_args[@]}" || test_rc=$?
    else
        step "(e) end-to-end suite on the dpdk transport: *** SKIPPED (needs root and iproute2 for network namespaces) ***"
    fi
fi

doc_rc=0
if [ "$selects_targets" = 1 ]; then
    step "(e) cargo test --doc: skipped (extra args select targets)"
elif ! cargo metadata --no-deps --format-version 1 "${locked[@]}" 2>/dev/null \
        | grep -Eq '"kind":\[[^]]*"(lib|rlib|dylib|proc-macro)"'; then
    step "(e) cargo test --doc: skipped (package has no library target)"
else
    doc_args=("${dpdk[@]}" --doc "${locked[@]}" "$@")
    step "(e) cargo test ${doc_args[*]}"
    run_cargo_test "${doc_args[@]}" || doc_rc=$?
fi

log "    ($current_step took $((SECONDS - step_start))s)"
current_step="(e) cargo test"
# Totals over every "test result:" line of both runs, as one plain closing line.
read -r passed failed ignored < <(awk '
    /^test result:/ {
        for (i = 1; i <= NF; i++) {
            w = $(i + 1); sub(/[;,.]$/, "", w)
            if (w == "passed") p += $i
            else if (w == "failed") f += $i
            else if (w == "ignored") g += $i
        }
    }
    END { printf "%d %d %d\n", p, f, g }' "$results_file")

log "cargo test ${test_args[*]}: exit $test_rc; cargo test --doc: exit $doc_rc; total time $((SECONDS - script_start))s"
if [ "$test_rc" -ne 0 ] || [ "$doc_rc" -ne 0 ]; then
    log "FAILED: cargo test (a non-zero exit with 0 failed tests means a build error or timeout)"
    echo "wyvern: $passed passed, $failed failed, $ignored skipped"
    trap - EXIT
    rm -f "$results_file"
    exit 1
fi
log "all steps passed"
# Last line: the totals over both cargo test runs, as a plain closing line.
echo "wyvern: $passed passed, $failed failed, $ignored skipped"
