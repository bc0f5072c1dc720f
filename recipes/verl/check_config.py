"""Compose verl's `ppo_trainer` config with a recipe's overrides and validate it, without GPUs.

Run through a recipe (`DRY_RUN=1 recipes/verl/run_qwen2.5-1.5b.sh [overrides]`), with the
Python of an environment that has verl installed. The checks are verl's own, run early:
- Hydra composition, which rejects any key that is not in verl's schema;
- `verl.utils.config.validate_config`, what `main_ppo` runs before it starts Ray;
- the micro-batch split that verl asserts only inside its GPU workers, after the first rollout;
- conversion of each config section the trainer turns into a dataclass, whose `__post_init__`
  checks the values (the model section only when `actor_rollout_ref.model.path` is a local
  folder, since it loads the model's config and tokenizer).
It prints the composed config as YAML; `CONFIG_JSON=PATH` also writes it as JSON.
"""

import copy
import json
import os
import sys
import warnings


def compose(overrides: list[str]):
    """Return verl's ppo_trainer config with `overrides` applied, as `main_ppo` would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return hydra_compose(config_name="ppo_trainer", overrides=overrides)


def ref_as_actor(config):
    """Return the ref section renamed the way verl's engine worker does before building its dataclass."""
    from omegaconf import OmegaConf, open_dict

    ref = copy.deepcopy(config.actor_rollout_ref.ref)
    with open_dict(ref):
        ref.ppo_mini_batch_size = config.actor_rollout_ref.actor.ppo_mini_batch_size
        ref.ppo_micro_batch_size = ref.pop("log_prob_micro_batch_size", None)
        ref.ppo_micro_batch_size_per_gpu = ref.pop("log_prob_micro_batch_size_per_gpu", None)
        ref.use_dynamic_bsz = ref.pop("log_prob_use_dynamic_bsz", False)
        ref.ppo_max_token_len_per_gpu = ref.pop("log_prob_max_token_len_per_gpu", None)
    # Interpolations such as ${actor_rollout_ref.actor.strategy} need the whole tree to resolve.
    return OmegaConf.create(OmegaConf.to_container(ref, resolve=True))


def check_micro_batches(config) -> str:
    """Fail now on what verl only asserts inside its GPU workers: per-GPU batches split into micro-batches."""
    actor = config.actor_rollout_ref.actor
    n_gpus = config.trainer.n_gpus_per_node * config.trainer.nnodes
    responses = config.actor_rollout_ref.rollout.n
    splits = {
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu":
            (actor.ppo_mini_batch_size * responses // n_gpus, actor.ppo_micro_batch_size_per_gpu),
    }
    for role in ("ref", "rollout"):
        splits[f"actor_rollout_ref.{role}.log_prob_micro_batch_size_per_gpu"] = (
            config.data.train_batch_size * responses // n_gpus,
            config.actor_rollout_ref[role].log_prob_micro_batch_size_per_gpu)
    if actor.use_dynamic_bsz:
        return "micro-batches: dynamic batch size"
    for field, (per_gpu, micro) in splits.items():
        if micro and per_gpu % micro:
            raise SystemExit(f"error: {field}={micro} does not divide the {per_gpu} responses each GPU gets")
    return "micro-batches divide the per-GPU batches"


def validate(config) -> list[str]:
    """Run verl's start-up validation on `config`; return the names of the checks that ran."""
    from verl.trainer.ppo.reward import get_custom_reward_fn, resolve_reward_manager_cls
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config
    from verl.utils.device import auto_set_device

    auto_set_device(config)
    with warnings.catch_warnings():
        # need_critic warns that GRPO runs without a critic, which is the point.
        warnings.simplefilter("ignore", UserWarning)
        use_critic = need_critic(config)
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=use_critic)
    checks = ["hydra composition", "validate_config"]

    sections = {
        "actor_rollout_ref.actor": config.actor_rollout_ref.actor,
        "actor_rollout_ref.ref": ref_as_actor(config),
        "actor_rollout_ref.rollout": config.actor_rollout_ref.rollout,
        "actor_rollout_ref.rollout.checkpoint_engine": config.actor_rollout_ref.rollout.checkpoint_engine,
        "algorithm": config.algorithm,
    }
    if use_critic:
        sections["critic"] = config.critic
    if os.path.isdir(os.path.expanduser(config.actor_rollout_ref.model.path)):
        sections["actor_rollout_ref.model"] = config.actor_rollout_ref.model
    for name, section in sections.items():
        omega_conf_to_dataclass(section)
        checks.append(f"{name} -> dataclass")

    checks.append(check_micro_batches(config))

    # The reward section stays a DictConfig at run time (its RewardManagerConfig dataclass cannot
    # even be built in 0.9.1), so check it the way the reward loop worker uses it.
    manager = resolve_reward_manager_cls(config)
    checks.append(f"reward manager {config.reward.reward_manager.name!r} -> {manager.__name__}")
    function = config.reward.custom_reward_function
    try:
        reward_fn = get_custom_reward_fn(config)
    except RuntimeError as error:
        # verl hides the reason (in __cause__) behind "Error loading module"; name it.
        cause = error.__cause__ or error
        raise SystemExit(f"error: verl cannot load {function.path}: {type(cause).__name__}: {cause}") from error
    if reward_fn is None:
        raise SystemExit("error: reward.custom_reward_function.path is not set")
    checks.append(f"custom reward {function.name!r} loads from {function.path}")
    return checks


def main(argv: list[str]) -> int:
    from omegaconf import OmegaConf

    config = compose(argv)
    print(OmegaConf.to_yaml(config))
    checks = validate(config)
    json_path = os.environ.get("CONFIG_JSON")
    if json_path:
        with open(json_path, "w") as handle:
            json.dump(OmegaConf.to_container(config, resolve=True, throw_on_missing=False), handle, indent=1)
    for check in checks:
        print(f"ok: {check}", file=sys.stderr)
    print("verl config OK", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
