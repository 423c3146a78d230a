#!/usr/bin/env bash
# Run `mnlu-jax train` on every worker of a Cloud TPU VM pod slice (e.g. v5p-64). jax.distributed.initialize()
# finds the other workers from the TPU metadata (distributed=auto). Mesh: fsdp over all chips by default
# (configs/paper/biomistral_nlu_tpu_v5p.yaml); add tensor>1 for very large slices.
#   usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG [key=value ...]
# The repo must be at the same path on every worker (gcloud ... scp --worker=all, or a shared disk), and
# output_dir must be a filesystem every worker sees (a Filestore/NFS mount, or the bucket mounted with gcsfuse) so
# that Orbax writes one checkpoint collectively; gs:// URLs are refused (the trainer writes with local file APIs).
# MNLU_REPO_DIR is a path on the workers (default: mnlu-jax in the remote user's home).
set -euo pipefail
TPU=${1:?tpu name}; ZONE=${2:?zone}; CONFIG=${3:?config}; shift 3
REPO=${MNLU_REPO_DIR:-'$HOME/mnlu-jax'}  # expanded on the workers, not here
# Each argument quoted for the remote shell, so overrides with spaces or brackets arrive as one argument each.
ARGS=$(printf ' %q' "$CONFIG" "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  cd $REPO && pip install -q -e . 'jax[tpu]' &&
  python3 -m mnlu_jax train --config$ARGS"
