#!/bin/bash
# One run of the node-level exchange for A/B comparisons of two builds
# (bench/run.sh node's wyvern part, without the peers): two agents on tcp
# loopback, 2 senders on each sending COUNT messages of SIZE bytes to the
# receiver on the other node, both ways at once. Prints one line: both
# receivers' rates summed, CPU per message over every process (agents from
# /proc, clients from /usr/bin/time), split into agents, senders and
# receivers, whether both receivers checked every payload, the load.
#
#   bench/node.sh BIN_DIR            # BIN_DIR holds wyvern and wyvern-peer
#   SIZE (8) COUNT (2000000 per sender) PEERARGS (e.g. "--batch 64")
#   TAG (a label for the line) STAT (write both agents' `wyvern stat --json`
#   to $STAT.0/.1 before stopping them)
#
# Alternate the builds (A B A B ...) under `flock /work/bench.lock`.
set -u
B=$1; SIZE=${SIZE:-8}; COUNT=${COUNT:-2000000}
T=$(mktemp -d /tmp/wyvern-node.XXXX)
P0=$((20000 + RANDOM % 20000)); P1=$((P0+1))
for i in 0 1; do
  timeout 120 $B/wyvern agent --node-id $i --nodes 127.0.0.1:$P0,127.0.0.1:$P1 --socket $T/a$i.sock --idle adaptive --block-bytes 64MiB --max-clients 8 --job node-ab > $T/a$i.out 2>&1 &
  eval A$i=$!
done
for _ in $(seq 100); do grep -q ready $T/a0.out && grep -q ready $T/a1.out && break; sleep 0.05; done
TF="%e %U %S"
/usr/bin/time -f "$TF" -o $T/t.r0 timeout 120 $B/wyvern-peer ${PEERARGS:-} --socket $T/a0.sock --ep 2 --sizes $SIZE recv --count $((2*COUNT)) > $T/r0.out 2>&1 & R0=$!
/usr/bin/time -f "$TF" -o $T/t.r1 timeout 120 $B/wyvern-peer ${PEERARGS:-} --socket $T/a1.sock --ep 2 --sizes $SIZE recv --count $((2*COUNT)) > $T/r1.out 2>&1 & R1=$!
sleep 0.3
S=()
for k in 1 2; do
  /usr/bin/time -f "$TF" -o $T/t.sa$k timeout 120 $B/wyvern-peer ${PEERARGS:-} --socket $T/a0.sock --sizes $SIZE send --to 1:2 --count $COUNT > $T/sa$k.out 2>&1 & S+=($!)
  /usr/bin/time -f "$TF" -o $T/t.sb$k timeout 120 $B/wyvern-peer ${PEERARGS:-} --socket $T/a1.sock --sizes $SIZE send --to 0:2 --count $COUNT > $T/sb$k.out 2>&1 & S+=($!)
done
wait ${S[@]} $R0 $R1
CLK=$(getconf CLK_TCK)
acpu=0; for p in $(pgrep -P $A0) $(pgrep -P $A1); do acpu=$(echo "$acpu + $(awk '{print $14+$15}' /proc/$p/stat)/$CLK" | bc -l); done
ccpu=$(cat $T/t.* | awk '{s+=$2+$3} END {print s}')
scpu=$(cat $T/t.s* | awk '{s+=$2+$3} END {print s}')
rcpu=$(cat $T/t.r* | awk '{s+=$2+$3} END {print s}')
[ -n "${STAT:-}" ] && { $B/wyvern stat -s $T/a0.sock --json > $STAT.0; $B/wyvern stat -s $T/a1.sock --json > $STAT.1; }
kill $A0 $A1 2>/dev/null; wait 2>/dev/null
python3 - "$T" $COUNT $acpu $ccpu $scpu $rcpu "$(cut -d' ' -f1 /proc/loadavg)" "${TAG:-}" <<'PY'
import json,sys
T,count,acpu,ccpu,scpu,rcpu,load,tag=sys.argv[1],int(sys.argv[2]),*map(float,sys.argv[3:7]),sys.argv[7],sys.argv[8]
rate=0; ok=0
for i in (0,1):
    j=json.loads(open(f'{T}/r{i}.out').read().strip().splitlines()[-1])
    rate+=j['rate']; ok+= (j['ok'] is True and j['corrupt']==0)
n=4*count
print(f'{tag} rate {rate/1e6:.2f} M/s  cpu/msg {(acpu+ccpu)/n*1e9:.0f} ns  agents {acpu/n*1e9:.0f} senders {scpu/n*1e9:.0f} receivers {rcpu/n*1e9:.0f} ns  ok {ok}/2  load {load}', flush=True)
PY
rm -rf $T
