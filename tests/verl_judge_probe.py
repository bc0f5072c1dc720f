"""Score a real batch with verl's own reward loop and our judge reward; run by tests/test_verl_judge_reward.py.

    .venv-verl/bin/python tests/verl_judge_probe.py CONFIG_JSON RESPONSES_JSON OUT_JSON

CONFIG_JSON is a recipe's composed config whose `reward.custom_reward_function` points at the
installed `diagnosis_zero/judge_reward.py` (`REWARD_PATH=...`, reward_kwargs naming the judge).
verl's RewardLoopManager starts RewardLoopWorker actors in a local Ray cluster; they load the file
by path with `get_custom_reward_fn` and the registered "naive" manager awaits our async
`compute_score`. The batch is scored twice, as the agent loop does (one trajectory per remote call)
and as a batch (`compute_rm_score`); the second time every verdict comes from the SQLite cache.
"""

import json
import sys
import uuid


def main(config_path: str, responses_path: str, out_path: str) -> int:
    import numpy as np
    import ray
    from omegaconf import OmegaConf
    from tensordict import TensorDict
    from verl import DataProto
    from verl.experimental.reward_loop import RewardLoopManager
    from verl.trainer.ppo.utils import create_rl_dataset
    from verl.utils import hf_tokenizer
    from verl.utils.dataset.rl_dataset import collate_fn
    from verl_reward_probe import tokenize_batch

    with open(config_path) as handle:
        config = OmegaConf.create(json.load(handle))
    with open(responses_path) as handle:
        responses = json.load(handle)
    model = config.actor_rollout_ref.model
    tokenizer = hf_tokenizer(model.tokenizer_path or model.path)
    dataset = create_rl_dataset(config.data.val_files, config.data, tokenizer, None, is_train=False)
    rows = [dataset[i] for i in range(len(responses))]
    columns = collate_fn(rows)
    prompts, response_ids, attention_mask = tokenize_batch(rows, responses, tokenizer)
    batch = DataProto(
        batch=TensorDict({"prompts": prompts, "responses": response_ids, "attention_mask": attention_mask},
                         batch_size=len(rows)),
        non_tensor_batch={key: columns[key] for key in ("data_source", "reward_model", "extra_info", "raw_prompt")}
        | {"uid": np.array([str(uuid.uuid4()) for _ in rows], dtype=object)},
    )

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        manager = RewardLoopManager(config)
        workers = manager.reward_loop_worker_handles
        per_item = ray.get([workers[i % len(workers)].compute_score.remote(batch[i:i + 1])
                            for i in range(len(batch))])
        scored = manager.compute_rm_score(batch)
    finally:
        ray.shutdown()
    extra_keys = list(scored.meta_info["reward_extra_keys"])
    report = {
        "per_item": [{"reward_score": item["reward_score"],
                      "reward_extra_info": {k: _plain(v) for k, v in item["reward_extra_info"].items()}}
                     for item in per_item],
        "rm_scores": scored.batch["rm_scores"].sum(dim=-1).tolist(),
        "reward_extra_keys": extra_keys,
        "batch_extra": {key: [_plain(v) for v in scored.non_tensor_batch[key]] for key in extra_keys},
    }
    with open(out_path, "w") as handle:
        json.dump(report, handle, indent=1)
    return 0


def _plain(value):
    return value.item() if hasattr(value, "item") else value


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
