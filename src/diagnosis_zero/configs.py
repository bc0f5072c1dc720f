"""Training recipes: our fields (model, data, reward, LoRA, validation) plus every `GRPOConfig` field.

A recipe is one flat YAML mapping, as in open-r1: each key is either a `RecipeConfig` field below or
a field of TRL's `GRPOConfig` (which extends transformers' `TrainingArguments`). A command-line
override uses the same name (`--learning-rate 1e-5` or `--learning_rate=1e-5`). Precedence, lowest
first: `GRPO_DEFAULTS`, the recipe file, the command line. An unknown key is an error that names it.

Everything here is checked before any model is loaded, so a bad recipe fails in a second, not after
a minute of loading weights.
"""

import dataclasses
import difflib
import enum
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diagnosis_zero.errors import ConfigError

# Repository checkout layout (`pip install -e .`): src/diagnosis_zero/configs.py -> recipes/
RECIPES_DIR = Path(os.environ.get("DIAGNOSIS_ZERO_RECIPES") or Path(__file__).resolve().parents[2] / "recipes")
DEFAULT_RECIPE = "demo"


@dataclass
class RecipeConfig:
    """Our recipe fields; everything else in a recipe goes to `GRPOConfig`."""

    model: str = field(default="bundled:smollm2-135m-instruct", metadata={
        "help": "model to train: a local HF folder, a hub id, or bundled:smollm2-135m-instruct (offline)"})
    dtype: str = field(default="auto", metadata={
        "help": "weights dtype: float32, bfloat16, float16, or auto: float32 master weights for full "
                "fine-tuning (bf16/fp16 then autocast the compute); a frozen LoRA base in bf16 when bf16 is "
                "on or the CPU has native bf16 (AMX/AVX512-BF16)"})
    data: str | None = field(default=None, metadata={
        "help": "folder with train.parquet and test.parquet from `diagnosis-zero prepare`; when unset, "
                "HPO demo cases are prepared automatically and cached"})
    demo_cases: int = field(default=200, metadata={
        "help": "number of HPO demo cases to prepare when `data` is unset"})
    demo_seed: int = field(default=0, metadata={"help": "seed for sampling the HPO demo cases"})
    template: str | None = field(default=None, metadata={
        "help": "prompt template (a name from diagnosis_zero.data.TEMPLATES) for the automatically "
                "prepared demo data; unset = the data module's default (the original study's prompt)"})
    assistant_prefix: str = field(default="", metadata={
        "help": "text that opens the assistant turn before sampling, e.g. '<think>' as in DeepSeek-R1-Zero's "
                "own template; the reward scores prefix + completion, so a prefilled tag counts"})
    max_prompt_tokens: int | None = field(default=1024, metadata={
        "help": "drop training and validation prompts longer than this many tokens after the chat "
                "template (the original study dropped prompts over 1024 tokens); null keeps all"})
    reward_preset: str = field(default="clinical", metadata={
        "help": "reward preset: clinical (default) or original (the study's seed matcher, 1.0/0.1/0.0)"})
    reward_levels: dict = field(default_factory=dict, metadata={
        "help": "overrides of diagnosis_zero.reward.RewardConfig fields on top of the preset, e.g. "
                "{format_tag_credit: 0.1}"})
    judge_reward: dict = field(default_factory=dict, metadata={
        "help": "LLM-judge reward (docs/train.md): fields of diagnosis_zero.judge_reward.JudgeRewardConfig, e.g. "
                "{base_url: http://127.0.0.1:8000/v1, judge_model: Qwen/Qwen2.5-72B-Instruct, orphanet: "
                "orphanet_hypernym.json}; empty = the rule reward only"})
    use_peft: bool = field(default=False, metadata={"help": "train a LoRA adapter instead of all weights"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (the update is scaled by alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout probability"})
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"], metadata={
        "help": "module names that get LoRA adapters; ['all-linear'] = every linear layer but lm_head"})
    prompts_per_step: int | None = field(default=None, metadata={
        "help": "prompts per optimizer step (the original study: 8); when set, gradient_accumulation_steps "
                "is derived so that one step = prompts_per_step x num_generations completions and one "
                "optimizer update, whatever the number of GPUs"})
    validation_steps: int = field(default=10, metadata={
        "help": "greedy validation on the test split every N optimizer steps, and at step 0; 0 = off"})
    validation_max_cases: int | None = field(default=None, metadata={
        "help": "validate on the first N test cases only; null = the whole test split"})
    validation_batch_size: int = field(default=32, metadata={
        "help": "prompts per generate() call during validation (per process)"})
    validation_max_tokens: int | None = field(default=None, metadata={
        "help": "max new tokens for validation; null = max_completion_length"})
    completions_log_steps: int = field(default=10, metadata={
        "help": "append a sample of completions to completions.jsonl every N steps (and at step 1); 0 = off"})
    completions_log_count: int = field(default=4, metadata={
        "help": "completions per sample in completions.jsonl"})
    demo_distractors: int = field(default=0, metadata={
        "help": "HPO demo cases: unrelated findings (phenotypes of other diseases) added to each vignette, so "
                "that a phenotype search over the same annotations cannot simply look the case up"})
    demo_max_phenotypes: int = field(default=12, metadata={
        "help": "HPO demo cases: at most this many of the disease's own phenotypes per vignette (5-12 sampled)"})
    tools: list[str] = field(default_factory=list, metadata={
        "help": "tools the policy may call during rollouts (TRL GRPOTrainer tools=): search_by_phenotypes, "
                "disease_info (diagnosis_zero.tools); empty = no tools"})
    max_tool_calls: int | None = field(default=None, metadata={
        "help": "with tools: at most this many tool-calling turns per completion (TRL's "
                "max_tool_calling_iterations; a turn may hold several calls); null = until the length limit"})
    free_tool_calls: int = field(default=2, metadata={
        "help": "with tools: calls per completion that cost nothing under tool_call_cost"})
    tool_call_cost: float = field(default=0.0, metadata={
        "help": "with tools: reward subtracted per call beyond free_tool_calls (0 = no shaping)"})
    tool_format_penalty: float = field(default=0.0, metadata={
        "help": "with tools: reward subtracted per malformed <tool_call> (0 = no shaping)"})
    orphanet: list[str] = field(default_factory=list, metadata={
        "help": "with tools: Orphanet files the tools read: en_product1.xml (synonyms) and/or "
                "orphanet_hypernym.json (parents); see diagnosis_zero.tools.configure"})


# Our defaults for GRPOConfig fields (a recipe or the command line overrides them).
GRPO_DEFAULTS: dict[str, Any] = {
    "logging_steps": 1,          # metrics.jsonl gets one line per optimizer step
    "report_to": ["tensorboard"],
    "save_strategy": "steps",
    "save_steps": 50,
    "disable_tqdm": False,
}

TRUE_WORDS = {"true", "yes", "on", "1"}
FALSE_WORDS = {"false", "no", "off", "0"}


def recipe_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(RecipeConfig)}


