#!/usr/bin/env bash
# Usage: scripts/test-python.sh [pytest args...]
#   e.g. scripts/test-python.sh                    # the whole Python suite
#        scripts/test-python.sh -k zero_copy -x    # args go to pytest
#
# Runs the Python binding's tests (python/tests) against an already-built
# library and agent binary; it builds nothing:
#   - the venv target/pyenv (created with `python3 -m venv` on first use; the
#     packages of python/requirements-test.txt are installed again only when
#     that file changes);
#   - WYVERN_LIB: the newest of $WYVERN_BUILD_DIR/deps/libwyvern.so and
#     $WYVERN_BUILD_DIR/libwyvern.so (WYVERN_BUILD_DIR defaults to target/debug;
#     `cargo test` leaves the cdylib in deps/), unless WYVERN_LIB is set;
#   - WYVERN_BIN: $WYVERN_BUILD_DIR/wyvern unless set.
# PYTHON picks the interpreter that makes the venv (default python3).
# tests/python.rs runs this script from `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[wyvern python] %s\n' "$*"; }

python="${PYTHON:-python3}"
command -v "$python" >/dev/null 2>&1 || { log "ERROR: $python not found"; exit 1; }

build="${WYVERN_BUILD_DIR:-target/debug}"
if [ -z "${WYVERN_LIB:-}" ]; then
    for f in "$build/deps/libwyvern.so" "$build/libwyvern.so"; do
        if [ -f "$f" ] && { [ -z "${WYVERN_LIB:-}" ] || [ "$f" -nt "$WYVERN_LIB" ]; }; then
            WYVERN_LIB="$f"
        fi
    done
fi
[ -n "${WYVERN_LIB:-}" ] && [ -f "$WYVERN_LIB" ] \
    || { log "ERROR: no libwyvern.so in $build or $build/deps (cargo build first)"; exit 1; }
WYVERN_BIN="${WYVERN_BIN:-$build/wyvern}"
[ -x "$WYVERN_BIN" ] || { log "ERROR: no agent binary at $WYVERN_BIN (cargo build first)"; exit 1; }
WYVERN_LIB="$(realpath "$WYVERN_LIB")"
WYVERN_BIN="$(realpath "$WYVERN_BIN")"
export WYVERN_LIB WYVERN_BIN

venv=target/pyenv
req=python/requirements-test.txt
# One setup at a time (two test runs could share the venv).
mkdir -p target
exec 9>target/pyenv.lock
flock 9
if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv with $("$python" --version 2>&1)"
    "$python" -m venv "$venv" \
        || { log "ERROR: '$python -m venv' failed (Debian: apt-get install python3-venv)"; exit 1; }
fi
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null || true)" != "$want" ]; then
    log "installing $req into $venv"
    "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$req"
    echo "$want" > "$venv/.requirements.sha256"
fi
flock -u 9

log "library $WYVERN_LIB"
log "agent   $WYVERN_BIN"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider python/tests "$@"
