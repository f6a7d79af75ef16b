#!/usr/bin/env bash
# Usage: scripts/test.sh [extra cargo test args...]
#   e.g. scripts/test.sh                  # everything, as CI runs it
#        scripts/test.sh ring             # only tests whose name contains "ring"
#        scripts/test.sh -- --nocapture   # args after -- go to the test binaries
#
# The project's one test command (CI runs it through .ci/run). Steps:
#   (a) scripts/install-deps.sh core      (skipped with WYVERN_SKIP_DEPS=1)
#   (b) scripts/setup-hugepages.sh        (N from WYVERN_HUGEPAGES, default 512; a failure is a warning)
#   (c) cargo fmt --all -- --check
#   (d) cargo check --locked                (the default build, no features), then
#       cargo clippy --workspace --features dpdk,verbs --all-targets --locked -- -D warnings
#   (e) cargo test --workspace --features dpdk,verbs --lib --bins --tests --locked [args], then
#       the end-to-end suite again on the udp transport (WYVERN_TEST_TRANSPORT=udp --test e2e)
#       and on hybrid agents running udp and tcp (WYVERN_TEST_TRANSPORT=hybrid)
#       and on the dpdk transport (WYVERN_TEST_TRANSPORT=dpdk: agents in network namespaces
#       on net_af_packet) where network namespaces can be made (root, iproute2);
#       WYVERN_TEST_DPDK_E2E=0 skips that run; and on dpdk over a memif pair
#       (WYVERN_TEST_DPDK_DEV=memif: no namespaces; a three-node cluster runs on
#       net_af_packet and says so); WYVERN_TEST_DPDK_MEMIF_E2E=0 skips that run. Then
#       cargo test --workspace --features dpdk,verbs --doc --locked [args]
#   (f) verbs on Soft-RoCE, in one boot of an emulated VM with two rxe devices
#       (scripts/rxe-vm.sh): scripts/rxe-smoke.sh (perftest rxe0 -> rxe1), then the test
#       binaries (e) built, run there: verbs_layer, verbs_transport, verbs_rails, hybrid on verbs+tcp
#       (WYVERN_HYBRID_FAST=verbs) and the end-to-end suite's agent-to-agent tests on verbs
#       (WYVERN_TEST_TRANSPORT=verbs; see rxe_vm_stage for what is skipped), and tests/tools.rs
#       on verbs (`wyvern info`'s RDMA devices and GIDs, ping/bw). A VM that cannot start
#       (exit 77) is a loud skip, any other failure fails the run. Only without extra args,
#       unless WYVERN_TEST_RXE_VM=1; =0 skips. Needs the verbs feature.
# The workspace is wyvern and vendor/dpdk-sys; `--features dpdk` builds the DPDK layer
# against the system's DPDK (libdpdk-dev, installed in (a)) and its tests run it on
# virtual devices. The lib's cdylib and staticlib, built by (e) with the rlib, are what
# tests/capi.rs installs with scripts/install.sh --from-build and compiles C programs against.
# Features: `--workspace --features dpdk,verbs` everywhere below; WYVERN_NO_DPDK=1 drops dpdk,
# WYVERN_NO_VERBS=1 drops verbs (the `dpdk,verbs` in the steps above means these).
# The test hooks (feature `testing`) need no flag: every cargo test build turns them on
# through the package's dev-dependency on itself (Cargo.toml).
# Extra args go to both cargo test runs. When they select targets (--lib, --test X, ...)
# they replace the default targets and the doc-test run is skipped; it is also skipped when
# the package has no library.
# Each cargo test run is killed after WYVERN_TEST_TIMEOUT seconds (default 900; 0 = none).
# The fuzz targets (tests/fuzz.rs) run WYVERN_FUZZ_SECS seconds each (default here 20; the
# test binary alone defaults to 2), replaying fuzz/regressions/ first.
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

# The cargo features every build and test run uses: dpdk and verbs (both FFI back ends;
# their tests run on virtual devices here and in the Soft-RoCE VM of step (f)).
features=()
if [ "${WYVERN_NO_DPDK:-0}" != 1 ]; then
    features+=(dpdk)
fi
if [ "${WYVERN_NO_VERBS:-0}" != 1 ]; then
    features+=(verbs)
fi
dpdk=()
if [ "${#features[@]}" -gt 0 ]; then
    dpdk=(--workspace --features "$(IFS=,; echo "${features[*]}")")
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
# Short of hugepages, wyvern falls back to normal shared pages (and says so): the tests run.
bash scripts/setup-hugepages.sh ${WYVERN_HUGEPAGES:+"$WYVERN_HUGEPAGES"} \
    || log "WARNING: hugepages not (fully) set up (above); wyvern falls back to normal shared pages"

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