def grpo_fields() -> dict[str, dataclasses.Field]:
    from trl import GRPOConfig

    return {f.name: f for f in dataclasses.fields(GRPOConfig) if f.init}


def _field_type(f: dataclasses.Field, owner) -> Any:
    if isinstance(f.type, str):
        try:
            return typing.get_type_hints(owner)[f.name]
        except Exception:  # a forward reference we cannot resolve: accept values as they are
            return Any
    return f.type


def _flatten(tp) -> list:
    """Return the alternatives of a (possibly Optional/Union/Literal) annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return [alt for arg in typing.get_args(tp) for alt in _flatten(arg)]
    if origin is typing.Literal:
        return [("literal", value) for value in typing.get_args(tp)]
    return [tp]


def _kind(alt) -> Any:
    """Map an annotation alternative onto a basic kind: None, bool, int, float, str, dict, list or Any."""
    if isinstance(alt, tuple):                       # Literal value
        return type(alt[1])
    if alt is type(None):
        return None
    origin = typing.get_origin(alt) or alt
    if origin in (bool, int, float, str, dict, list):
        return origin
    if isinstance(origin, type) and issubclass(origin, enum.Enum):
        return str
    return Any


def _list_item_type(tp) -> Any:
    for alt in _flatten(tp):
        if (typing.get_origin(alt) or alt) is list:
            args = typing.get_args(alt)
            return args[0] if args else Any
    return Any


def coerce(name: str, tp, value, *, from_text: bool, source: str | None = None):
    """Return `value` converted to the annotation `tp`, or raise ConfigError naming the field.

    `from_text` is True for command-line strings, which are parsed; recipe values are checked, and
    strings in number fields are parsed too (YAML reads `3e-7` as a string).
    """
    kinds = {_kind(alt) for alt in _flatten(tp)}
    expected = ", ".join(sorted("null" if k is None else getattr(k, "__name__", "any") for k in kinds))

    def fail(reason: str):
        raise ConfigError(name, reason, source)

    if Any in kinds and not from_text:
        return value
    if isinstance(value, str) and (from_text or str not in kinds):
        text = value.strip()
        lowered = text.lower()
        # "none" is a real value of some string fields (report_to, scale_rewards); "null" never is.
        if None in kinds and (lowered in ("null", "~") or (lowered == "none" and str not in kinds)):
            return None
        if bool in kinds and lowered in TRUE_WORDS | FALSE_WORDS and not (int in kinds and lowered in ("0", "1")):
            return lowered in TRUE_WORDS
        if int in kinds:
            try:
                return int(text)
            except ValueError:
                pass
        if float in kinds:
            try:
                return float(text)
            except ValueError:
                pass
        if (dict in kinds and text.startswith("{")) or (list in kinds and text.startswith("[")):
            import yaml

            try:
                parsed = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                fail(f"cannot parse {text!r}: {exc}")
            return coerce(name, tp, parsed, from_text=False, source=source)
        if list in kinds and not (str in kinds and "," not in text):
            item_type = _list_item_type(tp)
            items = [part.strip() for part in text.split(",") if part.strip()]
            return [coerce(name, item_type, item, from_text=True, source=source) for item in items]
        if str in kinds or Any in kinds:
            return value
        fail(f"expected {expected}, got {value!r}")
    if value is None:
        if None in kinds:
            return None
        fail(f"expected {expected}, got null")
    if isinstance(value, bool):
        if bool in kinds:
            return value
        fail(f"expected {expected}, got {value!r}")
    if isinstance(value, int):
        if int in kinds:
            return value
        if float in kinds:
            return float(value)
        fail(f"expected {expected}, got {value!r}")
    if isinstance(value, float):
        if float in kinds:
            return value
        if int in kinds and value.is_integer():
            return int(value)
        fail(f"expected {expected}, got {value!r}")
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if dict in kinds:
            return value
        fail(f"expected {expected}, got a mapping")
    if isinstance(value, list):
        if list in kinds and not (str in kinds and "," not in text):
            item_type = _list_item_type(tp)
            return [coerce(name, item_type, item, from_text=False, source=source) for item in value]
        fail(f"expected {expected}, got a list")
    fail(f"expected {expected}, got {type(value).__name__}")


def _unknown(name: str, known, source: str | None) -> ConfigError:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(name, f"unknown recipe field{hint}; see `diagnosis-zero train --help`", source)


def resolve_recipe_path(spec: str | None) -> Path:
    """Return the YAML file for a recipe name (`demo`, `qwen2.5-7b-instruct`) or path."""
    spec = spec or DEFAULT_RECIPE
    path = Path(os.path.expanduser(spec))
    if path.suffix in (".yaml", ".yml") or os.sep in spec:
        if not path.is_file():
            raise ConfigError("recipe", f"recipe file not found: {spec}")
        return path
    candidate = RECIPES_DIR / f"{spec}.yaml"
    if not candidate.is_file():
        names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []
        raise ConfigError("recipe", f"no recipe named '{spec}' in {RECIPES_DIR}; available: {', '.join(names)}")
    return candidate


def load_recipe(spec: str | None) -> tuple[dict, Path]:
    """Return the recipe's key/value mapping and its path."""
    import yaml

    path = resolve_recipe_path(spec)
    try:
        mapping = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        from diagnosis_zero.errors import InputFileError

        raise InputFileError(path, None if line is None else line + 1, None, f"not valid YAML: {exc}") from None
    if not isinstance(mapping, dict):
        raise ConfigError("recipe", f"{path}: expected a mapping of field: value, got {type(mapping).__name__}")
    return mapping, path


