#!/usr/bin/env bash
# A single-node Slurm on this machine for tests: munged, slurmctld and slurmd started by hand,
# everything (config, state, spool, logs, munge socket) under DIR. Needs root and Debian's
# slurm-wlm + munge (installed here with apt-get when missing).
#
#   scripts/start_slurm.sh DIR      prints SLURM_CONF=DIR/slurm.conf on success
#   scripts/stop_slurm.sh DIR       stops the daemons started for DIR
#
# proctrack/linuxproc, task/none and no cgroups: containers rarely allow cgroup delegation.
# jobcomp/filetxt records finished jobs without slurmdbd, so `sacct --completion` lists them.
set -euo pipefail

dir=$(realpath -m "${1:?usage: start_slurm.sh DIR}")
if [ "$(id -u)" != 0 ]; then
    echo "start_slurm.sh: needs root (slurmd runs jobs as their users)" >&2
    exit 2
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && \
             DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; }
fi

mkdir -p "$dir"/{state,spool,log,munge}
chmod 700 "$dir/munge"
node=$(hostname -s)
cpus=$(nproc)
memory_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)

# munge: its own key and socket, so a system munged (if any) is left alone
dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$dir/munge/munge.key"
munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/socket" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" \
    --seed-file="$dir/munge/seed"

cat > "$dir/slurm.conf" <<CONF
ClusterName=vidfeat-test
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/socket
CredType=cred/munge
SlurmctldPort=$((6817 + RANDOM % 1000))
SlurmdPort=$((7817 + RANDOM % 1000))
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
NodeName=$node CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
export SLURM_CONF="$dir/slurm.conf"

slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"

for _ in $(seq 60); do
    if sinfo -h -N -o "%T" 2>/dev/null | grep -qE "^(idle|mixed|allocated)"; then
        echo "SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 0.5
done
echo "start_slurm.sh: the node never became idle: $(sinfo -h -N -o '%T %E' 2>&1 | head -1)" >&2
tail -3 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
exit 1
