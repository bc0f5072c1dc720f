"""`diagnosis-zero train`: a YAML recipe -> `GRPOConfig` -> TRL's `GRPOTrainer`. No GRPO loop of our own.

One step: TRL samples `num_generations` completions for each prompt, our reward functions score them
(`reward.make_trl_reward_funcs`), TRL turns rewards into group-normalised advantages and makes one
optimizer update. Around TRL's loop one callback adds what the project needs:

- `metrics.jsonl`: one line per logged step (docs/formats.md), never a duplicate step on resume;
- greedy validation on the test split at step 0 and every `validation_steps` steps;
- a sample of completions in `completions.jsonl`; live training-health warnings;
- Ctrl-C: finish the current step, save a checkpoint, exit cleanly; `--resume` continues from the
  last complete checkpoint (also after `kill -9`) with the same data order and RNG state.

Every configuration error is raised by `plan_run`, before any model is loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from diagnosis_zero import configs
from diagnosis_zero.errors import ConfigError
from diagnosis_zero.generation import VALIDATION_FILE, render_prompt
from diagnosis_zero.io import append_jsonl, read_jsonl, write_text_atomic

logger = logging.getLogger(__name__)

ACCEPTS_EXTRA_ARGS = True
METRICS_FILE = "metrics.jsonl"
COMPLETIONS_FILE = "completions.jsonl"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")

# TRL log key -> metrics.jsonl key (docs/formats.md); other finite numbers keep TRL's names. The
# callback renames TRL's logs in place before the reporting integrations see them, so TensorBoard
# (as `train/KEY`), W&B and the others show metrics.jsonl's names too.
METRIC_NAMES = {
    "reward": "reward_mean",
    "completions/mean_length": "completion_length_mean",
    "completions/clipped_ratio": "clipped_ratio",
}
# Keys of TRL's end-of-training summary, which is not a step.
SUMMARY_KEYS = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Any other `--field VALUE` (a recipe or GRPOConfig field) arrives in `args.extra_args` and is
    # parsed by TRL's own parser in `configs.split_fields`; argparse must not expand `--re` to `--resume`.
    parser.allow_abbrev = False
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = configs.describe_fields()
    parser.add_argument("--recipe", default=None,
                        help="recipe name (demo, qwen2.5-7b-instruct, qwen2.5-7b-instruct-original, ...) or a "
                        "YAML path (default: demo)")
    parser.add_argument("--model", default=None,
                        help="model: local HF folder, hub id or bundled:smollm2-135m-instruct")
    parser.add_argument("--data", default=None, help="folder with train.parquet/test.parquet from `prepare`")
    parser.add_argument("--output-dir", default=None, help="run folder (default: outputs/RECIPE)")
    parser.add_argument("--max-steps", default=None, help="stop after N optimizer steps")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint in the output dir")
    parser.add_argument("--reward-preset", default=None, help="clinical (default) or original")


def run(args) -> int:
    tokens = list(getattr(args, "extra_args", None) or [])
    for name in ("model", "data", "output_dir", "max_steps", "reward_preset"):
        value = getattr(args, name, None)
        if value is not None:  # the named flags win over the same field given among the others
            tokens.append(f"--{name}={value}")
    plan = plan_run(args.recipe, tokens, resume=args.resume)
    summary = train(plan)
    if summary["main_process"]:  # one summary per run, not one per process
        print(format_summary(summary))
    return 130 if summary["interrupted"] else 0


# ---------------------------------------------------------------- planning (no model loading)

@dataclasses.dataclass
class TrainPlan:
    recipe: configs.RecipeConfig
    args: Any  # trl.GRPOConfig
    recipe_path: Path
    output_dir: Path
    resume_from: Path | None
    reward_config: Any  # reward.RewardConfig
    device: str
    judge_config: Any = None  # judge_reward.JudgeRewardConfig when the recipe sets `judge_reward`


def plan_run(recipe_spec: str | None, overrides: configs.Overrides, *, resume: bool = False) -> TrainPlan:
    """Check the recipe, data, model spec, output dir and resume state; return what `train` needs.

    Raises ConfigError naming the field for anything that cannot work. Loads no model.
    """
    import torch

    from diagnosis_zero import models, reward

    mapping, recipe_path = configs.load_recipe(recipe_spec)
    recipe, grpo_kwargs = configs.split_fields(mapping, overrides, str(recipe_path))
    configs.check_recipe(recipe)

    if recipe.reward_preset not in reward.PRESETS:
        raise ConfigError("reward_preset", f"unknown preset {recipe.reward_preset!r}; choose one of "
                          f"{', '.join(reward.PRESETS)}")
    reward_config = reward.resolve_config(preset=recipe.reward_preset, **_reward_overrides(recipe))
    judge_config = None
    if recipe.judge_reward:
        from diagnosis_zero import judge_reward

        judge_config = judge_reward.check_recipe(recipe.judge_reward, reward_config, grpo_kwargs.get("reward_weights"))

    if recipe.data is not None:
        data_dir = Path(os.path.expanduser(recipe.data))
        if not data_dir.is_dir():
            raise ConfigError("data", f"data folder not found: {recipe.data}")
        for split in ("train", "test") if recipe.validation_steps else ("train",):
            if not (data_dir / f"{split}.parquet").is_file():
                raise ConfigError("data", f"{data_dir / (split + '.parquet')} is missing "
                                  "(create it with `diagnosis-zero prepare`)")
        if recipe.template is not None:
            logger.warning("template %r is ignored: the prompts in %s were built by `prepare`",
                           recipe.template, data_dir)
    elif recipe.template is not None:
        from diagnosis_zero import data

        data.resolve_template(recipe.template)
    models.check_model_spec(recipe.model)

    output_dir = Path(grpo_kwargs.get("output_dir") or Path("outputs") / recipe_path.stem)
    grpo_kwargs["output_dir"] = str(output_dir)
    resume_from = last_checkpoint(output_dir)
    if resume and resume_from is None:
        raise ConfigError("resume", f"no complete checkpoint-N folder in {output_dir} to resume from")
    if not resume:
        previous = previous_run_files(output_dir)
        if previous:
            raise ConfigError("output_dir", (
                f"{output_dir} already holds a run ({', '.join(previous[:3])}); pass --resume to continue it, "
                "or choose another --output-dir"))
        resume_from = None

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        if grpo_kwargs.get("use_vllm"):
            raise ConfigError("use_vllm", "vLLM needs a CUDA GPU; on CPU pass --use-vllm false")
        if grpo_kwargs.get("bf16") or grpo_kwargs.get("fp16"):
            logger.info("no GPU: training in float32 on the CPU (bf16/fp16 turned off)")
        grpo_kwargs.update(use_cpu=True, bf16=False, fp16=False)
    if grpo_kwargs.get("use_vllm"):
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise ConfigError("use_vllm", "vLLM is not installed: pip install 'diagnosis-zero[vllm]', "
                              "or pass --use-vllm false")
    _check_report_to(grpo_kwargs.get("report_to"))
    if recipe.tools and recipe.max_tool_calls is not None:
        grpo_kwargs["max_tool_calling_iterations"] = recipe.max_tool_calls
    configs.derive_batch(recipe, grpo_kwargs, configs.world_size())
    grpo_args = _grpo_config(grpo_kwargs)
    return TrainPlan(recipe=recipe, args=grpo_args, recipe_path=recipe_path, output_dir=output_dir,
                     resume_from=resume_from, reward_config=reward_config, device=device,
                     judge_config=judge_config)


def _reward_overrides(recipe: configs.RecipeConfig) -> dict:
    from diagnosis_zero import reward

    known = {f.name for f in dataclasses.fields(reward.RewardConfig)}
    for name in recipe.reward_levels:
        if name not in known:
            raise ConfigError(f"reward_levels.{name}", f"not a RewardConfig field; fields: {', '.join(sorted(known))}")
    return dict(recipe.reward_levels)


def _check_report_to(report_to) -> None:
    import importlib.util

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    modules = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow",
               "comet_ml": "comet_ml", "clearml": "clearml", "neptune": "neptune"}
    for name in names:
        if name in modules and importlib.util.find_spec(modules[name]) is None:
            raise ConfigError("report_to", f"{name} is not installed (pip install {modules[name]}), or pick another")


def _grpo_config(kwargs: dict):
    from trl import GRPOConfig

    try:
        return GRPOConfig(**kwargs)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        named = [name for name in sorted(kwargs, key=len, reverse=True) if name in message]
        raise ConfigError(named[0] if named else "recipe", message) from None


def last_checkpoint(output_dir: Path) -> Path | None:
    """Return the newest complete `checkpoint-N` folder, or None.

    A checkpoint is complete once its `trainer_state.json` (written last by transformers) parses;
    a folder left half-written by `kill -9` is skipped.
    """
    if not output_dir.is_dir():
        return None
    found = []
    for path in output_dir.iterdir():
        match = CHECKPOINT_RE.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    for _, path in sorted(found, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            logger.warning("skipping incomplete checkpoint %s", path)
            continue
        return path
    return None


def previous_run_files(output_dir: Path) -> list[str]:
    if not output_dir.is_dir():
        return []
    return sorted(p.name for p in output_dir.iterdir()
                  if p.name in (METRICS_FILE, COMPLETIONS_FILE) or CHECKPOINT_RE.match(p.name))


# ---------------------------------------------------------------- data

def prepared_data_dir(recipe: configs.RecipeConfig) -> Path:
    """Return the data folder: `recipe.data`, or `recipe.rarearena_file` / HPO demo cases prepared once
    into the cache (the main process prepares, the others wait and read it)."""
    if recipe.data is not None:
        return Path(os.path.expanduser(recipe.data))
    from diagnosis_zero import data, hpo_cases, models

    template = recipe.template or "r1-zero"
    template_text = data.resolve_template(template)
    if recipe.rarearena_file is not None:
        source = Path(os.path.expanduser(recipe.rarearena_file)).resolve()
        stat = source.stat()
        # The key covers all that changes the prepared cases: the file, the prompt, the length filter.
        key = hashlib.sha256(json.dumps([str(source), stat.st_size, stat.st_mtime_ns, template_text,
                                         recipe.max_prompt_tokens, recipe.model]).encode()).hexdigest()[:10]
        target = models.cache_dir() / "data" / f"rarearena-{source.stem}-{key}"
    else:
        # The key covers all that changes the cases: count, seed, prompt, generator and hpo3 versions.
        target = models.cache_dir() / "data" / hpo_cases.cache_name(
            recipe.demo_cases, recipe.demo_seed, template_text, max_phenotypes=recipe.demo_max_phenotypes,
            distractors=recipe.demo_distractors)
    with _main_process_first():
        if not (target / "train.parquet").is_file() or not (target / "test.parquet").is_file():
            if recipe.rarearena_file is not None:
                logger.info("preparing %s in %s", source, target)
                tokenizer = recipe.model if recipe.max_prompt_tokens is not None else None
                summary = data.prepare_rarearena(source, target, template=template,
                                                 max_prompt_tokens=recipe.max_prompt_tokens, tokenizer=tokenizer)
                logger.info("prepared data:\n%s", summary.format())
            else:
                logger.info("preparing %d HPO demo cases in %s", recipe.demo_cases, target)
                data.prepare_hpo(target, num_cases=recipe.demo_cases, seed=recipe.demo_seed, template=template,
                                 progress=False, max_phenotypes=recipe.demo_max_phenotypes,
                                 distractors=recipe.demo_distractors)
    return target


def _main_process_first():
    """Under accelerate/torchrun, let the main process prepare the data while the others wait."""
    if configs.world_size() == 1:
        return contextlib.nullcontext()
    from accelerate import PartialState

    return PartialState().main_process_first()


def load_split(data_dir: Path, split: str, tokenizer, recipe: configs.RecipeConfig) -> list[dict]:
    """Return the split's rows in TRL's shape: `prompt` (chat messages, or the rendered text when an
    assistant prefix is set), `reward_model`, `extra_info`, `data_source`; too-long prompts dropped."""
    from diagnosis_zero import data

    rows = []
    dropped = 0
    for case in data.load_cases(data_dir / f"{split}.parquet"):
        if recipe.tools:
            from diagnosis_zero import tool_use

            # The tool system message and the tools' schemas in the template (render_prompt has neither).
            case["prompt"] = tool_use.tool_prompt(case["prompt"])
            text = tokenizer.apply_chat_template(case["prompt"], tokenize=False, add_generation_prompt=True,
                                                 tools=_tool_funcs(recipe)) + recipe.assistant_prefix
        else:
            text = render_prompt(tokenizer, case["prompt"], recipe.assistant_prefix)
        too_long = recipe.max_prompt_tokens is not None and \
            len(tokenizer(text, add_special_tokens=False)["input_ids"]) > recipe.max_prompt_tokens
        if too_long:
            dropped += 1
            continue
        rows.append({
            # TRL renders chat messages itself; a prefilled assistant turn needs the rendered text.
            "prompt": text if recipe.assistant_prefix else case["prompt"],
            "reward_model": {"style": "rule", "ground_truth": {"diagnosis": case["references"],
                                                                "orpha_id": case["orpha_id"]}},
            "extra_info": {"split": case["split"], "index": case["index"], "id": case["id"]},
            "data_source": case["data_source"],
        })
    if dropped:
        logger.warning("%s: dropped %d prompts over %d tokens", split, dropped, recipe.max_prompt_tokens)
    if not rows:
        raise ConfigError("data", f"{data_dir / (split + '.parquet')} has no usable cases")
    return rows


# ---------------------------------------------------------------- rewards

def make_reward_funcs(reward_config, assistant_prefix: str, on_batch=None, judge_config=None):
    """Return (TRL reward functions, weights): `reward.make_trl_reward_funcs` scoring prefix + completion,
    or with `judge_config` the judge reward's (`judge_reward.make_trl_reward_funcs`, its `judge` async).

    `on_batch(prompts, completions, columns)` is called once per generation batch (completions prefixed),
    e.g. to sample completions for `completions.jsonl`.
    """
    import inspect

    from diagnosis_zero import reward

    if judge_config is not None:
        from diagnosis_zero import judge_reward

        funcs, weights = judge_reward.make_trl_reward_funcs(reward_config, judge_config)
    else:
        funcs, weights = reward.make_trl_reward_funcs(reward_config)
    first_sync = next(func for func in funcs if not inspect.iscoroutinefunction(func))
    wrapped = []
    for func in funcs:
        if inspect.iscoroutinefunction(func):  # TRL awaits it on its event loop
            async def scored(prompts=None, completions=(), _func=func, **columns):
                if assistant_prefix:
                    completions = [_prefixed(c, assistant_prefix) for c in completions]
                return await _func(prompts=prompts, completions=completions, **columns)
        else:
            def scored(prompts=None, completions=(), _func=func, _first=func is first_sync, **columns):
                if assistant_prefix:
                    completions = [_prefixed(c, assistant_prefix) for c in completions]
                values = _func(prompts=prompts, completions=completions, **columns)
                if _first and on_batch is not None:
                    on_batch(prompts, completions, columns)
                return values

        scored.__name__ = scored.__qualname__ = func.__name__  # TRL logs rewards/<name>/mean
        wrapped.append(scored)
    return wrapped, weights


def _prefixed(completion, prefix: str):
    if isinstance(completion, str):
        return prefix + completion
    messages = [dict(m) for m in completion]
    if messages:
        messages[0]["content"] = prefix + (messages[0].get("content") or "")
    return messages


def completion_text(completion) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion)


# ---------------------------------------------------------------- validation

def validate(trainer, cases: list[dict], recipe: configs.RecipeConfig, reward_config) -> dict[str, float]:
    """Return the `val_*` metrics of greedy decoding on `cases` with the current policy.

    Cases are split over the processes; each generates in batches sorted by prompt length (little
    padding), with TRL's vLLM engine when `use_vllm` is on, else with `generation.hf_generate_ids`,
    the decoding every verb uses. The completions go to `validation.jsonl` in the run folder.
    """
    from accelerate.utils import gather_object

    from diagnosis_zero import generation, reward

    accelerator = trainer.accelerator
    tokenizer = trainer.processing_class
    max_new_tokens = recipe.validation_max_tokens or trainer.args.max_completion_length
    mine = list(range(accelerator.process_index, len(cases), accelerator.num_processes))
    prompt_ids = [tokenizer(_rendered(tokenizer, cases[i]), add_special_tokens=False)["input_ids"] for i in mine]
    tool_usage = None
    if recipe.tools:
        texts, completion_ids, tool_usage = _validate_with_tools(trainer, [cases[i] for i in mine], recipe,
                                                                 max_new_tokens)
    elif trainer.args.use_vllm:
        completion_ids = _greedy_vllm(trainer, prompt_ids, max_new_tokens)
    else:
        completion_ids = _greedy_hf(trainer, prompt_ids, max_new_tokens, recipe.validation_batch_size)
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


def _tool_funcs(recipe: configs.RecipeConfig) -> list:
    from diagnosis_zero import tools

    return tools.resolve_tools(recipe.tools)


def _validate_with_tools(trainer, cases: list[dict], recipe: configs.RecipeConfig, max_new_tokens: int):
    """Return (final answers, completion token ids, tool calls) of greedy tool loops (`tool_use.run_tool_loop`).

    One case at a time: each turn depends on the previous tool result. The token ids are those of all the
    model's turns, the final answer is the last turn's text.
    """
    from diagnosis_zero import tool_use

    tokenizer = trainer.processing_class
    funcs = _tool_funcs(recipe)
    answers, ids_out, calls = [], [], []
    for case in cases:
        produced: list[int] = []

        def generate(messages, produced=produced):
            text = tokenizer.apply_chat_template(messages, tools=funcs, tokenize=False, add_generation_prompt=True)
            prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids = _greedy_hf(trainer, [prompt], max(1, max_new_tokens - len(produced)), 1)[0]
            produced.extend(ids)
            return tokenizer.decode(ids, skip_special_tokens=True)

        trajectory = tool_use.run_tool_loop(generate, case["prompt"], funcs, recipe.max_tool_calls or 4)
        answers.append(trajectory["final_answer"])
        ids_out.append(produced)
        calls.append(len(trajectory["calls"]))
    return answers, ids_out, calls


def _rendered(tokenizer, case: dict) -> str:
    return render_prompt(tokenizer, case["prompt"])  # a prefilled turn is rendered already (load_split)


def _greedy_hf(trainer, prompt_ids: list[list[int]], max_new_tokens: int, batch_size: int) -> list[list[int]]:
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


def _greedy_vllm(trainer, prompt_ids: list[list[int]], max_new_tokens: int) -> list[list[int]]:
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


# ---------------------------------------------------------------- the run's own prompting

def run_file(plan: TrainPlan) -> dict:
    """Return the run's resolved recipe and prompting, as saved in the run folder and each checkpoint.

    `prompting` is what `evaluate`, `browse`, `diagnose` and `evaluate-mcq` default to for this run
    (docs/formats.md): the template of the demo data (None when `prepare` built the prompts), the
    assistant prefix, and validation's generation length.
    """
    from diagnosis_zero import __version__

    recipe, args = plan.recipe, plan.args
    template = None if recipe.data is not None else (recipe.template or "r1-zero")
    grpo = {name: getattr(args, name) for name in
            ("max_completion_length", "temperature", "top_p", "top_k", "repetition_penalty", "num_generations",
             "max_steps", "learning_rate", "beta", "use_vllm", "output_dir")}
    return {
        "diagnosis_zero": __version__, "recipe_path": str(plan.recipe_path),
        "recipe": dataclasses.asdict(recipe), "grpo": grpo,
        "prompting": {"model": recipe.model, "template": template, "assistant_prefix": recipe.assistant_prefix,
                      "max_new_tokens": recipe.validation_max_tokens or args.max_completion_length,
                      "temperature": 0.0},
    }


def _make_run_file_callback(plan: TrainPlan):
    """Return a callback writing the run file into the run folder now and into each checkpoint it saves."""
    from transformers import TrainerCallback

    from diagnosis_zero.generation import RUN_FILE

    text = json.dumps(run_file(plan), indent=2, ensure_ascii=False, default=str) + "\n"

    class RunFileCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                write_text_atomic(plan.output_dir / RUN_FILE, text)

        def on_save(self, args, state, control, **kwargs):
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and checkpoint.is_dir():
                write_text_atomic(checkpoint / RUN_FILE, text)

    return RunFileCallback()


# ---------------------------------------------------------------- logs

def metric_name(key: str) -> str:
    """Return the metrics.jsonl name of a TRL log key (docs/formats.md); our own names map to themselves."""
    if key.startswith("rewards/") and key.endswith("/mean"):
        return key[:-len("/mean")]
    if key.startswith("rewards/") and key.endswith("/std"):
        return key[:-len("/std")] + "_std"
    return METRIC_NAMES.get(key, key)


def rename_logs(logs: dict) -> None:
    """Rename TRL's log keys in place to metrics.jsonl's names (for the loggers that read `logs` next)."""
    for key in list(logs):
        name = metric_name(key)
        if name != key:
            logs[name] = logs.pop(key)


def metrics_row(logs: dict, step: int, elapsed: float) -> dict:
    """Return the metrics.jsonl line for TRL's `logs` at `step` (docs/formats.md names; no NaN)."""
    row: dict[str, Any] = {"step": step}
    for key, value in logs.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        row[metric_name(key)] = value
    row["time"] = round(elapsed, 3)
    return row


