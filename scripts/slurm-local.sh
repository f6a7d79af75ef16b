#!/usr/bin/env bash
# Usage: scripts/slurm-local.sh start|stop|status|env
#
# A real Slurm (Debian's slurm-wlm 22.05 + munge) on this one machine, for
# tests and trying `wyvern launch`: two "nodes" n1 and n2, both 127.0.0.1 with
# distinct slurmd ports (SlurmdParameters=config_overrides, one `slurmd -N nX`
# each), one partition `debug`. Everything (munge key and socket, slurm.conf,
# state, logs, pid files) lives in a private directory, $WYVERN_SLURM_DIR
# (default /tmp/wyvern-slurm); nothing in /etc is touched.
#   start   installs slurm-wlm and munge if missing (apt), writes the key and
#           slurm.conf, starts munged, slurmctld and two slurmd, and waits
#           (bounded) until sinfo shows both nodes idle. Idempotent: daemons
#           already running are left alone.
#   stop    stops the daemons by their pid files (SIGTERM, then SIGKILL).
#   status  shows which daemons run, and sinfo.
#   env     prints `export SLURM_CONF=...` (eval it to use sbatch/srun/sinfo).
# Clients need SLURM_CONF=$WYVERN_SLURM_DIR/slurm.conf. Needs root.
set -euo pipefail

DIR="${WYVERN_SLURM_DIR:-/tmp/wyvern-slurm}"
CTLD_PORT="${WYVERN_SLURM_PORT:-16817}"   # slurmd ports: +1, +2
NODES=(n1 n2)
WAIT_SECS="${WYVERN_SLURM_WAIT:-30}"

CONF="$DIR/slurm.conf"
MUNGE_SOCK="$DIR/munge/munge.sock"
export SLURM_CONF="$CONF"

log() { printf '[slurm-local] %s\n' "$*"; }
die() { printf '[slurm-local] ERROR: %s\n' "$*" >&2; exit 1; }

