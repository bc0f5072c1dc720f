"""`diagnosis-zero train`: a YAML recipe -> `GRPOConfig` -> TRL's `GRPOTrainer`. No GRPO loop of our own.

One step: TRL samples `num_generations` completions for each prompt, our reward functions score them
(`reward.make_trl_reward_funcs`), TRL turns rewards into group-normalised advantages and makes one
optimizer update. Around TRL's loop one callback adds what the project needs (`train_callbacks`):

- `metrics.jsonl`: one line per logged step (docs/formats.md), never a duplicate step on resume;
- greedy validation on the test split at step 0 and every `validation_steps` steps (`train_validation`);
- a sample of completions in `completions.jsonl`; live training-health warnings;
- Ctrl-C: finish the current step, save a checkpoint, exit cleanly; `--resume` continues from the
  last complete checkpoint (also after `kill -9`) with the same data order and RNG state.

With `tools` in the recipe, TRL runs the model's tool calls during rollouts (`train_tools`).
Here: planning (`plan_run`), the data, the reward functions, `train` and its summary. Every
configuration error is raised by `plan_run`, before any model is loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import signal
from pathlib import Path
from typing import Any

from diagnosis_zero import configs, train_cpu, train_tools
from diagnosis_zero.errors import ConfigError
from diagnosis_zero.generation import VALIDATION_FILE, render_prompt
from diagnosis_zero.train_callbacks import (  # noqa: F401 (METRIC_NAMES, SUMMARY_KEYS, metrics_row: train's API)
    COMPLETIONS_FILE,
    METRIC_NAMES,
    METRICS_FILE,
    SUMMARY_KEYS,
    RunState,
    format_summary,
    log_names_first,
    make_callback,
    make_run_file_callback,
    metrics_row,
    quiet_progress,
    truncate_log,
)

logger = logging.getLogger(__name__)

ACCEPTS_EXTRA_ARGS = True
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


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
        # bf16 autocast stays on where the CPU computes bf16 natively (AMX / AVX512-BF16); fp16 never does.
        keep_bf16 = bool(grpo_kwargs.get("bf16")) and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        if (grpo_kwargs.get("bf16") and not keep_bf16) or grpo_kwargs.get("fp16"):
            logger.info("no GPU: training in float32 on the CPU (%s turned off)",
                        "fp16" if keep_bf16 else "bf16/fp16")
        grpo_kwargs.update(use_cpu=True, bf16=keep_bf16, fp16=False)
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
            case["prompt"], text = train_tools.render_tool_prompt(tokenizer, case["prompt"], recipe)
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


# ---------------------------------------------------------------- validation


# ---------------------------------------------------------------- the run's own prompting


# ---------------------------------------------------------------- logs


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
    if plan.device == "cpu":
        train_cpu.score_completions_only()
        if state.num_processes > 1:
            train_cpu.load_indexed_cpu_locations(torch)
    # Data first: a problem with it shows before the (possibly slow) model conversion and loading.
    try:
        tokenizer = models.load_tokenizer(recipe.model, trust_remote_code=args.trust_remote_code)
    except OSError as exc:  # a hub id that is not cached while offline, a folder without a tokenizer
        raise ConfigError("model", f"cannot load the tokenizer of {recipe.model}: {exc}") from None
    if recipe.tools:
        train_tools.set_up_tools(recipe, tokenizer)
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
        reward_funcs, weights = train_tools.tool_reward_funcs(reward_funcs, weights, plan)
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
    callback = make_callback(run)
    trainer = GRPOTrainer(model=model_path, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                          processing_class=tokenizer, peft_config=peft_config,
                          callbacks=[make_run_file_callback(plan), callback], tools=train_tools.tool_funcs(recipe) or None)
    run.trainer = trainer
    log_names_first(trainer, callback)
    quiet_progress(trainer)

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
