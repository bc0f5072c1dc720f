"""Greedy validation during training: the `val_*` metrics and `validation.jsonl` (docs/formats.md).

`validate` runs at step 0 and every `validation_steps` steps (the callback in `train_callbacks`),
with TRL's vLLM engine when `use_vllm` is on, else `generation.hf_generate_ids`; with tools, the
greedy tool loop of `train_tools.validate_with_tools`.
"""

from __future__ import annotations

from pathlib import Path

from diagnosis_zero import configs
from diagnosis_zero.generation import render_prompt
from diagnosis_zero.io import append_jsonl


def validate(trainer, cases: list[dict], recipe: configs.RecipeConfig, reward_config) -> dict[str, float]:
    """Return the `val_*` metrics of greedy decoding on `cases` with the current policy.

    Cases are split over the processes; each generates in batches sorted by prompt length (little
    padding), with TRL's vLLM engine when `use_vllm` is on, else with `generation.hf_generate_ids`,
    the decoding every verb uses. The completions go to `validation.jsonl` in the run folder.
    """
    from accelerate.utils import gather_object

    from diagnosis_zero import generation, reward
    from diagnosis_zero.train_tools import validate_with_tools

    accelerator = trainer.accelerator
    tokenizer = trainer.processing_class
    max_new_tokens = recipe.validation_max_tokens or trainer.args.max_completion_length
    mine = list(range(accelerator.process_index, len(cases), accelerator.num_processes))
    prompt_ids = [tokenizer(rendered_prompt(tokenizer, cases[i]), add_special_tokens=False)["input_ids"] for i in mine]
    tool_usage = None
    if recipe.tools:
        texts, completion_ids, tool_usage = validate_with_tools(trainer, [cases[i] for i in mine], recipe,
                                                                 max_new_tokens)
    elif trainer.args.use_vllm:
        completion_ids = greedy_vllm(trainer, prompt_ids, max_new_tokens)
    else:
        completion_ids = greedy_hf(trainer, prompt_ids, max_new_tokens, recipe.validation_batch_size)
    if tool_usage is None:
        completion_ids = [generation.without_eos(ids, trainer.eos_token_ids) for ids in completion_ids]
        texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        tool_usage = [0] * len(mine)
    local = [(i, recipe.assistant_prefix + text, len(ids), calls)
             for i, text, ids, calls in zip(mine, texts, completion_ids, tool_usage, strict=True)]
    gathered = gather_object(local)
    if not accelerator.is_main_process:
        return {}
    by_index = {i: (text, length, calls) for i, text, length, calls in gathered}
    completions = [by_index[i][0] for i in range(len(cases))]
    results = reward.score_batch(completions, reward_config,
                                 reward_model=[c["reward_model"] for c in cases],
                                 extra_info=[c["extra_info"] for c in cases])
    step = trainer.state.global_step
    with open(Path(trainer.args.output_dir) / generation.VALIDATION_FILE, "a", encoding="utf-8") as fh:
        append_jsonl(fh, [{"step": step, "id": c["extra_info"].get("id"), "completion": completions[i],
                           "num_tokens": by_index[i][1], "score": r["score"]}
                          for i, (c, r) in enumerate(zip(cases, results, strict=True))])
    n = len(results)
    tool_metrics = {}
    if recipe.tools:
        tool_metrics = {"val_tool_calls_per_completion": sum(by_index[i][2] for i in range(n)) / n,
                        "val_tool_use_rate": sum(by_index[i][2] > 0 for i in range(n)) / n}
    return {
        **tool_metrics,
        "val_score": sum(r["score"] for r in results) / n,
        "val_accuracy": sum(r["acc"] for r in results) / n,
        "val_format_rate": sum(r["format"] for r in results) / n,
        "val_think_rate": sum(r["think_present"] for r in results) / n,
        # think dropped: an answer but no think block (the one definition, metrics.think_dropped)
        "val_think_dropped_rate": sum(bool(r["pred"]) and not r["think_present"] for r in results) / n,
        "val_mixed_language_rate": sum(r["mixed_language"] for r in results) / n,
        "val_completion_length_mean": sum(by_index[i][1] for i in range(n)) / n,
    }


def rendered_prompt(tokenizer, case: dict) -> str:
    return render_prompt(tokenizer, case["prompt"])  # a prefilled turn is rendered already (load_split)


def greedy_hf(trainer, prompt_ids: list[list[int]], max_new_tokens: int, batch_size: int) -> list[list[int]]:
    import torch
    from trl.models.utils import unwrap_model_for_generation

    from diagnosis_zero.generation import hf_generate_ids

    with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                     gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
                                     gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs
                                     ) as model, torch.no_grad():
        was_training = model.training
        model.eval()  # no dropout: greedy decoding is then deterministic
        try:
            samples = hf_generate_ids(model, prompt_ids, pad_id=trainer.processing_class.pad_token_id,
                                      eos_ids=list(trainer.eos_token_ids), max_new_tokens=max_new_tokens,
                                      batch_size=batch_size)
        finally:
            if was_training:
                model.train()
    return [ids for [ids] in samples]


def greedy_vllm(trainer, prompt_ids: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy completions from TRL's own vLLM engine (colocate or server), synced to the policy."""
    generation = trainer.vllm_generation
    if trainer.state.global_step != getattr(trainer, "_last_loaded_step", None):
        generation.sync_weights()
        trainer._last_loaded_step = trainer.state.global_step
    saved = {name: getattr(generation, name) for name in
             ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_completion_length")}
    generation.temperature, generation.top_p, generation.top_k, generation.min_p = 0.0, 1.0, 0, None
    generation.repetition_penalty, generation.max_completion_length = 1.0, max_new_tokens
    try:
        _, completion_ids, _, _ = generation.generate(prompts=prompt_ids, images=None, num_generations=1)
    finally:
        for name, value in saved.items():
            setattr(generation, name, value)
    return [list(ids) for ids in completion_ids]
