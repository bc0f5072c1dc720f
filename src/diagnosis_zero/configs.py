"""Training recipes: our fields (model, data, reward, LoRA, validation) plus every `GRPOConfig` field.

A recipe is one flat YAML mapping, as in open-r1: each key is either a `RecipeConfig` field below or
a field of TRL's `GRPOConfig` (which extends transformers' `TrainingArguments`). The command line
takes the same names as flags (`--learning-rate 1e-5` or `--learning_rate=1e-5`). Both go through
TRL's own argument parser (`trl.TrlParser`, a `transformers.HfArgumentParser`) over the two
dataclasses, so types, enum choices, lists and booleans are parsed as in any TRL script: a recipe
is a command line written as YAML. Precedence, lowest first: `GRPO_DEFAULTS`, the recipe file, the
command line. An unknown key is an error that names it and suggests the closest field.

The shipped recipes are package data (`diagnosis_zero/recipes/*.yaml`), so a wheel install finds
`--recipe demo` too; `recipes/` at the top of a checkout points at them.

Everything here is checked before any model is loaded, so a bad recipe fails in a second, not after
a minute of loading weights.
"""

import argparse
import dataclasses
import difflib
import functools
import importlib.resources
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diagnosis_zero.errors import ConfigError

# The shipped recipes: package data, found through importlib.resources (a plain folder once installed).
RECIPES_DIR = Path(os.environ.get("DIAGNOSIS_ZERO_RECIPES")
                   or str(importlib.resources.files("diagnosis_zero") / "recipes"))
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
    rarearena_file: str | None = field(default=None, metadata={
        "help": "RareArena file (RDC.json, RDS.json or *_benchmark.jsonl) to prepare when `data` is unset (`data` wins), as "
                "`prepare` does by default: the study's prompt (or `template`), the first 70% in file order "
                "to train, prompts over max_prompt_tokens dropped with the model's tokenizer; prepared once "
                "into the cache, so one command runs a whole training"})
    demo_cases: int = field(default=200, metadata={
        "help": "number of HPO demo cases to prepare when `data` and `rarearena_file` are unset"})
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


def recipe_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(RecipeConfig)}


_UNSET = object()  # a field that neither the recipe nor the command line set