def read_rows(path: Path) -> list[dict]:
    """Return the JSON objects of a JSON Lines log (io.read_jsonl's torn-tail policy; other bad lines
    are skipped with a warning: the log is rewritten from the good ones on resume)."""
    if not path.is_file():
        return []
    lines = read_jsonl(path, skip_bad=True)
    for error in lines.bad_lines:
        logger.warning("%s (line skipped)", error)
    return lines.records


def truncate_log(path: Path, last_step: int) -> list[dict]:
    """Keep only lines with step <= last_step (steps after the checkpoint are redone); return them."""
    rows = read_rows(path)
    kept = [row for row in rows if isinstance(row.get("step"), int) and row["step"] <= last_step]
    if path.is_file() and (len(kept) != len(rows) or path.read_bytes()[-1:] not in (b"", b"\n")):
        write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept))
    return kept


def _make_callback(run: RunState):
    from transformers import TrainerCallback

    class DiagnosisZeroCallback(TrainerCallback):
        """metrics.jsonl, validation, completion samples, health warnings and Ctrl-C, around TRL's loop."""

        def on_train_begin(self, args, state, control, **kwargs):
            if state.global_step == 0 and run.recipe.validation_steps:
                row = {"step": 0, **run.validate(), "time": round(run.elapsed(), 3)}
                if state.is_world_process_zero:
                    run.write_row(row)

        def on_step_end(self, args, state, control, **kwargs):
            step = state.global_step
            if state.is_world_process_zero:
                run.write_samples(step)
            every = run.recipe.validation_steps
            if every and (step % every == 0 or step == state.max_steps):
                run.pending_validation = run.validate()
                control.should_log = True  # the validation joins this step's metrics line
            if step == state.max_steps:
                control.should_save = True  # always end with a checkpoint
            if run.stop_requested(run.trainer):
                control.should_save = True
                control.should_training_stop = True
                run.interrupted = True
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs if logs is not None else {}
            if not state.is_world_process_zero or SUMMARY_KEYS & set(logs):
                return
            # In place, before the reporting callbacks (see _log_names_first): TensorBoard and the
            # others log metrics.jsonl's names, validation included.
            rename_logs(logs)
            if run.pending_validation:
                logs.update(run.pending_validation)
                run.pending_validation = None
            row = metrics_row(logs, state.global_step, run.elapsed())
            run.write_row(row)
            if "reward_mean" in row:
                logger.info("step %d: reward %.3f, format %.2f, think %.2f, accuracy %.2f, %.0f tokens, %.1f s",
                            row["step"], row["reward_mean"], row.get("format_rate", math.nan),
                            row.get("think_rate", math.nan), row.get("accuracy", math.nan),
                            row.get("completion_length_mean", math.nan), row.get("step_time", math.nan))

    return DiagnosisZeroCallback()


