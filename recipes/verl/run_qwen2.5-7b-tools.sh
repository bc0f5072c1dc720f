#!/usr/bin/env bash
# GRPO with tools on Qwen2.5-7B-Instruct, verl 0.9.1, 8 GPUs: the original run's recipe (common.sh)
# plus multi-turn rollouts in which the model may call search_by_phenotypes and disease_info
# (diagnosis_zero.tools, registered by diagnosis_tools.py). The reward scores the final turn only.
#   DATA_DIR=data/rare_arena recipes/verl/run_qwen2.5-7b-tools.sh [hydra overrides...]
#   DRY_RUN=1 PYTHON=.venv-verl/bin/python recipes/verl/run_qwen2.5-7b-tools.sh   # check, no GPUs
# Environment: as common.sh, plus MAX_TOOL_TURNS (default 4) and DIAGNOSIS_ZERO_ORPHANET (optional
# Orphanet files the tools read: en_product1.xml and/or orphanet_hypernym.json, joined by ':').
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-7B-Instruct}
N_GPUS=${N_GPUS:-8}
EXPERIMENT=${EXPERIMENT:-qwen2.5-7b-grpo-tools}
MICRO_BATCH_PER_GPU=${MICRO_BATCH_PER_GPU:-4}
LOG_PROB_MICRO_BATCH_PER_GPU=${LOG_PROB_MICRO_BATCH_PER_GPU:-8}
MAX_TOOL_TURNS=${MAX_TOOL_TURNS:-4}
PYTHON=${PYTHON:-python3}
if [[ -z ${REWARD_PATH:-} ]]; then
  # The final-turn reward: tool results (full of disease names) are never scored as the answer.
  if ! REWARD_PATH=$("$PYTHON" -c 'import importlib.util; print(importlib.util.find_spec("diagnosis_zero.tool_use").origin)'); then
    echo "error: diagnosis_zero is not importable by $PYTHON: run 'pip install diagnosis-zero' in your verl environment (or set PYTHON)" >&2
    exit 2
  fi
fi
if [[ ${DRY_RUN:-0} == 1 ]]; then
  # verl's own loader registers the tools (schemas from the docstrings) and calls each once.
  "$PYTHON" "$HERE/check_tools.py" "$HERE/diagnosis_tools.py"
fi
# Applied before the caller's overrides, which common.sh puts last.
set -- \
  actor_rollout_ref.rollout.multi_turn.enable=True \
  actor_rollout_ref.rollout.multi_turn.function_tool_path="$HERE/diagnosis_tools.py" \
  actor_rollout_ref.rollout.multi_turn.format=hermes \
  actor_rollout_ref.rollout.multi_turn.max_assistant_turns="$MAX_TOOL_TURNS" \
  actor_rollout_ref.rollout.multi_turn.max_parallel_calls=2 \
  actor_rollout_ref.rollout.multi_turn.max_tool_response_length=512 \
  actor_rollout_ref.rollout.multi_turn.tool_response_truncate_side=right \
  actor_rollout_ref.rollout.agent.default_agent_loop=tool_agent \
  reward.custom_reward_function.name=compute_score_final_turn \
  "$@"
source "$HERE/common.sh"