def _alternatives(annotation) -> set:
    """Return the basic types an annotation admits (Optional/Union flattened, list[X] -> list)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return {alt for arg in typing.get_args(annotation) for alt in _alternatives(arg)}
    return {typing.get_origin(annotation) or annotation}


def _mapping(text: str, *, or_text: bool):
    """argparse type of a mapping field: YAML/JSON `{key: value}` text -> dict (else the text, for
    fields that also take a string such as a DeepSpeed config path)."""
    import yaml

    if not text.lstrip().startswith("{"):
        if or_text:
            return text
        raise argparse.ArgumentTypeError(f"expected a mapping like '{{key: value}}', got {text!r}")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"cannot parse {text!r}: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a mapping like '{{key: value}}', got {text!r}")
    return value


def _nullable(convert):
    """Wrap an argparse type so that `null`/`none` give None (for `X | None` fields other than strings,
    where 'none' can be a real value, e.g. report_to)."""
    def parse(text: str):
        return None if text.strip().lower() in ("null", "none", "~") else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


class _RecipeParser:
    """TRL's `TrlParser` over `RecipeConfig` and `GRPOConfig`, with errors as `ConfigError`.

    TRL's parser gives every field its flag (`--learning-rate`/`--learning_rate`), types from the
    annotations, `choices` for enums and Literals, `--x [true|false]` for booleans and `--no-x` for
    those that default to true, `nargs="+"` for lists. Three small additions keep recipe values
    expressible on the command line: mapping fields parse `'{key: value}'`, optional non-string
    fields take `null`, and a bare `--x` is true for `bool | None` fields too (`--bf16`).
    """

    def __init__(self):
        from trl import GRPOConfig, TrlParser

        class Parser(TrlParser):
            def error(self, message):  # argparse would print usage and exit; name the field instead
                raise ConfigError("command line", message)

        # No abbreviations: `--learning-rat` must be an unknown field, not `--learning-rate`.
        self.parser = Parser((RecipeConfig, GRPOConfig), add_help=False, allow_abbrev=False, exit_on_error=False)
        self.owners = {name: RecipeConfig for name in recipe_fields()}
        self.owners.update({f.name: GRPOConfig for f in dataclasses.fields(GRPOConfig) if f.init})
        hints = {**typing.get_type_hints(GRPOConfig), **typing.get_type_hints(RecipeConfig)}
        self.kinds = {name: _alternatives(hints[name]) for name in self.owners}
        self.actions: dict[str, argparse.Action] = {}
        for action in self.parser._actions:  # TrlParser walks `_actions` the same way
            if action.dest not in self.owners or action.option_strings[0] != f"--{action.dest}":
                continue  # the `--no-x` twin of a boolean: the main flag carries the type
            kinds = self.kinds[action.dest]
            if dict in kinds:
                action.type = functools.partial(_mapping, or_text=str in kinds)
                action.type.__name__ = "mapping"
            if type(None) in kinds and action.type not in (None, str):
                action.type = _nullable(action.type)
            if bool in kinds and action.nargs is None:  # `bool | None = None` (bf16): a bare --bf16 is true too
                action.nargs, action.const = "?", True
            self.actions[action.dest] = action
        self.flags = {option: action.dest for action in self.parser._actions for option in action.option_strings}

    def parse(self, tokens: list[str], namespace: argparse.Namespace, source: str) -> None:
        """Parse command-line tokens into `namespace`; raise ConfigError naming the field and `source`."""
        try:
            _, rest = self.parser.parse_known_args(tokens, namespace)
        except argparse.ArgumentError as exc:
            option = (exc.argument_name or "").split("/")[0]
            raise ConfigError(self.flags.get(option, option or "command line"), exc.message, source) from None
        except ConfigError as exc:
            raise ConfigError(exc.field, exc.reason, source) from None
        for token in rest:
            if token.startswith("-") and token != "-" and not _is_number(token):
                raise _unknown(token.lstrip("-").split("=", 1)[0].replace("-", "_"), self.owners, source)
            raise ConfigError(token, "unexpected argument; options look like --field value (lists: --field a b)",
                              source)

    def recipe_tokens(self, mapping: dict, namespace: argparse.Namespace, source: str) -> list[str]:
        """Return a recipe mapping as command-line tokens, so the parser types it as it types the command line.

        A value that text cannot carry (YAML null, a mapping, a list for a field that is not a flag
        list, such as `report_to: [tensorboard]`) is checked against the field's annotation and set
        in `namespace` as it is.
        """
        tokens: list[str] = []
        for key, value in mapping.items():
            name = str(key)
            if name not in self.actions:
                raise _unknown(name, self.owners, source)
            action, kinds = self.actions[name], self.kinds[name]
            flag = f"--{name}"
            if value is None or isinstance(value, dict) or (isinstance(value, list) and action.nargs != "+"):
                kind = type(None) if value is None else type(value)
                if kind not in kinds:
                    shown = {type(None): "null", dict: "a mapping", list: "a list"}[kind]
                    raise ConfigError(name, f"expected {_expected(kinds)}, got {shown}", source)
                if kind is list:  # e.g. report_to: [tensorboard]; each item is checked as text
                    for item in value:
                        self.parse([f"{flag}={_text(item)}"], argparse.Namespace(**{name: _UNSET}), source)
                setattr(namespace, name, value)
            elif isinstance(value, list):
                if not value:
                    setattr(namespace, name, [])
                else:
                    tokens += [flag, *map(_text, value)]
            else:
                tokens.append(f"{flag}={_text(value)}")
        return tokens


def _text(value) -> str:
    """Return a YAML scalar as the text a user would type: true/false, 5 for 5.0, 3e-07."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def _expected(kinds: set) -> str:
    names = {type(None): "null", dict: "a mapping", list: "a list"}
    return " or ".join(sorted(names.get(kind, getattr(kind, "__name__", str(kind))) for kind in kinds))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _parser() -> _RecipeParser:
    return _RecipeParser()


def _unknown(name: str, known, source: str | None) -> ConfigError:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(name, f"unknown recipe field{hint}; see `diagnosis-zero train --help`", source)