class RunState:
    """What the callback and the reward wrapper share during one `train` call."""

    def __init__(self, plan: TrainPlan, val_cases: list[dict], rows: list[dict]):
        from diagnosis_zero import health

        self.plan = plan
        self.recipe = plan.recipe
        self.val_cases = val_cases
        self.rows = rows
        self.last_step = max((row["step"] for row in rows), default=-1)
        self.time_offset = max((row.get("time", 0.0) for row in rows), default=0.0)
        self.started = time.monotonic()
        self.pending_validation: dict | None = None
        self.samples: list[dict] = []
        self.samples_step = -1
        self.trainer = None
        self.interrupted = False
        self.sigint = False
        self.health_raised: set = set()
        health.new_flags(rows, self.health_raised)  # already reported in an earlier session

    def elapsed(self) -> float:
        return self.time_offset + time.monotonic() - self.started

    def validate(self) -> dict:
        if not self.val_cases:
            return {}
        began = time.monotonic()
        metrics = validate(self.trainer, self.val_cases, self.recipe, self.plan.reward_config)
        if metrics:
            logger.info("validation at step %d: score %.3f, accuracy %.3f, format %.3f (%.0f s)",
                        self.trainer.state.global_step, metrics["val_score"], metrics["val_accuracy"],
                        metrics["val_format_rate"], time.monotonic() - began)
        return metrics

    def write_row(self, row: dict) -> None:
        from diagnosis_zero import health

        if row["step"] <= self.last_step:
            return
        with open(self.plan.output_dir / METRICS_FILE, "a", encoding="utf-8") as fh:
            append_jsonl(fh, [row])
        self.last_step = row["step"]
        self.rows.append(row)
        for flag in health.new_flags(self.rows, self.health_raised):
            logger.warning("training health: %s", flag)

    def on_reward_batch(self, prompts, completions, columns) -> None:
        """Keep a few scored completions of the batch being generated (for step global_step + 1)."""
        every = self.recipe.completions_log_steps
        state = columns.get("trainer_state")
        step = (state.global_step if state is not None else 0) + 1
        if not every or not (step == 1 or step % every == 0):
            return
        from diagnosis_zero import reward

        count = min(self.recipe.completions_log_count, len(completions))
        picks = [round(k * (len(completions) - 1) / max(count - 1, 1)) for k in range(count)]
        results = reward.score_batch(completions, self.plan.reward_config,
                                     **{k: v for k, v in columns.items() if k in ("reward_model", "extra_info")})
        self.samples = []
        for i in dict.fromkeys(picks):
            truth = columns["reward_model"][i]["ground_truth"]
            result = results[i]
            self.samples.append({
                "step": step, "id": columns["extra_info"][i].get("id"),
                "prompt": prompts[i] if prompts is not None else None,
                "completion": completion_text(completions[i]), "references": list(truth["diagnosis"]),
                "orpha_id": truth["orpha_id"], "score": result["score"], "acc": result["acc"],
                "format": result["format"], "think_present": result["think_present"],
                "mixed_language": result["mixed_language"], "prediction": result["pred"],
            })
            if columns.get("tool_completions") is not None:  # tool rollouts: the whole conversation too
                self.samples[-1]["trajectory"] = list(columns["tool_completions"][i])
        self.samples_step = step

    def write_samples(self, step: int) -> None:
        if self.samples and self.samples_step == step:
            with open(self.plan.output_dir / COMPLETIONS_FILE, "a", encoding="utf-8") as fh:
                append_jsonl(fh, self.samples)
        self.samples = []

    def stop_requested(self, trainer) -> bool:
        """True once Ctrl-C was pressed on any process (all processes stop at the same step)."""
        if trainer is None or trainer.accelerator.num_processes == 1:
            return self.sigint
        import torch

        flag = torch.tensor([1.0 if self.sigint else 0.0], device=trainer.accelerator.device)
        return bool(trainer.accelerator.reduce(flag, reduction="sum").item() > 0)


