#!/usr/bin/env bash
# N CPU processes on 127.0.0.1 with gloo collectives, each with D virtual devices: a multi-host run on one machine.
# Mesh: data over all N*D devices by default (mesh.data=-1), or any factorisation via overrides.
#   usage: launch/local_multiprocess.sh N D configs/train/tiny.yaml [key=value ...]
set -euo pipefail
N=${1:?processes}; D=${2:?devices per process}; CONFIG=${3:?config}; shift 3
PORT=${MNLU_COORDINATOR_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
pids=()
for ((i = 0; i < N; i++)); do
  MNLU_COORDINATOR=127.0.0.1:$PORT MNLU_NUM_PROCESSES=$N MNLU_PROCESS_ID=$i MNLU_CPU_COLLECTIVES=gloo \
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$D" \
    python3 -m mnlu_jax train --config "$CONFIG" distributed=explicit "$@" &
  pids+=($!)
done
# One process that dies leaves the others blocked in a collective (and then in jax.distributed's shutdown barrier,
# up to its 300 s timeout): the first failure stops the rest with SIGTERM (each saves a checkpoint if it can), and
# what still runs MNLU_LAUNCH_GRACE_S seconds later (default 60) is killed. Ctrl-C or SIGTERM to this script does
# the same.
GRACE=${MNLU_LAUNCH_GRACE_S:-60}
stop_all() {
  kill "${pids[@]}" 2>/dev/null || true
  for ((t = 0; t < GRACE; t++)); do
    running=$(jobs -rp | wc -l)
    ((running == 0)) && return 0
    sleep 1
  done
  echo "local_multiprocess.sh: processes still running ${GRACE}s after SIGTERM; killing them" >&2
  kill -9 "${pids[@]}" 2>/dev/null || true
}
trap 'stop_all; wait; exit 130' INT
trap 'stop_all; wait; exit 143' TERM
status=0
for ((i = 0; i < N; i++)); do
  rc=0
  wait -n || rc=$?
  if ((rc != 0 && status == 0)); then
    status=$rc
    echo "local_multiprocess.sh: a process exited with status $rc; stopping the others" >&2
    stop_all
  fi
done
exit $status
