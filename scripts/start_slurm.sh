#!/usr/bin/env bash
# Start a single-node Slurm cluster on this machine (slurmctld + slurmd on localhost, munge auth),
# for CI and for trying `tscnet study --executor slurm` without a cluster. Debian/Ubuntu, as root.
#
#   scripts/start_slurm.sh          install slurm-wlm and munge if missing, configure, start, wait for the node
#   scripts/start_slurm.sh --stop   stop the daemons it started
#
# Idempotent: if a controller already answers and the node is up, it does nothing. It writes
# /etc/slurm/slurm.conf only if there is none or it is the one this script wrote (a marker line),
# never over a real cluster's. One partition, `debug`, holds the node with all its CPUs; requeued
# jobs restart at once (no begin-time delay), and a job gets KillWait=30 s between SIGTERM and SIGKILL.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by tscnet scripts/start_slurm.sh"
STATE=/var/spool/slurm-tscnet
LOGS=/var/log/slurm-tscnet

if [[ "${1:-}" == "--stop" ]]; then
    for daemon in slurmd slurmctld; do
        [[ -f "$STATE/$daemon.pid" ]] && kill "$(cat "$STATE/$daemon.pid")" 2>/dev/null || true
    done
    echo "slurm: stopped"
    exit 0
fi

if [[ $EUID -ne 0 ]]; then
    echo "start_slurm.sh: error: run as root (it installs packages and starts system daemons)" >&2
    exit 2
fi

if scontrol ping >/dev/null 2>&1 && [[ "$(sinfo -h -o %T 2>/dev/null | head -1)" =~ ^(idle|mixed|allocated) ]]; then
    echo "slurm: already running ($(sinfo -h -o '%P %D node(s) %T' | head -1))"
    exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# munge: a key, then the daemon (authenticates the Slurm commands to the controller).
if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge
if ! pgrep -u munge munged >/dev/null; then
    runuser -u munge -- munged
fi

host=$(hostname -s)
cpus=$(nproc)
memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
if [[ -f "$CONF" ]] && ! grep -qF "$MARK" "$CONF"; then
    echo "start_slurm.sh: error: $CONF exists and was not written by this script; not touching a real cluster's config" >&2
    exit 2
fi
mkdir -p "$STATE/ctld" "$STATE/d" "$LOGS" /etc/slurm
cat > "$CONF" <<EOF
$MARK
ClusterName=tscnet
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=nohold_on_prolog_fail
ReturnToService=2
KillWait=30
MinJobAge=600
JobRequeue=1
MpiDefault=none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
# No cgroups here (containers): slurmd must not try to mount them.
cat > /etc/slurm/cgroup.conf <<EOF
$MARK
CgroupPlugin=cgroup/v1
CgroupAutomount=no
EOF

pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do
    state=$(sinfo -h -o %T 2>/dev/null | head -1 || true)
    if [[ "$state" =~ ^(idle|mixed|allocated) ]]; then
        echo "slurm: running (partition debug, node $host, $cpus CPUs; logs in $LOGS)"
        exit 0
    fi
    if [[ "$state" =~ ^(down|drain) ]]; then
        scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
    fi
    sleep 1
done
echo "start_slurm.sh: error: the node did not come up; see $LOGS/slurmctld.log and $LOGS/slurmd.log" >&2
exit 1
