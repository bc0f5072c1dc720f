# Sourced by run_qwen2.5-*.sh, which set MODEL_PATH, N_GPUS, EXPERIMENT, MICRO_BATCH_PER_GPU and
# LOG_PROB_MICRO_BATCH_PER_GPU first. The original study's GRPO run (REFERENCE.md §1) as verl 0.9.1
# Hydra overrides; the keys are those of verl/trainer/config/ppo_trainer.yaml in verl 0.9.1.
#
# Environment:
#   PYTHON      the verl environment's Python (default: python3)
#   DATA_DIR    output dir of `diagnosis-zero prepare` holding train.parquet, test.parquet
#   OUTPUT_DIR  checkpoints and validation generations (default: runs/verl/$EXPERIMENT)
#   REWARD_PATH our reward file (default: diagnosis_zero/reward.py of the installed package)
#   DRY_RUN=1   compose and validate the config against verl's schema, print it, launch nothing
# Extra arguments are Hydra overrides, applied after these, e.g. trainer.logger=[console,wandb].

PYTHON=${PYTHON:-python3}
DATA_DIR=$(realpath -m "${DATA_DIR:-data/rare_arena}")
OUTPUT_DIR=$(realpath -m "${OUTPUT_DIR:-runs/verl/$EXPERIMENT}")
if [[ -z ${REWARD_PATH:-} ]]; then
  # find_spec locates reward.py without running it; verl itself loads the file by path.
  if ! REWARD_PATH=$("$PYTHON" -c 'import importlib.util; print(importlib.util.find_spec("diagnosis_zero.reward").origin)'); then
    echo "error: diagnosis_zero is not importable by $PYTHON: run 'pip install diagnosis-zero' in your verl environment (or set PYTHON)" >&2
    exit 2
  fi
fi

OVERRIDES=(
  # GRPO: advantage (r - group mean) / (group std + 1e-6); no critic.
  algorithm.adv_estimator=grpo
  algorithm.norm_adv_by_std_in_grpo=True
  # KL only as a loss term (below), none in the reward.
  algorithm.use_kl_in_reward=False

  data.train_files="$DATA_DIR/train.parquet"
  data.val_files="$DATA_DIR/test.parquet"
  data.prompt_key=prompt
  data.reward_fn_key=data_source
  # 8 prompts a step; with rollout.n=16 that is 128 responses.
  data.train_batch_size=8
  data.max_prompt_length=1024
  data.max_response_length=1024
  # `prepare --max-prompt-tokens 1024` already drops long prompts; this guards other data.
  data.filter_overlong_prompts=True
  data.truncation=error

  actor_rollout_ref.model.path="$MODEL_PATH"
  actor_rollout_ref.model.enable_gradient_checkpointing=True
  actor_rollout_ref.model.use_remove_padding=True

  # AdamW, lr 3e-7 constant with no warm-up, weight decay 0.01, gradient clip 1.0. The engine
  # clips with optim.clip_grad; actor.grad_clip is a field no 0.9.1 code path reads.
  actor_rollout_ref.actor.optim.lr=3e-7
  actor_rollout_ref.actor.optim.lr_scheduler_type=constant
  actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.0
  actor_rollout_ref.actor.optim.weight_decay=0.01
  actor_rollout_ref.actor.optim.clip_grad=1.0
  # Mini-batch = the whole step's 8 prompts (x16 responses): one optimizer step per step.
  actor_rollout_ref.actor.ppo_mini_batch_size=8
  actor_rollout_ref.actor.ppo_epochs=1
  # Micro-batches only split the forward/backward for memory (gradients accumulate).
  actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu="$MICRO_BATCH_PER_GPU"
  actor_rollout_ref.actor.use_kl_loss=True
  actor_rollout_ref.actor.kl_loss_coef=0.001
  actor_rollout_ref.actor.kl_loss_type=low_var_kl
  actor_rollout_ref.actor.entropy_coeff=0.001
  actor_rollout_ref.actor.clip_ratio=0.2
  actor_rollout_ref.actor.clip_ratio_low=0.2
  actor_rollout_ref.actor.clip_ratio_high=0.2
  # verl 0.1 averaged the policy loss over all response tokens of a micro-batch.
  actor_rollout_ref.actor.loss_agg_mode=token-mean
  # verl 0.1's param/grad/optimizer offload: 0.9.1 has no separate grad_offload; param_offload
  # moves the FSDP parameter shards (gradients are freed after each step) off the GPU.
  actor_rollout_ref.actor.fsdp_config.param_offload=True
  actor_rollout_ref.actor.fsdp_config.optimizer_offload=True
  actor_rollout_ref.ref.fsdp_config.param_offload=True
  actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu="$LOG_PROB_MICRO_BATCH_PER_GPU"

  actor_rollout_ref.rollout.name=vllm
  actor_rollout_ref.rollout.tensor_model_parallel_size=1
  actor_rollout_ref.rollout.gpu_memory_utilization=0.6
  actor_rollout_ref.rollout.n=16
  actor_rollout_ref.rollout.do_sample=True
  actor_rollout_ref.rollout.temperature=1.0
  actor_rollout_ref.rollout.top_p=1.0
  actor_rollout_ref.rollout.top_k=-1
  actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu="$LOG_PROB_MICRO_BATCH_PER_GPU"
  # Validation: greedy, one sample per test case.
  actor_rollout_ref.rollout.val_kwargs.do_sample=False
  actor_rollout_ref.rollout.val_kwargs.temperature=0
  actor_rollout_ref.rollout.val_kwargs.top_p=1.0
  actor_rollout_ref.rollout.val_kwargs.n=1

  # Our reward, through verl's naive reward manager. These are the keys main_ppo reads in 0.9.1;
  # the legacy top-level custom_reward_function.* keys are accepted but silently ignored.
  reward.custom_reward_function.path="$REWARD_PATH"
  reward.custom_reward_function.name=compute_score
  reward.reward_manager.name=naive

  trainer.project_name=diagnosis-zero
  trainer.experiment_name="$EXPERIMENT"
  trainer.logger=[console,tensorboard]
  trainer.nnodes=1
  trainer.n_gpus_per_node="$N_GPUS"
  trainer.total_epochs=5
  # Validate before training (step 0) and every 10 steps; a checkpoint every 50.
  trainer.val_before_train=True
  trainer.test_freq=10
  trainer.save_freq=50
  trainer.default_local_dir="$OUTPUT_DIR/checkpoints"
  trainer.validation_data_dir="$OUTPUT_DIR/validation"
)

if [[ ${DRY_RUN:-0} == 1 ]]; then
  exec "$PYTHON" "$(dirname "${BASH_SOURCE[0]}")/check_config.py" "${OVERRIDES[@]}" "$@"
fi

for split in train test; do
  if [[ ! -f $DATA_DIR/$split.parquet ]]; then
    echo "error: $DATA_DIR/$split.parquet not found: run 'diagnosis-zero prepare --output-dir $DATA_DIR ...' or set DATA_DIR" >&2
    exit 2
  fi
done
export TENSORBOARD_DIR=${TENSORBOARD_DIR:-$OUTPUT_DIR/tensorboard}
exec "$PYTHON" -m verl.trainer.main_ppo "${OVERRIDES[@]}" "$@"