export WYVERN_FUZZ_SECS="${WYVERN_FUZZ_SECS:-20}"
test_args=("${dpdk[@]}" "${targets[@]}" "${locked[@]}" --no-fail-fast "$@")
step "(e) cargo test ${test_args[*]}"
test_rc=0
run_cargo_test "${test_args[@]}" || test_rc=$?

# The end-to-end suite once more on the udp transport (reliable links over datagrams).
if [ "$selects_targets" = 0 ]; then
    udp_args=("${dpdk[@]}" "${locked[@]}" --no-fail-fast --test e2e "$@")
    step "(e) WYVERN_TEST_TRANSPORT=udp cargo test ${udp_args[*]}"
    WYVERN_TEST_TRANSPORT=udp run_cargo_test "${udp_args[@]}" || test_rc=$?
    # And on hybrid agents (udp and tcp at once: every link on udp under tcp control
    # connections, src/transport/multi.rs).
    step "(e) WYVERN_TEST_TRANSPORT=hybrid cargo test ${udp_args[*]}"
    WYVERN_TEST_TRANSPORT=hybrid run_cargo_test "${udp_args[@]}" || test_rc=$?
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
    # And on dpdk over memif (no namespaces, no kernel on the data path: two-agent
    # clusters on a memif pair; a cluster of three runs on net_af_packet, each such test
    # printing a "*** NOT ON MEMIF" line, counted below, so that one test needs namespaces
    # here too), unless WYVERN_TEST_DPDK_MEMIF_E2E=0.
    if [ "${WYVERN_TEST_DPDK_MEMIF_E2E:-1}" = 0 ]; then
        step "(e) end-to-end suite on dpdk over memif: skipped (WYVERN_TEST_DPDK_MEMIF_E2E=0)"
    else
        memif_args=("${dpdk[@]}" "${locked[@]}" --no-fail-fast --test e2e "$@")
        step "(e) WYVERN_TEST_TRANSPORT=dpdk WYVERN_TEST_DPDK_DEV=memif cargo test ${memif_args[*]}"
        memif_out="$(mktemp "${TMPDIR:-/tmp}/wyvern-test-memif.XXXXXX")"
        set +e
        WYVERN_TEST_TRANSPORT=dpdk WYVERN_TEST_DPDK_DEV=memif run_cargo_test "${memif_args[@]}" \
            | tee "$memif_out"
        memif_rc=${PIPESTATUS[0]}
        set -e
        [ "$memif_rc" -eq 0 ] || test_rc=$memif_rc
        not_on_memif="$(grep -c '\*\*\* NOT ON MEMIF' "$memif_out" || true)"
        log "dpdk over memif: $not_on_memif test(s) ran their cluster on net_af_packet instead (a memif pair joins two agents; lines above)"
        rm -f "$memif_out"
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

# ------------------------------------------------------------------------- (f)
# Verbs on Soft-RoCE. This machine's kernel has no RDMA, so verbs code runs in a small
# emulated VM (scripts/rxe-vm.sh: two rxe devices across a veth, the host's root read-only,
# CMD in this directory, which the VM shares again when it is under /tmp or /run). Exit 77
# from rxe-vm.sh means the VM could not start at all: then the verbs tests are skipped,
# loudly; every other failure fails the run.
# By default only in a full run (no extra args); WYVERN_TEST_RXE_VM=1 forces it, =0 skips it.

# run_in_rxe_vm [NAME=VALUE...] CMD [ARGS...]: runs CMD in the Soft-RoCE VM with those
# variables set (plus WYVERN_TEST_TRANSPORT and every other WYVERN_* of ours, PATH,
# RUST_BACKTRACE, RUST_LOG); CMD's stdout is added to $results_file, so the "test result:"
# lines of test binaries count in the totals. Returns rxe-vm.sh's status: CMD's, or 77 when
# the VM could not start, 124 on timeout (WYVERN_TEST_TIMEOUT), 125 when its set-up failed.
run_in_rxe_vm() {
    local vm_args=(--env WYVERN_TEST_TRANSPORT) rc
    while [ "$#" -gt 0 ]; do
        case "$1" in
            [A-Za-z_]*=*) vm_args+=(--env "$1"); shift ;;
            *) break ;;
        esac
    done
    if [ "$timeout_s" -gt 0 ]; then
        vm_args+=(--timeout "$timeout_s")
    fi
    set +e
    bash scripts/rxe-vm.sh "${vm_args[@]}" -- "$@" | tee -a "$results_file"
    rc=${PIPESTATUS[0]}
    set -e
    return "$rc"
}

