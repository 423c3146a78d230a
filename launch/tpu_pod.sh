#!/usr/bin/env bash
# Run `mnlu-jax train` on every worker of a Cloud TPU VM pod slice (e.g. v5p-64). jax.distributed.initialize()
# finds the other workers from the TPU metadata (distributed=auto). Mesh: fsdp over all chips by default
# (configs/paper/biomistral_nlu_tpu_v5p.yaml); add tensor>1 for very large slices.
#   usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG [key=value ...]
# The repo must be at the same path on every worker (gcloud ... scp --worker=all, or a shared disk), and
# output_dir should be a gs:// bucket or shared filesystem so that Orbax writes one checkpoint collectively.
set -euo pipefail
TPU=${1:?tpu name}; ZONE=${2:?zone}; CONFIG=${3:?config}; shift 3
REPO=${MNLU_REPO_DIR:-~/mnlu-jax}
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  cd $REPO && pip install -q -e . 'jax[tpu]' &&
  python3 -m mnlu_jax train --config $CONFIG $*"
