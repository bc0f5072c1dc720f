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


def main(config_path: str, responses_path: str, out_path: str) -> int:
    from verl_reward_probe import build_batch, plain, score_both_ways

    config, _, _, _, batch = build_batch(config_path, responses_path)
    per_item, scored = score_both_ways(config, batch)
    extra_keys = list(scored.meta_info["reward_extra_keys"])
    report = {
        "per_item": [{"reward_score": item["reward_score"],
                      "reward_extra_info": {k: plain(v) for k, v in item["reward_extra_info"].items()}}
                     for item in per_item],
        "rm_scores": scored.batch["rm_scores"].sum(dim=-1).tolist(),
        "reward_extra_keys": extra_keys,
        "batch_extra": {key: [plain(v) for v in scored.non_tensor_batch[key]] for key in extra_keys},
    }
    with open(out_path, "w") as handle:
        json.dump(report, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
