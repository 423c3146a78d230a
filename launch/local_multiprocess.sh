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
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status
