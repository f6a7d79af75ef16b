#!/usr/bin/env bash
# Usage: scripts/gen-header.sh
# Regenerates include/wyvern.h from src/capi with cbindgen (the crate, a dev-dependency: no
# cbindgen binary needed) by running tests/capi_header.rs in "bless" mode. Without
# WYVERN_BLESS that same test fails when the checked-in header is stale, so CI catches it.
set -euo pipefail
cd "$(dirname "$0")/.."
WYVERN_BLESS=1 cargo test --locked --test capi_header --quiet
echo "include/wyvern.h regenerated"
git diff --stat -- include/wyvern.h 2>/dev/null || true
