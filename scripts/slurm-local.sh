#!/usr/bin/env bash
# A real one-node Slurm on 127.0.0.1, to test the experiment launcher against sbatch/squeue/scancel, not a mock.
#
#   scripts/slurm-local.sh start   # install slurm-wlm + munge when missing (root, Debian), start munged, slurmctld, slurmd
#   scripts/slurm-local.sh stop    # stop the three daemons started here
#   scripts/slurm-local.sh env     # print `export SLURM_CONF=...` for the clients (sbatch, squeue) to find this cluster
#
# Everything lives under $SLURM_LOCAL_DIR (default /tmp/latteclip-slurm): config, state, logs, pids. One node named
# `localhost` with this machine's cores, one partition `debug`; proctrack/linuxproc and task/none so no cgroup is
# needed; no accounting (sacct does not work: job states come from squeue and from the run folders).
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/latteclip-slurm}
CONF=$DIR/slurm.conf

fail() { echo "slurm-local: $*" >&2; exit 1; }

install_if_missing() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return
  [ "$(id -u)" = 0 ] || fail "slurm-wlm and munge are not installed and installing them needs root (apt-get install slurm-wlm munge)"
  command -v apt-get >/dev/null || fail "slurm-wlm and munge are not installed and this is not a Debian system"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; } \
    || fail "apt-get install slurm-wlm munge failed"
}

write_config() {
  local cpus memory
  cpus=$(nproc)
  memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))  # MB; half the machine is plenty for tests
  mkdir -p "$DIR/state" "$DIR/spool"
  cat > "$CONF" <<EOF
ClusterName=latteclip-local
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=$(id -un)
SlurmctldPort=${SLURM_LOCAL_PORT:-6817}
SlurmdPort=$(( ${SLURM_LOCAL_PORT:-6817} + 1 ))
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

start_munge() {
  pgrep -x munged >/dev/null && return
  [ -s /etc/munge/munge.key ] || { [ "$(id -u)" = 0 ] && mungekey --create >/dev/null 2>&1; } || fail "no munge key in /etc/munge"
  mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
  if id munge >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    su -s /bin/sh munge -c "/usr/sbin/munged" || fail "munged did not start"
  else
    /usr/sbin/munged --force || fail "munged did not start"
  fi
}

wait_until_idle() {
  export SLURM_CONF=$CONF
  for _ in $(seq 60); do
    if sinfo -h -N -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; then
      echo "slurm-local: node localhost ready ($(sinfo -h -N -o '%c CPUs, %T')); export SLURM_CONF=$CONF"
      return
    fi
    sleep 1
  done
  fail "the node did not become idle in 60 s; see $DIR/slurmctld.log and $DIR/slurmd.log"
}

start() {
  install_if_missing
  write_config
  start_munge
  export SLURM_CONF=$CONF
  stop_daemons
  slurmctld -f "$CONF" -i || fail "slurmctld did not start; see $DIR/slurmctld.log"
  slurmd -f "$CONF" -N localhost || fail "slurmd did not start; see $DIR/slurmd.log"
  wait_until_idle
}

stop_daemons() {
  local pid
  for daemon in slurmd slurmctld; do
    pid=$(cat "$DIR/$daemon.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
      for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
    rm -f "$DIR/$daemon.pid"
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop_daemons; echo "slurm-local: stopped" ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
