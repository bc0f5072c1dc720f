#!/usr/bin/env bash
# GRPO on Qwen2.5-1.5B-Instruct with verl 0.9.1 on 4 GPUs: the original study's run (REFERENCE.md §1).
#   DATA_DIR=data/rare_arena recipes/verl/run_qwen2.5-1.5b.sh [hydra overrides...]
#   DRY_RUN=1 recipes/verl/run_qwen2.5-1.5b.sh      # check the config against verl's schema, no GPUs
# See recipes/verl/common.sh for the environment variables.
set -euo pipefail
MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-1.5B-Instruct}
N_GPUS=${N_GPUS:-4}
EXPERIMENT=${EXPERIMENT:-qwen2.5-1.5b-grpo}
# Responses per GPU per forward/backward pass: memory only, the update is the same.
MICRO_BATCH_PER_GPU=${MICRO_BATCH_PER_GPU:-8}
LOG_PROB_MICRO_BATCH_PER_GPU=${LOG_PROB_MICRO_BATCH_PER_GPU:-16}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
