#!/usr/bin/env bash
# Stops the daemons scripts/start_slurm.sh DIR started (by their pid files), jobs included.
set -uo pipefail

dir=$(realpath -m "${1:?usage: stop_slurm.sh DIR}")
if [ -f "$dir/slurm.conf" ]; then
    SLURM_CONF="$dir/slurm.conf" scancel --full --user=root 2>/dev/null
fi
for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
    if [ -f "$pidfile" ]; then
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null
    fi
done
exit 0
