"""Score a real batch with verl's own reward machinery; run by tests/test_verl.py in .venv-verl.

    .venv-verl/bin/python tests/verl_reward_probe.py CONFIG_JSON RESPONSES_JSON OUT_JSON

CONFIG_JSON is a recipe's composed config (`DRY_RUN=1 CONFIG_JSON=... recipes/verl/run_*.sh`);
RESPONSES_JSON a list of response texts, one per row of the config's val parquet, in order.
The path is verl 0.9.1's default (v1) trainer's: verl's dataset reads our parquet, a local Ray
cluster starts RewardLoopManager, whose RewardLoopWorker actors load our reward with
`get_custom_reward_fn` from `reward.custom_reward_function` and score through the registered
"naive" reward manager (keyword arguments, in an executor thread). Scores go both ways verl
sends them: one trajectory at a time to a worker (the agent loop) and as a batch
(`compute_rm_score`). The validation metrics come from the trainer's own `_val_metrics_update`.
Writes what verl produced to OUT_JSON; the test compares it with our compute_score.
"""

import json
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor


def tokenize_batch(rows: list[dict], responses: list[str], tokenizer):
    """Return (prompts, responses, attention_mask) laid out as verl's agent loop hands them to rewards."""
    import torch

    prompt_ids = [tokenizer.apply_chat_template(row["raw_prompt"].tolist() if hasattr(row["raw_prompt"], "tolist")
                                                else row["raw_prompt"], add_generation_prompt=True, tokenize=True,
                                                return_dict=False)
                  for row in rows]
    response_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                    for text in responses]
    prompt_width = max(len(ids) for ids in prompt_ids)
    response_width = max(len(ids) for ids in response_ids)
    pad = tokenizer.pad_token_id
    # Prompts are left-padded and responses right-padded, so [prompt | response] is contiguous.
    prompts = torch.tensor([[pad] * (prompt_width - len(ids)) + ids for ids in prompt_ids])
    responses_tensor = torch.tensor([ids + [pad] * (response_width - len(ids)) for ids in response_ids])
    prompt_mask = torch.tensor([[0] * (prompt_width - len(ids)) + [1] * len(ids) for ids in prompt_ids])
    response_mask = torch.tensor([[1] * len(ids) + [0] * (response_width - len(ids)) for ids in response_ids])
    return prompts, responses_tensor, torch.cat([prompt_mask, response_mask], dim=1)


def build_batch(config_path: str, responses_path: str):
    """Return (config, tokenizer, rows, columns, batch): the config's val rows with the responses, as a
    DataProto laid out as verl's agent loop hands it to rewards."""
    import numpy as np
    from omegaconf import OmegaConf
    from tensordict import TensorDict
    from verl import DataProto
    from verl.trainer.ppo.utils import create_rl_dataset
    from verl.utils import hf_tokenizer
    from verl.utils.dataset.rl_dataset import collate_fn

    with open(config_path) as handle:
        config = OmegaConf.create(json.load(handle))
    with open(responses_path) as handle:
        responses = json.load(handle)
    model = config.actor_rollout_ref.model
    tokenizer = hf_tokenizer(model.tokenizer_path or model.path)

    dataset = create_rl_dataset(config.data.val_files, config.data, tokenizer, None, is_train=False)
    assert len(dataset) >= len(responses), f"{len(dataset)} val rows for {len(responses)} responses"
    rows = [dataset[i] for i in range(len(responses))]
    columns = collate_fn(rows)
    prompts, response_ids, attention_mask = tokenize_batch(rows, responses, tokenizer)
    batch = DataProto(
        batch=TensorDict({"prompts": prompts, "responses": response_ids, "attention_mask": attention_mask},
                         batch_size=len(rows)),
        non_tensor_batch={key: columns[key] for key in ("data_source", "reward_model", "extra_info", "raw_prompt")}
        | {"uid": np.array([str(uuid.uuid4()) for _ in rows], dtype=object)},
    )
    return config, tokenizer, rows, columns, batch


