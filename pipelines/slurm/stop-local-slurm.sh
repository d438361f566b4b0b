#!/usr/bin/env bash
# Stop the one-node SLURM started by start-local-slurm.sh: cancel its jobs, stop slurmd and
# slurmctld (by their pid files), and munged when this script's start started it.
#
#   pipelines/slurm/stop-local-slurm.sh [STATE_DIR] [--purge]
#   --purge: remove STATE_DIR and the fake GPU device too (SLURM and munge stay installed)
set -euo pipefail

STATE=/tmp/wsi-deepr-slurm
PURGE=0
for arg in "$@"; do
    case "$arg" in
        --purge) PURGE=1 ;;
        *) STATE=$(readlink -m "$arg") ;;
    esac
done
CONF=$STATE/etc/slurm.conf
say() { echo "stop-local-slurm: $*" >&2; }

if [ -f "$CONF" ]; then
    SLURM_CONF=$CONF timeout 10 scancel --full --quiet --partition=debug 2>/dev/null || true
fi
stop_pid() {  # NAME PIDFILE
    local name=$1 pidfile=$2 pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        say "stopping $name (pid $pid)"
        kill -TERM "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$pidfile"
}
stop_pid slurmd "$STATE/run/slurmd.pid"
stop_pid slurmctld "$STATE/run/slurmctld.pid"
# job steps left behind by slurmd (slurmstepd of this state dir)
for pid in $(pgrep -x slurmstepd 2>/dev/null || true); do
    if grep -qa -- "$STATE" "/proc/$pid/environ" 2>/dev/null || grep -qa -- "$STATE" "/proc/$pid/cmdline" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
done
if [ -f "$STATE/run/munged.started" ]; then
    pid=$(cat /run/munge/munged.pid 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        say "stopping munged (pid $pid)"
        kill -TERM "$pid"
    fi
    rm -f "$STATE/run/munged.started"
fi
if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$CONF" ]; then
    rm -f /etc/slurm/slurm.conf
fi
if [ "$PURGE" = 1 ]; then rm -rf "$STATE" /dev/wsi-deepr-fake-gpu0; fi
if [ "$PURGE" = 1 ]; then say "stopped; $STATE removed"; else say "stopped (state and logs in $STATE)"; fi