alive() { # alive PIDFILE
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_pkgs() {
    local missing=()
    for p in slurm-wlm munge; do
        [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" = "install ok installed" ] \
            || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "apt-get not found; install ${missing[*]} by hand"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    local opts=(-o Acquire::Retries=3 -o DPkg::Lock::Timeout=300)
    timeout 300 apt-get "${opts[@]}" update -q >/dev/null || die "apt-get update failed"
    timeout 600 apt-get "${opts[@]}" install -y -q --no-install-recommends "${missing[@]}" \
        >/dev/null || die "apt-get install ${missing[*]} failed"
}

write_conf() {
    local host cpus mem line
    host="$(hostname -s)"
    # CPUs/topology as slurmd sees them; a modest RealMemory.
    line="$(slurmd -C | head -1)"
    cpus="$(sed -n 's/.*\(CPUs=[0-9]* Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*\).*/\1/p' <<<"$line")"
    [ -n "$cpus" ] || cpus="CPUs=$(nproc)"
    mem=1000
    {
        echo "# written by scripts/slurm-local.sh"
        echo "ClusterName=wyvern"
        echo "SlurmctldHost=$host(127.0.0.1)"
        echo "SlurmctldPort=$CTLD_PORT"
        echo "SlurmUser=root"
        echo "SlurmdUser=root"
        echo "AuthType=auth/munge"
        echo "CredType=cred/munge"
        echo "AuthInfo=socket=$MUNGE_SOCK"
        echo "StateSaveLocation=$DIR/state"
        echo "SlurmdSpoolDir=$DIR/spool/%n"
        echo "SlurmctldPidFile=$DIR/run/slurmctld.pid"
        echo "SlurmdPidFile=$DIR/run/slurmd-%n.pid"
        echo "SlurmctldLogFile=$DIR/log/slurmctld.log"
        echo "SlurmdLogFile=$DIR/log/slurmd-%n.log"
        echo "ProctrackType=proctrack/linuxproc"
        echo "TaskPlugin=task/affinity"
        echo "SelectType=select/cons_tres"
        echo "SelectTypeParameters=CR_Core"
        echo "SchedulerType=sched/backfill"
        echo "SlurmdParameters=config_overrides"
        echo "ReturnToService=2"
        echo "MpiDefault=none"
        echo "JobAcctGatherType=jobacct_gather/none"
        echo "AccountingStorageType=accounting_storage/none"
        echo "KillWait=3"
        echo "InactiveLimit=0"
        echo "MinJobAge=30"
        local i=1
        for n in "${NODES[@]}"; do
            echo "NodeName=$n NodeAddr=127.0.0.1 NodeHostname=$host Port=$((CTLD_PORT + i)) $cpus RealMemory=$mem State=UNKNOWN"
            i=$((i + 1))
        done
        echo "PartitionName=debug Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=10 State=UP"
    } >"$CONF.new"
    mv "$CONF.new" "$CONF"
}

start_munge() {
    if alive "$DIR/run/munged.pid"; then return 0; fi
    mkdir -p "$DIR/munge"
    chmod 0700 "$DIR/munge"
    if [ ! -s "$DIR/munge/munge.key" ]; then
        mungekey --create --keyfile="$DIR/munge/munge.key" >/dev/null 2>&1 \
            || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
        chmod 0400 "$DIR/munge/munge.key"
    fi
    rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
    munged --force --socket="$MUNGE_SOCK" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge/munged.seed" \
        || die "munged failed to start (see $DIR/log/munged.log)"
    local t=0
    until [ -S "$MUNGE_SOCK" ]; do
        t=$((t + 1)); [ "$t" -le 50 ] || die "munged socket $MUNGE_SOCK did not appear"
        sleep 0.1
    done
}

start() {
    [ "$(id -u)" -eq 0 ] || die "needs root (the daemons run as root with SlurmUser=root)"
    install_pkgs
    local b
    for b in munged mungekey slurmctld slurmd sinfo; do
        command -v "$b" >/dev/null || die "$b not found on PATH (is slurm-wlm/munge installed? /usr/sbin on PATH?)"
    done
    mkdir -p "$DIR"/{state,spool,run,log}
    chmod 0755 "$DIR"
    for n in "${NODES[@]}"; do mkdir -p "$DIR/spool/$n"; done
    if ! alive "$DIR/run/slurmctld.pid"; then
        write_conf
    fi
    start_munge
    if ! alive "$DIR/run/slurmctld.pid"; then
        log "starting slurmctld (port $CTLD_PORT)"
        # -c: a clean start, no jobs or node states left from an earlier run.
        timeout 20 slurmctld -c -f "$CONF" \
            || die "slurmctld failed to start; log: $(tail -5 "$DIR/log/slurmctld.log" 2>/dev/null)"
    fi
    for n in "${NODES[@]}"; do
        if ! alive "$DIR/run/slurmd-$n.pid"; then
            log "starting slurmd -N $n"
            timeout 20 slurmd -N "$n" -f "$CONF" \
                || die "slurmd -N $n failed to start; log: $(tail -5 "$DIR/log/slurmd-$n.log" 2>/dev/null)"
        fi
    done
    local deadline=$((SECONDS + WAIT_SECS)) states=""
    while :; do
        states="$(timeout 5 sinfo -h -N -o '%N %t' 2>/dev/null | sort -u | tr '\n' ' ' || true)"
        local idle=0
        for n in "${NODES[@]}"; do
            grep -Eq "(^| )$n (idle|mix|alloc)( |$)" <<<"$states" && idle=$((idle + 1))
        done
        [ "$idle" -eq "${#NODES[@]}" ] && break
        [ "$SECONDS" -lt "$deadline" ] \
            || die "nodes not idle within ${WAIT_SECS}s (sinfo: ${states:-no answer}); logs in $DIR/log"
        sleep 0.2
    done
    log "ready: ${states}(export SLURM_CONF=$CONF)"
}

# stop_pids NAME... : SIGTERM to every daemon named (by pid file) at once,
# then up to 5 s for all of them, then SIGKILL to whatever is left.
stop_pids() {
    local pids=() d pid t=0
    for d in "$@"; do
        if alive "$DIR/run/$d.pid"; then
            pid="$(cat "$DIR/run/$d.pid")"
            log "stopping $d (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    while [ "$t" -lt 50 ]; do
        local left=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
        [ "$left" -eq 0 ] && break
        sleep 0.1; t=$((t + 1))
    done
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null && { log "pid $pid still there: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
    done
    for d in "$@"; do rm -f "$DIR/run/$d.pid"; done
}

stop() {
    stop_pids slurmctld "${NODES[@]/#/slurmd-}"
    stop_pids munged
    log "stopped"
}

status() {
    local rc=0
    for d in munged slurmctld "${NODES[@]/#/slurmd-}"; do
        if alive "$DIR/run/$d.pid"; then
            log "$d: running (pid $(cat "$DIR/run/$d.pid"))"
        else
            log "$d: not running"; rc=1
        fi
    done
    [ "$rc" -ne 0 ] || timeout 5 sinfo -N || rc=1
    return "$rc"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) die "usage: $0 start|stop|status|env" ;;
esac