def parse_override_args(tokens: list[str]) -> dict[str, str | None]:
    """Parse `--name value`, `--name=value` and bare `--flag` tokens into {field_name: text}.

    A bare flag maps to None, which `split_fields` turns into True for boolean fields. Dashes in
    names become underscores, so `--learning-rate` and `--learning_rate` are the same field.
    """
    overrides: dict[str, str | None] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or token == "--":
            raise ConfigError(token, "unexpected argument; options look like --field value")
        name, eq, text = token[2:].partition("=")
        name = name.replace("-", "_")
        if eq:
            overrides[name] = text
            i += 1
            continue
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if nxt is not None and not (nxt.startswith("--") and len(nxt) > 2 and not _is_number(nxt)):
            overrides[name] = nxt
            i += 2
        else:
            overrides[name] = None
            i += 1
    return overrides


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def split_fields(recipe: dict, overrides: dict[str, str | None], recipe_source: str | None
                 ) -> tuple[RecipeConfig, dict[str, Any]]:
    """Return (RecipeConfig, GRPOConfig keyword arguments) from a recipe mapping and CLI overrides.

    Raises ConfigError naming the first unknown or ill-typed field.
    """
    ours = recipe_fields()
    theirs = grpo_fields()
    from trl import GRPOConfig

    recipe_kwargs: dict[str, Any] = {}
    grpo_kwargs: dict[str, Any] = dict(GRPO_DEFAULTS)
    known = [*ours, *theirs]
    layers = [(recipe, False, recipe_source), (overrides, True, "command line")]
    for mapping, from_text, source in layers:
        for raw_name, value in mapping.items():
            name = str(raw_name).replace("-", "_") if from_text else str(raw_name)
            if name in ours:
                owner, target, fld = RecipeConfig, recipe_kwargs, ours[name]
            elif name in theirs:
                owner, target, fld = GRPOConfig, grpo_kwargs, theirs[name]
            else:
                raise _unknown(name, known, source)
            tp = _field_type(fld, owner)
            if from_text and value is None:
                if bool not in {_kind(alt) for alt in _flatten(tp)}:
                    raise ConfigError(name, "expects a value", source)
                value = "true"
            target[name] = coerce(name, tp, value, from_text=from_text, source=source)
    return RecipeConfig(**recipe_kwargs), grpo_kwargs