def resolve_recipe_path(spec: str | None) -> Path:
    """Return the YAML file for a recipe name (`demo`, `qwen2.5-7b-instruct`) or path.

    Names are looked up in the package's own `recipes/` folder (package data, so a wheel has them),
    or in `$DIAGNOSIS_ZERO_RECIPES` when set. Needs only the standard library.
    """
    spec = spec or DEFAULT_RECIPE
    path = Path(os.path.expanduser(spec))
    if path.suffix in (".yaml", ".yml") or os.sep in spec:
        if not path.is_file():
            raise ConfigError("recipe", f"recipe file not found: {spec}")
        return path
    candidate = RECIPES_DIR / f"{spec}.yaml"
    if not candidate.is_file():
        raise ConfigError("recipe", f"no recipe named '{spec}' in {RECIPES_DIR}; available: "
                          f"{', '.join(recipe_names())}")
    return candidate


def recipe_names() -> list[str]:
    """Return the names of the shipped recipes (`--recipe NAME`)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []


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


# Overrides: command-line tokens (`["--learning-rate", "1e-5", "--use-peft"]`), or a mapping of field
# name -> value as a caller would type it ({"max_steps": "5", "use_vllm": "false"}; None = a bare flag;
# a list, or its YAML text "[1, 0.5]", = the list's items as separate words).
Overrides = list[str] | dict[str, Any]


def override_tokens(overrides: Overrides | None) -> list[str]:
    """Return overrides as command-line tokens."""
    if not overrides:
        return []
    if isinstance(overrides, list):
        return list(overrides)
    tokens: list[str] = []
    for name, value in overrides.items():
        flag = "--" + str(name).replace("-", "_")
        if isinstance(value, str) and value.strip().startswith("[") and value.strip().endswith("]"):
            import yaml  # a list written as YAML text, e.g. "[1, 0.5, 1]"

            value = yaml.safe_load(value)
        if value is None:
            tokens.append(flag)
        elif isinstance(value, (list, tuple)):
            tokens += [flag, *map(_text, value)]
        else:
            tokens.append(f"{flag}={_text(value)}")
    return tokens


def split_fields(recipe: dict, overrides: Overrides | None, recipe_source: str | None
                 ) -> tuple[RecipeConfig, dict[str, Any]]:
    """Return (RecipeConfig, GRPOConfig keyword arguments) from a recipe mapping and CLI overrides.

    Precedence, lowest first: `GRPO_DEFAULTS`, the recipe, the overrides. The GRPOConfig keywords are
    our defaults plus every field the recipe or the overrides set. Raises ConfigError naming the first
    unknown or ill-typed field and where it came from.
    """
    parser = _parser()
    namespace = argparse.Namespace(**{name: _UNSET for name in parser.owners})
    recipe_tokens = parser.recipe_tokens(recipe, namespace, recipe_source)
    parser.parse(recipe_tokens, namespace, recipe_source)
    parser.parse(override_tokens(overrides), namespace, "command line")
    recipe_kwargs: dict[str, Any] = {}
    grpo_kwargs: dict[str, Any] = dict(GRPO_DEFAULTS)
    for name, value in vars(namespace).items():
        if value is not _UNSET:
            (recipe_kwargs if parser.owners[name] is RecipeConfig else grpo_kwargs)[name] = value
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
    if recipe.data is None and recipe.rarearena_file is not None \
            and not Path(os.path.expanduser(recipe.rarearena_file)).is_file():
        raise ConfigError("rarearena_file", f"file not found: {recipe.rarearena_file} (or pass --data with a "
                          "folder from `diagnosis-zero prepare`)")
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
    lines += [
        "and every field of TRL's GRPOConfig / transformers' TrainingArguments, e.g. --learning-rate 1e-5,",
        "--num-generations 8, --max-completion-length 256, --beta 0.001, --report-to wandb.",
        "",
        "Values are parsed by TRL's argument parser (TrlParser), as in TRL's own scripts: booleans",
        "--x, --x false, and --no-x for fields that default to true; lists as --x a b; mappings as",
        "--x '{key: value}'; null for an optional number. Precedence: our defaults < recipe < command line.",
        f"Shipped recipes: {', '.join(recipe_names())} (in {RECIPES_DIR}).",
    ]
    return "\n".join(lines)