verbs_rc=0
skip_loudly() {
    log "******************************************************************************"
    log "*** VERBS TESTS SKIPPED: $*"
    log "******************************************************************************"
}
rxe_vm_stage() {
    step "(f) verbs (Soft-RoCE VM): smoke test, verbs_layer, verbs_transport, verbs_rails, hybrid, e2e and tools on verbs"
    # The test binaries of step (e), already built: cargo only lists them.
    local list exes=() rc=0
    if [[ " ${features[*]} " == *" verbs "* ]]; then
        list="$(cargo test "${dpdk[@]}" "${locked[@]}" --no-run --message-format=json \
            --test verbs_layer --test verbs_transport --test verbs_rails --test hybrid --test e2e --test tools 2>/dev/null \
            | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
')" || { log "cannot list the verbs test binaries"; verbs_rc=1; return 0; }
        local name exe
        while read -r name exe; do
            exes+=("$name=$exe")
        done <<< "$list"
    else
        log "no verbs feature (WYVERN_NO_VERBS=1): only the perftest smoke test runs in the VM"
    fi
    # One boot for everything: the smoke test, then each binary; every one runs even when an
    # earlier one failed, and the guest exits non-zero if any did.
    local script='rc=0
scripts/rxe-smoke.sh || rc=1
for e in "$@"; do
    name=${e%%=*}; exe=${e#*=}
    case $name in
        hybrid) WYVERN_HYBRID_FAST=verbs "$exe" --test-threads=1 || rc=1 ;;
        e2e) WYVERN_TEST_TRANSPORT=verbs "$exe" --test-threads=1 $E2E_SKIP || rc=1 ;;
        tools) WYVERN_TEST_TRANSPORT=verbs "$exe" --test-threads=1 || rc=1 ;;
        *) "$exe" --test-threads=1 || rc=1 ;;
    esac
done
exit $rc'
    # The e2e tests of what clients do to their own agent (attach, rings, stat, the pool,
    # the config file, the demo) run on tcp, udp and hybrid above; under emulation only the
    # ones that move messages between agents run (about 10 minutes with all of them). The
    # 64 MiB every-size test is too slow there (verbs_transport covers 1 B to 64 MiB).
    local skip=""
    for t in every_size_class bad_attaches wrong_uid hostile_client scribbled_ring \
             agent_runs_from_a_config_file stat_and_endpoint_errors pool_falls_back \
             one_client_cannot_take prometheus_metrics the_demo_runs; do
        skip+=" --skip $t"
    done
    run_in_rxe_vm "E2E_SKIP=$skip" bash -c "$script" rxe-tests "${exes[@]}" || rc=$?
    if [ "$rc" -eq 77 ]; then
        # Seen once in CI: an emulated guest that showed no sign of its init in 180 s (a
        # loaded host). One more boot before the verbs tests are given up.
        log "the Soft-RoCE VM did not start; trying once more"
        rc=0
        run_in_rxe_vm "E2E_SKIP=$skip" bash -c "$script" rxe-tests "${exes[@]}" || rc=$?
    fi
    if [ "$rc" -eq 77 ]; then
        skip_loudly "the Soft-RoCE VM could not start (see the [rxe-vm] lines above)"
    elif [ "$rc" -ne 0 ]; then
        log "verbs tests in the Soft-RoCE VM failed (exit $rc)"
        verbs_rc=$rc
    fi
}
if [ "${WYVERN_TEST_RXE_VM:-}" = 0 ]; then
    step "(f) verbs (Soft-RoCE VM): skipped (WYVERN_TEST_RXE_VM=0)"
elif [ "$#" -gt 0 ] && [ "${WYVERN_TEST_RXE_VM:-}" != 1 ]; then
    step "(f) verbs (Soft-RoCE VM): skipped (extra args; WYVERN_TEST_RXE_VM=1 runs it anyway)"
else
    rxe_vm_stage
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

log "cargo test ${test_args[*]}: exit $test_rc; cargo test --doc: exit $doc_rc; verbs (Soft-RoCE VM): exit $verbs_rc; total time $((SECONDS - script_start))s"
if [ "$test_rc" -ne 0 ] || [ "$doc_rc" -ne 0 ] || [ "$verbs_rc" -ne 0 ]; then
    log "FAILED: cargo test or the verbs stage (a non-zero exit with 0 failed tests means a build error, a timeout or a failed verbs smoke test)"
    echo "wyvern: $passed passed, $failed failed, $ignored skipped"
    trap - EXIT
    rm -f "$results_file"
    exit 1
fi
log "all steps passed"
# Last line: the totals over both cargo test runs, as a plain closing line.
echo "wyvern: $passed passed, $failed failed, $ignored skipped"