def check_recipe(recipe: RecipeConfig) -> None:
    """Raise ConfigError for recipe values that cannot work (choices, ranges)."""
    if recipe.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ConfigError("dtype", f"expected auto, float32, bfloat16 or float16, got {recipe.dtype!r}")
    for name in ("demo_cases", "lora_r", "lora_alpha", "validation_batch_size", "completions_log_count"):
        if getattr(recipe, name) < 1:
            raise ConfigError(name, f"must be at least 1, got {getattr(recipe, name)}")
    for name in ("validation_steps", "completions_log_steps"):
        if getattr(recipe, name) < 0:
            raise ConfigError(name, f"must be 0 (off) or more, got {getattr(recipe, name)}")
    for name in ("prompts_per_step", "validation_max_cases", "max_prompt_tokens", "validation_max_tokens"):
        value = getattr(recipe, name)
        if value is not None and value < 1:
            raise ConfigError(name, f"must be at least 1 or null, got {value}")
    if not 0.0 <= recipe.lora_dropout < 1.0:
        raise ConfigError("lora_dropout", f"must be in [0, 1), got {recipe.lora_dropout}")
    if recipe.demo_distractors < 0 or recipe.demo_max_phenotypes < 1:
        bad = "demo_distractors" if recipe.demo_distractors < 0 else "demo_max_phenotypes"
        raise ConfigError(bad, f"out of range: {getattr(recipe, bad)}")
    _check_tools(recipe)