# ---------------------------------------------------------------- training

def train(plan: TrainPlan) -> dict:
    """Run GRPO for `plan`; return the summary that `format_summary` prints."""
    import torch
    from accelerate import PartialState
    from peft import LoraConfig
    from trl import GRPOTrainer

    from diagnosis_zero import models

    recipe, args = plan.recipe, plan.args
    output_dir = plan.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    # Under torchrun/accelerate every process runs this; only the main one writes the logs, and it
    # builds the shared caches (demo data, converted bundled model) before the others read them.
    state = PartialState()
    if plan.device == "cpu" and state.num_processes > 1:
        _load_indexed_cpu_locations(torch)
    # Data first: a problem with it shows before the (possibly slow) model conversion and loading.
    try:
        tokenizer = models.load_tokenizer(recipe.model, trust_remote_code=args.trust_remote_code)
    except OSError as exc:  # a hub id that is not cached while offline, a folder without a tokenizer
        raise ConfigError("model", f"cannot load the tokenizer of {recipe.model}: {exc}") from None
    if recipe.tools:
        from diagnosis_zero import tool_use, tools

        if recipe.orphanet:
            tools.configure(orphanet=[os.path.expanduser(p) for p in recipe.orphanet])
        logger.info("tools %s with the %s chat template", ", ".join(recipe.tools),
                    tool_use.ensure_tool_template(tokenizer))
    with state.main_process_first():
        data_dir = prepared_data_dir(recipe)
    train_rows = load_split(data_dir, "train", tokenizer, recipe)
    val_cases = []
    if recipe.validation_steps:
        val_cases = load_split(data_dir, "test", tokenizer, recipe)[:recipe.validation_max_cases]

    rows: list[dict] = []
    if plan.resume_from is not None and state.is_main_process:
        step = json.loads((plan.resume_from / "trainer_state.json").read_text())["global_step"]
        rows = truncate_log(output_dir / METRICS_FILE, step)
        truncate_log(output_dir / COMPLETIONS_FILE, step)
        truncate_log(output_dir / VALIDATION_FILE, step)
        logger.info("resuming from %s (step %d)", plan.resume_from, step)
    run = RunState(plan, val_cases, rows)
    with state.main_process_first():
        model_path = models.resolve_model(recipe.model)

    from datasets import Dataset

    train_dataset = Dataset.from_list(train_rows)
    reward_funcs, weights = make_reward_funcs(plan.reward_config, recipe.assistant_prefix, run.on_reward_batch,
                                              plan.judge_config)
    if recipe.tools:
        reward_funcs, weights = _tool_reward_funcs(reward_funcs, weights, plan)
    if args.reward_weights is None:
        args.reward_weights = weights
    model_init_kwargs = {"dtype": _dtype(recipe, args, plan.device, torch)}
    model_init_kwargs.update(args.model_init_kwargs or {})
    args.model_init_kwargs = model_init_kwargs
    peft_config = None
    if recipe.use_peft:
        targets = recipe.lora_target_modules
        peft_config = LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
                                 target_modules=targets[0] if targets == ["all-linear"] else targets,
                                 task_type="CAUSAL_LM")
    callback = _make_callback(run)
    trainer = GRPOTrainer(model=model_path, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                          processing_class=tokenizer, peft_config=peft_config,
                          callbacks=[_make_run_file_callback(plan), callback], tools=_tool_funcs(recipe) or None)
    run.trainer = trainer
    _log_names_first(trainer, callback)
    _quiet_progress(trainer)

    def on_sigint(signum, frame):
        run.sigint = True
        logger.warning("Ctrl-C: saving a checkpoint after this step, then stopping (Ctrl-C again aborts)")
        signal.signal(signal.SIGINT, previous_handler)

    previous_handler = signal.signal(signal.SIGINT, on_sigint)
    try:
        trainer.train(resume_from_checkpoint=str(plan.resume_from) if plan.resume_from else None)
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    return {
        "rows": run.rows, "output_dir": str(output_dir), "interrupted": run.interrupted,
        "checkpoint": str(last_checkpoint(output_dir) or ""), "device": plan.device,
        "logging_dir": (os.environ.get("TENSORBOARD_LOGGING_DIR") or str(output_dir / "runs"))
        if "tensorboard" in (args.report_to or []) else None,
        "completions": str(output_dir / COMPLETIONS_FILE) if (output_dir / COMPLETIONS_FILE).is_file() else None,
        "global_step": trainer.state.global_step, "main_process": state.is_main_process,
    }


