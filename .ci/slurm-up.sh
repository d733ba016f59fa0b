#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the Slurm executor's tests.
#
#   bash .ci/slurm-up.sh          install (Debian's slurm-wlm and munge), configure, start; wait until idle
#   bash .ci/slurm-up.sh stop     stop the daemons this script started
#   bash .ci/slurm-up.sh status   print sinfo, exit 0 when the node takes jobs
#
# Needs root and apt-get. The daemons are started directly (no systemd): munged, slurmctld
# and slurmd, with proctrack/linuxproc and task/none so that no cgroup setup is needed
# (containers and CI machines). Running it again while the cluster is up does nothing and
# succeeds. It writes /etc/slurm/slurm.conf only when there is none or when it wrote the one
# there (it marks its own); a cluster configured by someone else is left alone. It records
# the daemons it starts (name and pid) in $STARTED, and `stop` ends only those, and only
# while the pid still runs that daemon: daemons that were running before, or that someone
# else started, are left alone.
set -euo pipefail

MARK="# written by poisonbench .ci/slurm-up.sh"
CONF=/etc/slurm/slurm.conf
RUN=/run/slurm
LOGS=/var/log/slurm
STATE=/var/lib/slurm
# the daemons this script started, one "name pid" a line (SLURM_UP_STARTED moves it, for tests)
STARTED=${SLURM_UP_STARTED:-/run/poisonbench-slurm-up.started}

say() { echo "slurm-up: $*" >&2; }

node_state() {  # the node's state as sinfo reports it (idle, mixed, down*, ...), empty if slurmctld does not answer
    timeout 10 sinfo -h -N -n "$(hostname -s)" -o %T 2>/dev/null | head -1 || true
}

takes_jobs() {
    case "$(node_state)" in
        idle | mixed | allocated | completing) return 0 ;;
        *) return 1 ;;
    esac
}

start_recorded() {  # start daemon $1 (command ${@:3}) and record its pid once it writes its pid file $2 anew
    local name=$1 file=$2 before pid=""
    before=$(cat "$file" 2>/dev/null || true)
    "${@:3}"
    for _ in $(seq 50); do
        pid=$(cat "$file" 2>/dev/null || true)
        [[ -n $pid && $pid != "$before" ]] && break
        pid=""
        sleep 0.2
    done
    if [[ -n $pid ]]; then
        echo "$name $pid" >>"$STARTED"
    else
        say "$name wrote no new pid to $file; 'stop' will not stop it"
    fi
}

stop() {  # stop the daemons this script started (the last started first), if their pids still run them
    if [[ ! -f $STARTED ]]; then
        say "nothing to stop: no daemon started by this script is recorded in $STARTED"
        return
    fi
    local name pid
    while read -r name pid; do
        [[ -n $name && $pid =~ ^[0-9]+$ ]] || continue
        if [[ $(cat "/proc/$pid/comm" 2>/dev/null) != "$name" ]]; then
            say "$name (pid $pid) no longer runs; nothing to stop"
            continue
        fi
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        say "stopped $name (pid $pid)"
    done < <(tac "$STARTED")
    rm -f "$STARTED"
}

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && command -v sbatch >/dev/null; then
        return
    fi
    say "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm slurm-client munge >/dev/null
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile /etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    start_recorded munged /run/munge/munged.pid runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.2
    done
    say "munged did not start; see /var/log/munge/munged.log"
    exit 1
}

write_config() {
    if [[ -f $CONF ]] && ! grep -qF "$MARK" $CONF; then
        say "$CONF exists and was not written by this script; using it as it is"
        return
    fi
    local host cpus memory
    host=$(hostname -s)
    cpus=$(nproc --all)
    # the memory slurmd measures (MiB): configuring more would drain the node as 'Low RealMemory'
    memory=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)
    mkdir -p /etc/slurm
    cat >$CONF.new <<EOF
$MARK
ClusterName=poisonbench
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# jobs that ask for no memory get their share per CPU, so that cells run side by side
DefMemPerCPU=$((memory / cpus))
ReturnToService=2
# finished jobs stay visible to squeue for 10 minutes (no accounting database here)
MinJobAge=600
SchedulerType=sched/backfill
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    mv $CONF.new $CONF
}

daemon_runs() {  # whether the daemon of this pid file runs
    [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

start() {
    if takes_jobs; then
        say "already up: node $(hostname -s) is $(node_state)"
        return
    fi
    [[ $(id -u) == 0 ]] || { say "needs root (apt-get, daemons)"; exit 1; }
    install
    start_munge
    write_config
    mkdir -p $RUN $LOGS $STATE/slurmctld $STATE/slurmd
    daemon_runs $RUN/slurmctld.pid || start_recorded slurmctld $RUN/slurmctld.pid slurmctld
    daemon_runs $RUN/slurmd.pid || start_recorded slurmd $RUN/slurmd.pid slurmd
    local state=""
    for _ in $(seq 120); do
        state=$(node_state)
        case $state in
            idle) break ;;
            down* | drain* | drained*) scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    if ! takes_jobs; then
        say "node $(hostname -s) is '${state:-not reported}' after 60 s; see $LOGS/slurmctld.log and $LOGS/slurmd.log"
        exit 1
    fi
    say "up: node $(hostname -s) is idle; stop it with: bash $0 stop"
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) sinfo; takes_jobs ;;
    *) say "usage: $0 [start|stop|status]"; exit 2 ;;
esac
