#!/usr/bin/env bash
# Runs rstar_jax on GPU hosts: every host runs this same script with its own process id.
# Single host (all local GPUs in one process):  launch/gpu.sh CONFIG [flags...]
# Multi-host: on host i of N, with host 0 reachable at ADDR:PORT:
#   JAX_COORDINATOR_ADDRESS=ADDR:PORT JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i launch/gpu.sh CONFIG [flags...]
# Under SLURM or Open MPI, JAX detects all three itself; just run the script in every task.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 CONFIG [flags...]" >&2
  exit 2
fi
config="$1"; shift
# Let XLA use most of the GPU memory for weights, KV cache and optimizer state.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
distributed=()
if [ -n "${JAX_COORDINATOR_ADDRESS:-}" ] || [ -n "${SLURM_JOB_ID:-}" ] || [ -n "${OMPI_COMM_WORLD_SIZE:-}" ]; then
  distributed=(--distributed)
fi
exec python -m rstar_jax.launch "${distributed[@]}" --config="$config" "$@"
