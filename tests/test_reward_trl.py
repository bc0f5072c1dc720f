"""The TRL adapters inside a real GRPOTrainer step (tiny random Qwen2, CPU)."""

from __future__ import annotations

import pytest

from diagnosis_zero.reward import PRESETS, compute_score, make_trl_reward_funcs


def test_grpo_trainer_logs_each_reward_and_their_weighted_sum(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    truth = {"diagnosis": ["Gaucher disease type 1"], "orpha_id": "77259"}
    dataset = Dataset.from_list([
        {"prompt": [{"role": "user", "content": f"Case {i}: splenomegaly, bone crises. Diagnosis?"}],
         "data_source": "rare_arena", "reward_model": {"style": "rule", "ground_truth": truth},
         "extra_info": {"split": "train", "index": i}}
        for i in range(4)])
    funcs, weights = make_trl_reward_funcs(PRESETS["clinical"])
    scored: list[tuple[str, float]] = []

    def record(prompts, completions, **columns):  # what compute_score says about the same completions
        for completion in completions:
            text = completion[0]["content"]
            scored.append((text, compute_score("rare_arena", text, columns["reward_model"][0]["ground_truth"])["score"]))
        return [0.0] * len(completions)

    args = GRPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=8, logging_steps=1, report_to="none", save_strategy="no",
                      reward_weights=weights + [0.0], use_cpu=True, bf16=False, seed=0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    trainer = GRPOTrainer(model=model, reward_funcs=funcs + [record], args=args, train_dataset=dataset,
                          processing_class=tokenizer)
    trainer.train()
    logs = {k: v for entry in trainer.state.log_history for k, v in entry.items()}
    for name in ("accuracy", "format", "language"):
        assert f"rewards/{name}/mean" in logs
    assert {"accuracy", "format_rate", "think_rate", "mixed_language_rate"} <= set(logs)
    assert len(scored) == 4
    # TRL's reward is the weighted sum of the functions: it equals compute_score's mean score
    expected = sum(score for _, score in scored) / len(scored)
    assert logs["reward"] == pytest.approx(expected, abs=1e-5)