def _tool_reward_funcs(reward_funcs, weights, plan: TrainPlan):
    """Return the reward functions on the final answer, the optional tool shaping, and the tool metrics."""
    from diagnosis_zero import reward, tool_use

    recipe = plan.recipe

    def accuracies(answers, columns):
        kept = {k: v for k, v in columns.items() if k in ("reward_model", "extra_info")}
        return [r["acc"] for r in reward.score_batch(answers, plan.reward_config, **kept)]

    return tool_use.make_tool_reward_funcs(reward_funcs, weights, free_tool_calls=recipe.free_tool_calls,
                                           tool_call_cost=recipe.tool_call_cost,
                                           tool_format_penalty=recipe.tool_format_penalty, score=accuracies)


def _load_indexed_cpu_locations(torch) -> None:
    """Let torch.load map to "cpu:N". On several CPU processes accelerate's device is torch.device("cpu", 0)
    and transformers loads the optimizer state with that map_location on resume, which torch rejects
    ("don't know how to restore data location ... cpu:0"); CPU memory has no index, so it is the CPU."""
    if getattr(_load_indexed_cpu_locations, "done", False):
        return

    def deserialize(storage, location: str):
        return storage if location.startswith("cpu:") else None

    torch.serialization.register_package(30, lambda storage: None, deserialize)
    _load_indexed_cpu_locations.done = True