def _check_tools(recipe: RecipeConfig) -> None:
    from diagnosis_zero.tools import TOOLS

    for name in recipe.tools:
        if name not in TOOLS:
            raise ConfigError("tools", f"unknown tool {name!r}; available: {', '.join(TOOLS)}")
    if recipe.max_tool_calls is not None and recipe.max_tool_calls < 1:
        raise ConfigError("max_tool_calls", f"must be at least 1 or null, got {recipe.max_tool_calls}")
    for name in ("free_tool_calls", "tool_call_cost", "tool_format_penalty"):
        if getattr(recipe, name) < 0:
            raise ConfigError(name, f"must be 0 or more, got {getattr(recipe, name)}")
    if recipe.tools and recipe.assistant_prefix:
        raise ConfigError("assistant_prefix", "cannot be used with tools: TRL runs tool calls on chat prompts, "
                          "which cannot prefill the assistant turn; set assistant_prefix to ''")
    for path in recipe.orphanet:
        if not os.path.isfile(os.path.expanduser(path)):
            raise ConfigError("orphanet", f"file not found: {path}")


def world_size() -> int:
    """Number of training processes (accelerate/torchrun set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def derive_batch(recipe: RecipeConfig, grpo_kwargs: dict[str, Any], num_processes: int) -> None:
    """Set gradient_accumulation_steps from prompts_per_step and check the batch holds whole groups.

    One training step then samples prompts_per_step x num_generations completions and makes exactly
    one optimizer update, as verl does with ppo_mini_batch_size = train_batch_size.
    """
    num_generations = grpo_kwargs.get("num_generations", 8)
    per_device = grpo_kwargs.get("per_device_train_batch_size", 8)
    if num_generations is None or num_generations < 2:
        raise ConfigError("num_generations", f"GRPO needs at least 2 generations per prompt, got {num_generations}")
    if per_device < 1:
        raise ConfigError("per_device_train_batch_size", f"must be at least 1, got {per_device}")
    if recipe.prompts_per_step is not None:
        completions = recipe.prompts_per_step * num_generations
        micro = per_device * num_processes
        if completions % micro:
            raise ConfigError("prompts_per_step", (
                f"{recipe.prompts_per_step} prompts x {num_generations} generations = {completions} completions "
                f"per step is not divisible by per_device_train_batch_size x processes = {per_device} x "
                f"{num_processes}"))
        for conflicting in ("gradient_accumulation_steps", "steps_per_generation", "generation_batch_size"):
            if conflicting in grpo_kwargs and conflicting not in GRPO_DEFAULTS:
                raise ConfigError(conflicting, "is derived from prompts_per_step; set one or the other")
        grpo_kwargs["gradient_accumulation_steps"] = completions // micro
    if grpo_kwargs.get("generation_batch_size") is not None:
        generation_batch = grpo_kwargs["generation_batch_size"]
        source = "generation_batch_size"
    else:
        steps = grpo_kwargs.get("steps_per_generation") or grpo_kwargs.get("gradient_accumulation_steps", 1)
        generation_batch = per_device * num_processes * steps
        source = (f"per_device_train_batch_size x processes x steps_per_generation = "
                  f"{per_device} x {num_processes} x {steps}")
    if generation_batch % num_generations:
        raise ConfigError("num_generations", (
            f"the batch of {generation_batch} completions ({source}) is not divisible by num_generations = "
            f"{num_generations}: every prompt needs its whole group in one batch"))


def describe_fields() -> str:
    """Return the help text listing our recipe fields, for `diagnosis-zero train --help`."""
    lines = ["recipe fields (in a recipe YAML, or as --field VALUE):"]
    for f in dataclasses.fields(RecipeConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        lines.append(f"  {f.name} (default {default!r}): {f.metadata['help']}")
    lines.append("and every field of TRL's GRPOConfig / transformers' TrainingArguments, e.g. --learning-rate 1e-5,")
    lines.append("--num-generations 8, --max-completion-length 256, --beta 0.001, --report-to wandb.")
    return "\n".join(lines)