def score_both_ways(config, batch):
    """Score `batch` with verl's RewardLoopManager in a local Ray cluster; return (per_item, scored)."""
    import ray
    from verl.experimental.reward_loop import RewardLoopManager

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        manager = RewardLoopManager(config)
        # Agent-loop style: one trajectory per remote call, spread over the workers.
        workers = manager.reward_loop_worker_handles
        per_item = ray.get([workers[i % len(workers)].compute_score.remote(batch[i:i + 1])
                            for i in range(len(batch))])
        # Batch style, as the trainer does with a colocated reward model.
        scored = manager.compute_rm_score(batch)
    finally:
        ray.shutdown()
    return per_item, scored


def main(config_path: str, responses_path: str, out_path: str) -> int:
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    config, tokenizer, rows, columns, batch = build_batch(config_path, responses_path)
    uids = batch.non_tensor_batch["uid"]
    prompts, response_ids = batch.batch["prompts"], batch.batch["responses"]
    attention_mask = batch.batch["attention_mask"]
    # What the naive manager decodes from the valid response tokens and passes as solution_str.
    valid_lengths = attention_mask[:, prompts.shape[1]:].sum(dim=1).tolist()
    solution_strs = [tokenizer.decode(ids[:length], skip_special_tokens=True)
                     for ids, length in zip(response_ids, valid_lengths, strict=True)]

    per_item, scored = score_both_ways(config, batch)

    rm_scores = scored.batch["rm_scores"]
    extra_keys = scored.meta_info["reward_extra_keys"]
    # The trainer's validation gathers {"reward": scores, <each reward_extra_info key>: values}.
    infos = {"reward": [item["reward_score"] for item in per_item]}
    for item in per_item:
        for key, value in item["reward_extra_info"].items():
            infos.setdefault(key, []).append(value)
    data_sources = columns["data_source"].tolist()
    expected_counts = {(str(source), str(uid)): 1 for source, uid in zip(data_sources, uids, strict=True)}
    # _val_metrics_update reads nothing from the trainer instance; calling it unbound keeps it verl's code.
    val_metrics = PPOTrainer._val_metrics_update(None, data_sources, uids.tolist(), infos, [],
                                                 expected_acc_counts=expected_counts)

    # verl's loader wraps our function; call it from many threads at once, as the executor may.
    reward_fn = get_custom_reward_fn(config)
    calls = [{"data_source": source, "solution_str": text, "ground_truth": row["reward_model"]["ground_truth"],
              "extra_info": {"index": i}} for i, (source, text, row) in
             enumerate(zip(data_sources, solution_strs, rows, strict=True))] * 50
    serial = [reward_fn(**call) for call in calls]
    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(lambda call: reward_fn(**call), calls))

    # reward.custom_reward_function.reward_kwargs reach our function: how a run picks the original matcher.
    original = OmegaConf.create(OmegaConf.to_container(config))
    original.reward.custom_reward_function.reward_kwargs = {"preset": "original"}
    original_fn = get_custom_reward_fn(original)
    original_scores = [original_fn(**call) for call in calls[:len(rows)]]

    # main_ppo never migrates the legacy top-level keys: with only those set, no custom reward loads.
    legacy = OmegaConf.create(OmegaConf.to_container(config))
    legacy.custom_reward_function = {"path": config.reward.custom_reward_function.path, "name": "compute_score"}
    legacy.reward.custom_reward_function.path = None

    report = {
        "solution_strs": solution_strs,
        "ground_truths": [json.loads(json.dumps(row["reward_model"]["ground_truth"], default=list)) for row in rows],
        "per_item": [{"reward_score": item["reward_score"],
                      "reward_extra_info": {k: plain(v) for k, v in item["reward_extra_info"].items()}}
                     for item in per_item],
        "rm_scores": rm_scores.tolist(),
        "valid_response_lengths": valid_lengths,
        "reward_extra_keys": list(extra_keys),
        "non_tensor_batch": {key: [plain(v) for v in scored.non_tensor_batch[key]] for key in extra_keys},
        "val_metrics": {key: float(value) for key, value in val_metrics.items()},
        "threads_agree": threaded == serial,
        "original_preset": original_scores,
        "legacy_keys_load_a_reward": get_custom_reward_fn(legacy) is not None,
    }
    with open(out_path, "w") as handle:
        json.dump(report, handle, indent=1)
    return 0


def plain(value):
    """Return a JSON-ready copy of a numpy scalar (what verl stores in its arrays)."""
    return value.item() if hasattr(value, "item") else value


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