def _log_names_first(trainer, callback) -> None:
    """Put our callback first, so its on_log renames TRL's keys before the reporting integrations
    (TensorBoard, W&B, ...) log them: Trainer puts those before the `callbacks` it is given."""
    trainer.callback_handler.callbacks.remove(callback)
    trainer.callback_handler.callbacks.insert(0, callback)


def _quiet_progress(trainer) -> None:
    """Keep TRL's progress bar (steps, ETA) but not its dump of every metric after each step; our
    callback logs one short line per step instead, and metrics.jsonl has everything."""
    from transformers.trainer_callback import ProgressCallback

    class QuietProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    if any(isinstance(cb, ProgressCallback) for cb in trainer.callback_handler.callbacks):
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(QuietProgress())


def _dtype(recipe: configs.RecipeConfig, args, device: str, torch):
    """Return the weights dtype for `dtype: auto`.

    Full fine-tuning keeps float32 master weights (bf16/fp16 then only autocast the compute, as verl's
    FSDP mixed precision does): in bf16 weights an AdamW update at lr 3e-7 is below bf16's resolution
    and is lost. A frozen LoRA base can be half precision: bf16/fp16 when mixed precision is on, and
    bf16 on a CPU with native bf16 (AMX / AVX512-BF16), where it is 2-3x faster than float32.
    """
    if recipe.dtype != "auto":
        return getattr(torch, recipe.dtype)
    if recipe.use_peft:
        if args.bf16 or (device == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return torch.bfloat16
        if args.fp16:
            return torch.float16
    return torch.float32


def format_summary(summary: dict) -> str:
    """Return the end-of-run summary: first/last step reward, format rate, accuracy; output paths."""
    steps = [row for row in summary["rows"] if row["step"] >= 1 and "reward_mean" in row]
    lines = []
    status = "interrupted (resume with --resume)" if summary["interrupted"] else "done"
    if steps:
        durations = sorted(b["time"] - a["time"] for a, b in zip(steps, steps[1:], strict=False) if b["step"] == a["step"] + 1)
        per_step = f", {durations[len(durations) // 2]:.1f} s/step" if durations else ""
        lines.append(f"training {status}: {steps[-1]['step']} steps on {summary['device']} in "
                     f"{steps[-1]['time']:.0f} s{per_step}")
        head, tail = steps[:5], steps[-5:]
        lines.append(f"{'':22}{'step ' + str(steps[0]['step']):>10}{'step ' + str(steps[-1]['step']):>10}"
                     f"{'first 5':>10}{'last 5':>10}")
        for key in ("reward_mean", "format_rate", "accuracy"):
            first, last = steps[0].get(key), steps[-1].get(key)
            lines.append(f"  {key:20}{_num(first):>10}{_num(last):>10}{_num(_mean(head, key)):>10}"
                         f"{_num(_mean(tail, key)):>10}")
    else:
        lines.append(f"training {status}: no step finished")
    validations = [row for row in summary["rows"] if "val_score" in row]
    if validations:
        lines.append(f"  validation score: step {validations[0]['step']} {validations[0]['val_score']:.3f}"
                     f" -> step {validations[-1]['step']} {validations[-1]['val_score']:.3f}"
                     f" (format {validations[0]['val_format_rate']:.2f} -> {validations[-1]['val_format_rate']:.2f})")
    output_dir = Path(summary["output_dir"])
    lines.append("outputs:")
    lines.append(f"  metrics      {output_dir / METRICS_FILE}")
    if summary["completions"]:
        lines.append(f"  completions  {summary['completions']}")
    if summary["checkpoint"]:
        lines.append(f"  checkpoint   {summary['checkpoint']}")
    if summary["logging_dir"]:
        lines.append(f"  tensorboard  tensorboard --logdir {summary['logging_dir']}")
    return "\n".join(lines)


def _mean(rows: list[dict], key: str) -> float | None:
    values = [row[key] for row in rows if key in row]
    return sum(values) / len(values) if values else None


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"
