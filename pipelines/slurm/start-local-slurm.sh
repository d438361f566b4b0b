#!/usr/bin/env bash
# Start a one-node SLURM (slurmctld + slurmd + munged) on this machine, all on 127.0.0.1:
# for trying pipelines/ and for the test suite (tests/slurm_fixture.py).  Run as root.
#
#   pipelines/slurm/start-local-slurm.sh [STATE_DIR]       # default /tmp/wsi-deepr-slurm
#   export SLURM_CONF=STATE_DIR/etc/slurm.conf              # what it prints at the end
#   sinfo; sbatch ...; pipelines/slurm/stop-local-slurm.sh [STATE_DIR]
#
# * Installs Debian's slurm-wlm (22.05) and munge with apt-get only when slurmctld is missing.
# * One node: this host (`hostname -s`) at NodeAddr=127.0.0.1 with its real CPUs and memory
#   (from `slurmd -C`), a partition `debug` (default, no time limit), cons_tres with
#   CR_Core_Memory, no accounting, proctrack/linuxproc and task/none (no cgroups needed).
# * A fake GPU: GresTypes=gpu, the node has Gres=gpu:1 backed by a dummy character device
#   (gres.conf AutoDetect=off): `--gres=gpu:1` jobs are scheduled on it; there is no CUDA.
# * Config, spool, state, logs and pid files live under STATE_DIR; nothing is written to
#   /etc/slurm except a symlink /etc/slurm/slurm.conf -> STATE_DIR/etc/slurm.conf, made only
#   when /etc/slurm/slurm.conf does not exist (so plain `sinfo` works too).
# * Idempotent: when this STATE_DIR's slurmctld answers and the node is up, it only prints.
# Environment: WSI_DEEPR_SLURM_PORT (slurmctld port, default 6817; slurmd uses PORT+1).
set -euo pipefail

STATE=$(readlink -m "${1:-${WSI_DEEPR_SLURM_STATE:-/tmp/wsi-deepr-slurm}}")
PORT=${WSI_DEEPR_SLURM_PORT:-6817}
CONF=$STATE/etc/slurm.conf
NODE=$(hostname -s)
FAKE_GPU=/dev/wsi-deepr-fake-gpu0

say() { echo "start-local-slurm: $*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (munged, slurmctld and slurmd run as root here); run it with sudo"

node_state() { SLURM_CONF=$CONF timeout 10 sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1 || true; }

if [ -f "$CONF" ] && [ -f "$STATE/run/slurmctld.pid" ] && kill -0 "$(cat "$STATE/run/slurmctld.pid")" 2>/dev/null; then
    case "$(node_state)" in
        idle|mixed|allocated|completing)
            say "already running (node $NODE $(node_state)) with $CONF"
            echo "export SLURM_CONF=$CONF"
            exit 0 ;;
    esac
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || die "slurmctld/munged not found and no apt-get: install SLURM (slurm-wlm) and munge"
    say "installing slurm-wlm and munge with apt-get (about 2 minutes)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
fi

mkdir -p "$STATE"/{etc,ctld,spool,log,run}

# --- munge: a key, then munged (as the munge user when it exists) -----------------------
if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then mungekey --create --force; else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
fi
MUNGE_USER=root
if id munge >/dev/null 2>&1; then MUNGE_USER=munge; fi
chown "$MUNGE_USER": /etc/munge/munge.key /etc/munge
chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown "$MUNGE_USER": /run/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    if [ "$MUNGE_USER" = munge ]; then runuser -u munge -- munged; else munged --force; fi
    touch "$STATE/run/munged.started"   # stop-local-slurm.sh stops it then
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || die "munged does not answer (see /var/log/munge/munged.log)"
fi

# --- the fake GPU device ----------------------------------------------------------------
if [ ! -e "$FAKE_GPU" ]; then
    # a character device with /dev/null's numbers: harmless if opened; a plain file if mknod is refused
    mknod -m 0666 "$FAKE_GPU" c 1 3 2>/dev/null || touch "$FAKE_GPU"
fi

# --- configuration ----------------------------------------------------------------------
HW=$(slurmd -C | head -1)   # NodeName=... CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=.. ThreadsPerCore=.. RealMemory=..
HW=${HW#NodeName=* }
CPUS=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$HW")
MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$HW")
cat >"$CONF" <<EOF
# written by pipelines/slurm/start-local-slurm.sh: one node, everything on 127.0.0.1
ClusterName=wsi-deepr-local
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmdSpoolDir=$STATE/spool
StateSaveLocation=$STATE/ctld
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# jobs without --mem get this per CPU, not the whole node
DefMemPerCPU=1024
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
InactiveLimit=0
KillWait=5
# finished jobs stay in scontrol for 16 s; sbatch --wait then polls every 8 s (its back-off is capped at
# MinJobAge/2; with the default 300 s a 13-s job is noticed after 42 s)
MinJobAge=16
MailProg=/bin/true
SlurmctldTimeout=30
SlurmdTimeout=60
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE $HW Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
cat >"$STATE/etc/gres.conf" <<EOF
# fake GPU for scheduling tests: no CUDA behind it
AutoDetect=off
NodeName=$NODE Name=gpu File=$FAKE_GPU
EOF
cp -f /etc/slurm/plugstack.conf "$STATE/etc/" 2>/dev/null || : >"$STATE/etc/plugstack.conf"
if [ ! -e /etc/slurm/slurm.conf ] && [ ! -L /etc/slurm/slurm.conf ]; then
    mkdir -p /etc/slurm
    ln -s "$CONF" /etc/slurm/slurm.conf
fi

# --- daemons ----------------------------------------------------------------------------
export SLURM_CONF=$CONF
for daemon in slurmctld slurmd; do
    pidfile=$STATE/run/$daemon.pid
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        say "$daemon already running (pid $(cat "$pidfile"))"
        continue
    fi
    say "starting $daemon"
    if [ $daemon = slurmctld ]; then slurmctld -c -f "$CONF"; else slurmd -f "$CONF"; fi
done

say "waiting for node $NODE to be idle"
state=
for _ in $(seq 120); do
    state=$(node_state)
    case "$state" in idle*) break ;; esac
    sleep 0.25
done
case "$state" in
    idle*) ;;
    *)
        tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
        die "node $NODE is '${state:-unknown}' after 30 s (logs in $STATE/log)" ;;
esac
say "SLURM is up: node $NODE ($CPUS CPUs, $MEM MB, gpu:1 fake), partition debug, logs in $STATE/log"
say "stop it with: $(dirname "$(readlink -f "$0")")/stop-local-slurm.sh $STATE"
echo "export SLURM_CONF=$CONF"
