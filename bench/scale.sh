#!/usr/bin/env bash
# Usage: bench/scale.sh
#
# Many agents on this machine (issue 17): for each transport (TRANSPORTS, default "tcp udp")
# and agent count (AGENTS, default "32 64"), RUNS runs (default 3) of tests/scale.rs's
# all-to-all in a release build: N agents with on-demand links start with none; every node
# then sends 20 checked messages (8 B, 700 B, 5000 B, 300 kB in turn) to every other node (one
# sender process per node, to each in turn), which makes every link (from both ends at once);
# the test checks
# everything arrived once, in order and intact, and that idle links gave their read buffers
# back. Printed per cell (medians): start-up time (all N agents answering, no link made), the
# all-to-all's time (links made on the way), the largest agent's RssAnon with no link and after
# the traffic, and its largest VmRSS (which also counts the pool pages the agent touched).
#
# The peer: the same all-to-all over Open MPI (bench/mpi_alltoall.c, tcp BTL, N ranks
# oversubscribed on this machine's cores), with MPI=1 (the default) and mpicc installed: time
# from before MPI_Init to the end of the exchange (MPI's wire-up included), and the largest
# rank's VmRSS. Not the same work per process (an MPI rank is the application; a wyvern agent
# serves the node's processes, here one sender and one receiver), so read the ratio as "what a node
# pays for all-to-all connectivity", not as a like-for-like rate.
#
# Core layout: no pinning; the N agents, their N sender and N receiver processes share
# every core of this machine (printed). Every process is bounded by the test's own timeouts.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-3}"
AGENTS="${AGENTS:-32 64}"
TRANSPORTS="${TRANSPORTS:-tcp udp}"
MPI="${MPI:-1}"
FEATURES="${FEATURES:-dpdk,verbs}"

die() { echo "bench/scale.sh: $*" >&2; exit 1; }

echo "== bench/scale.sh: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); no pinning (agents, senders and receivers share every core)"
echo "config: agents [$AGENTS], transports [$TRANSPORTS], $RUNS runs per cell, 20 messages per ordered pair (8 B / 700 B / 5000 B / 300 kB)"

exe="$(cargo test --release --locked --features "$FEATURES" --test scale --no-run --message-format=json 2>/dev/null \
    | python3 -c '
import json, sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "scale":
        print(m["executable"])
')"
[ -x "$exe" ] || die "cannot build tests/scale.rs (cargo test --release --test scale --no-run)"

median() { python3 -c 'import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print(f"{statistics.median(v):g}" if v else "-")' "$@"; }

declare -A RES
for t in $TRANSPORTS; do
    for n in $AGENTS; do
        st=(); a2a=(); idle=(); after=(); vm=()
        for ((r = 1; r <= RUNS; r++)); do
            # 300 s: the test's own bounds are tighter; this only stops a hung run.
            line="$(WYVERN_TEST_TRANSPORT="$t" WYVERN_SCALE_AGENTS="$n" timeout 300 "$exe" --nocapture \
                --exact many_agents_all_to_all_deliver_everything_and_idle_links_give_their_buffers_back 2>&1 \
                | grep ' agents on ' || true)"
            [ -n "$line" ] || die "$t, $n agents, run $r: the test failed (run it: WYVERN_TEST_TRANSPORT=$t WYVERN_SCALE_AGENTS=$n $exe --nocapture)"
            echo "  $t n=$n run $r: $line"
            read -r s1 s2 s3 s4 s5 <<<"$(python3 - "$line" <<'PY'
import re, sys
l = sys.argv[1]
started = re.search(r"started in ([0-9.]+) s", l).group(1)
a2a = re.search(r"settled\) in ([0-9.]+) s", l).group(1)
lists = re.findall(r"\[([0-9, ]+)\]", l)
idle = max(int(x) for x in lists[0].split(","))
after = re.search(r"largest ([0-9]+) KiB;", l).group(1)
vm = re.search(r"largest VmRSS ([0-9]+) KiB", l).group(1)
print(started, a2a, idle, after, vm)
PY
)"
            st+=("$s1"); a2a+=("$s2"); idle+=("$s3"); after+=("$s4"); vm+=("$s5")
        done
        RES[$t,$n]="$(median "${st[@]}") $(median "${a2a[@]}") $(median "${idle[@]}") $(median "${after[@]}") $(median "${vm[@]}")"
    done
done

declare -A MPIRES
if [ "$MPI" = 1 ] && command -v mpicc >/dev/null && command -v mpirun >/dev/null; then
    tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
    mpicc -O2 -o "$tmp/mpi_alltoall" bench/mpi_alltoall.c
    for n in $AGENTS; do
        tt=(); vv=()
        for ((r = 1; r <= RUNS; r++)); do
            line="$(timeout 300 mpirun --oversubscribe --allow-run-as-root --mca btl self,tcp \
                --mca btl_tcp_if_include lo -np "$n" "$tmp/mpi_alltoall" 20 2>&1 | grep '^mpi ranks' || true)"
            [ -n "$line" ] || { echo "  mpi n=$n run $r: failed"; continue; }
            echo "  mpi n=$n run $r: $line"
            tt+=("$(sed -E 's/.*start to exchanged ([0-9.]+) s.*/\1/' <<<"$line")")
            vv+=("$(sed -E 's/.*largest VmRSS ([0-9]+) KiB.*/\1/' <<<"$line")")
        done
        [ "${#tt[@]}" -gt 0 ] && MPIRES[$n]="$(median "${tt[@]}") $(median "${vv[@]}")"
    done
else
    echo "(no MPI comparison: MPI=0 or mpicc/mpirun not installed)"
fi

echo
echo "| transport | agents | start-up, no link (s) | all-to-all incl. link set-up (s) | largest RssAnon, no link (KiB) | largest RssAnon after (KiB) | largest VmRSS (KiB) | MPI start-to-exchanged (s) | MPI largest rank VmRSS (KiB) | time × MPI | VmRSS × MPI |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for t in $TRANSPORTS; do
    for n in $AGENTS; do
        read -r s1 s2 s3 s4 s5 <<<"${RES[$t,$n]}"
        read -r m1 m2 <<<"${MPIRES[$n]:-- -}"
        tr="-"; vr="-"
        if [ "$m1" != "-" ]; then
            tr="$(python3 -c "print(f'{($s1 + $s2) / $m1:.2f}')")"
            vr="$(python3 -c "print(f'{$s5 / $m2:.2f}')")"
        fi
        echo "| $t | $n | $s1 | $s2 | $s3 | $s4 | $s5 | $m1 | $m2 | $tr | $vr |"
    done
done
echo "(time × MPI: wyvern's start-up + all-to-all over MPI's start-to-exchanged; below 1 is faster)"
