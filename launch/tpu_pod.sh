#!/usr/bin/env bash
# Runs the same rstar_jax command on every host of a TPU pod slice (JAX auto-detects the topology).
# Usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG [extra flags, e.g. --workdir=gs://bucket/run --config.mcts.rollouts=16]
# Needs: gcloud, a TPU VM slice whose hosts have this repository checked out at $REPO (default ~/rstar_jax)
# and installed with `pip install -e '.[tpu]'` (see BUILD.md).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG [flags...]" >&2
  exit 2
fi
tpu="$1"; zone="$2"; config="$3"; shift 3
repo="${REPO:-~/rstar_jax}"
printf -v flags ' %q' "$@"
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd $repo && python -m rstar_jax.launch --distributed --config=$config$flags"
