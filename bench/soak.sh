#!/usr/bin/env bash
# Usage: bench/soak.sh [CYCLES]      (default 100000)
#
# The churn soak of tests/soak.rs at benchmark size: CYCLES client processes (wyvern-peer)
# SIGKILLed at random moments (before, during or after attach; during large sends into a
# ring nobody reads; during delivered sends across the link; while flooding the submission
# ring with garbage; while sending large messages to themselves), WYVERN_SOAK_PARALLEL alive
# at once (default 4), in ROUNDS rounds (default 10). After every round both agents must hold
# no client, no block and no parked message, have exactly their starting fds, and their RSS
# must not grow from round 2 to the last by more than 4 MiB.
# There is no peer to compare with (no other system's figure means the same thing); the
# figures are the kill rate, the RSS per round and the fds, printed by the test.
# Core layout: 2 agents (adaptive idle) and the churn clients share the machine's cores; the
# agents are not pinned. Build: release (cargo test --release).
set -euo pipefail
cd "$(dirname "$0")/.."
cycles="${1:-100000}"
rounds="${ROUNDS:-10}"
echo "[soak] $(date -u '+%F %T UTC'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "[soak] cycles $cycles, rounds $rounds, parallel ${WYVERN_SOAK_PARALLEL:-4}, build release"
WYVERN_SOAK_CYCLES="$cycles" WYVERN_SOAK_ROUNDS="$rounds" \
    cargo test --release --features "${FEATURES:-dpdk,verbs}" --test soak -- --nocapture 2>&1 \
    | grep -E '^soak:|test result|panicked|FAILED'
