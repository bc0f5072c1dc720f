"""Rule-based rewards for rare-disease diagnosis: `compute_score` and the TRL reward functions.

One file, standard library only, so that verl can load it by path
(`reward.custom_reward_function.path=.../reward.py`, `name=compute_score`) and TRL can import it.
It reads contract first:

1. The contract: `compute_score` (verl's signature; the same scalar keys on every call),
   `rule_grade` (RareArena's 2/1/0 scale for one answer), `RewardConfig` and `PRESETS`
   (`clinical` default, `original` = the study's reward exactly).
2. The scoring core: levels, format penalties, language penalty, Orphanet partial credit.
3. Adapters: `make_trl_reward_funcs` (accuracy, format, language; their weighted sum is the
   score), `score_batch`, and the clinical preset's `accuracy_reward`, `format_reward`, `language_reward`.
4. Parsing: `parse_completion` (one linear scan of `<think>`/`<answer>`), `parse_ranked_list`,
   `parse_ground_truth`.
5. Matching: the `seed` matcher (the original study's, reproduced exactly) and the `clinical`
   matcher (`normalize_diagnosis`, `match_diagnosis`, `similarity`: subtype guards, acronyms,
   parenthetical synonyms, NOS, lexicon).
6. Orphanet: `load_lexicon` (names and synonyms -> codes) and `load_hierarchy` (parents), each
   parsed once per process.
7. Language: `is_mixed_language`.
8. Vocabulary: every table and pattern the sections above read, in one place at the end.

Everything here is a pure function of its arguments (plus caches guarded for threads) and runs in
linear time: no backtracking regex ever sees unbounded text.
"""

# No `from __future__ import annotations`: verl loads this file with spec_from_file_location and
# does not register it in sys.modules, and dataclasses then cannot resolve string annotations.
import dataclasses
import difflib
import functools
import itertools
import json
import logging
import os
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

try:  # the package's own errors when installed; verl may load this file on its own
    from diagnosis_zero.errors import ConfigError, InputFileError
except ImportError:  # pragma: no cover - exercised by loading the file outside the package
    class ConfigError(ValueError):  # type: ignore[no-redef]
        def __init__(self, field: str, reason: str, source: str | None = None):
            self.field, self.reason, self.source = field, reason, source
            super().__init__(f"{source + ': ' if source else ''}field '{field}': {reason}")

    class InputFileError(ValueError):  # type: ignore[no-redef]
        def __init__(self, path, line: int | None, field: str | None, reason: str):
            self.path, self.line, self.field, self.reason = str(path), line, field, reason
            where = self.path if line is None else f"{self.path}:{line}"
            super().__init__(f"{where}: {'field ' + repr(field) + ': ' if field else ''}{reason}")

logger = logging.getLogger(__name__)

__all__ = [
    # the contract
    "compute_score", "rule_grade", "RewardConfig", "PRESETS", "resolve_config", "SCORE_KEYS", "METHODS",
    "MAX_PARENT_DISEASES",
    # adapters
    "make_trl_reward_funcs", "score_batch", "accuracy_reward", "format_reward", "language_reward",
    # parsing
    "ParsedCompletion", "parse_completion", "extract_answer", "parse_ranked_list", "parse_ground_truth",
    # matching
    "match_diagnosis", "similarity", "seed_similarity", "normalize_diagnosis", "is_multiple_diagnoses",
    "is_negated",
    # Orphanet
    "Lexicon", "load_lexicon", "Hierarchy", "OrphanetEntity", "OrphanetParent", "load_hierarchy",
    # language
    "is_mixed_language", "OTHER_SCRIPT", "OTHER_LANGUAGE_RUN",
]


# ---------------------------------------------------------------------------------------------
# 1. The contract: compute_score (verl's custom reward), rule_grade, RewardConfig and the presets
# ---------------------------------------------------------------------------------------------

SCORE_KEYS = ("score", "acc", "format", "pred", "think_present", "mixed_language", "rank")

METHODS = ("clinical", "seed")

MAX_PARENT_DISEASES = 10  # RareArena's updated protocol: a parent naming at most this many diseases

MAX_PRED_CHARS = 2000  # `pred` is for logs; longer answers are cut there (the score uses all of it)


def compute_score(data_source: Any = None, solution_str: Any = "", ground_truth: Any = None,
                  extra_info: Any = None, **kwargs: Any) -> dict[str, Any]:
    """Return the reward of one completion and what it is made of (verl's custom reward signature).

    Thread-safe and linear in the completion's length; verl calls it with keyword arguments.

    Args:
        data_source: the dataset's name (not used; verl passes it).
        solution_str: the completion: a string, or TRL's [{"role": "assistant", "content": ...}].
        ground_truth: {"diagnosis": [names], "orpha_id": code} (lists may be numpy arrays), its JSON
            string, verl's whole `reward_model` dict, or a plain name or list of names.
        extra_info: the row's extra_info; `topk` (or template "rarearena-top5") turns top-k mode on.
        **kwargs: the config: `config=RewardConfig(...)`, `preset="clinical"|"original"`, and any
            RewardConfig field (`method="seed"`, `topk=5`, `lexicon=PATH`, `hierarchy=PATH`,
            `wrong_reward=0.0`, ...). Unknown names are ignored with one warning (verl adds its own).

    Returns:
        The same keys on every call, all scalars: `score` (float), `acc` (0/1: the diagnosis
        matched; top-k: within the first k), `format` (0/1), `pred` (the answer, "" when none),
        `think_present` (0/1), `mixed_language` (0/1) and `rank` (1-based rank of the first
        matching item, 0 when none; 1 for a match in single mode).

    Example:
        >>> truth = {"diagnosis": ["Gaucher disease type 1"], "orpha_id": "77259"}
        >>> compute_score("rare_arena", "<think>Splenomegaly, bone crises.</think>"
        ...               "<answer>Type I Gaucher disease</answer>", truth)
        {'score': 1.0, 'acc': 1, 'format': 1, 'pred': 'Type I Gaucher disease', 'think_present': 1, \
'mixed_language': 0, 'rank': 1}
        >>> compute_score("rare_arena", "<answer>Gaucher disease type 2</answer>", truth)["score"]  # no think
        0.0
        >>> compute_score("rare_arena", "<answer>Gaucher disease type 2</answer>", truth, preset="original")["score"]
        1.0
    """
    config = _config_from_kwargs(kwargs)
    topk = config.topk or _topk_from_extra_info(extra_info)
    references, orpha_id = parse_ground_truth(ground_truth)
    result = _score(config, _as_text(solution_str), references, orpha_id, topk)
    del result["level"], result["partial"], result["format_penalty"], result["language_penalty"]
    return result


def rule_grade(answer: Any, references: Any, orpha_id: Any = None, config: "RewardConfig | None" = None,
               **overrides: Any) -> int:
    """Return the rule's verdict on one answer on RareArena's judge scale: 2, 1 or 0.

    2 = the answer names the diagnosis (the config's matcher and lexicon); 1 = it names a parent
    group of `orpha_id` with at most `partial_max_diseases` diseases (only with a `hierarchy`);
    0 = neither. Only the answer text is graded: format and language are not looked at.
    """
    config = resolve_config(config, **overrides) if config is not None or overrides else PRESETS["clinical"]
    answer, names, orpha_id = _as_text(answer).strip(), _as_names(references), _as_orpha_id(orpha_id)
    lexicon = load_lexicon(config.lexicon) if config.lexicon and config.method == "clinical" else None
    if answer and _matches(config, answer, names, lexicon, orpha_id):
        return 2
    parents = _partial_names(config.hierarchy, orpha_id, config.partial_max_diseases) \
        if config.hierarchy and orpha_id else ()
    return 1 if answer and parents and _matches(config, answer, parents, lexicon, None) else 0


@dataclass(frozen=True)
class RewardConfig:
    """Reward levels and switches. score = level(accuracy) - format penalties - language penalty."""

    method: str = field(default="clinical", metadata={
        "help": "matcher: 'clinical' (normalised, subtype-safe, acronyms, lexicon) or 'seed' (the original "
                "study's lower-case SequenceMatcher/Jaccard > 0.8 rule, reproduced exactly)"})
    correct_reward: float = field(default=1.0, metadata={
        "help": "reward for a matching diagnosis (top-k mode: multiplied by the rank's entry in topk_rewards)"})
    wrong_reward: float = field(default=0.1, metadata={
        "help": "reward for an answer that is present but does not match (the original study: 0.1)"})
    no_answer_reward: float = field(default=0.0, metadata={
        "help": "reward when no non-empty <answer>...</answer> block is found (bad format; original: 0.0)"})
    empty_answer_is_wrong: bool = field(default=False, metadata={
        "help": "an empty or whitespace-only first <answer> block counts as a (wrong) answer and earns "
                "wrong_reward, as in the original study, which never looks for a later block; off = it earns "
                "no_answer_reward"})
    strict_format: bool = field(default=True, metadata={
        "help": "require the R1-Zero format: one <think>...</think> then exactly one <answer>...</answer> and "
                "nothing after it; off = only an <answer> block is needed (the original study)"})
    missing_think_penalty: float = field(default=0.1, metadata={
        "help": "subtracted when there is no non-empty <think>...</think> block before the answer (strict)"})
    extra_answer_penalty: float = field(default=0.1, metadata={
        "help": "subtracted when there is more than one <answer> block; the diagnosis then earns no credit (strict)"})
    answer_in_think_penalty: float = field(default=0.1, metadata={
        "help": "subtracted when an <answer> tag sits inside <think>; the diagnosis then earns no credit (strict)"})
    unclosed_tag_penalty: float = field(default=0.1, metadata={
        "help": "subtracted for unbalanced, repeated or out-of-order <think>/<answer> tags (strict)"})
    extra_text_penalty: float = field(default=0.1, metadata={
        "help": "subtracted for text outside the blocks: before <think>, between them, or after </answer> (strict)"})
    multiple_diagnoses_penalty: float = field(default=0.1, metadata={
        "help": "subtracted when a single-diagnosis answer names several ('X; Y', 'X or Y', a numbered list), or "
                "when a top-k list has more than k items (strict); such answers never earn credit anyway"})
    language_check: bool = field(default=True, metadata={
        "help": "penalise completions that mix in another language (is_mixed_language); the flag is always reported"})
    language_penalty: float = field(default=0.1, metadata={
        "help": "subtracted when the completion mixes in another language (language_check on)"})
    lexicon: str | None = field(default=None, metadata={
        "help": "path to Orphanet's en_product1.xml or RareArena's orphanet_hypernym.json: a prediction whose name "
                "resolves to the ground truth's orpha_id (or a reference's code) matches (clinical method)"})
    hierarchy: str | None = field(default=None, metadata={
        "help": "path to RareArena's orphanet_hypernym.json: turns on Orphanet partial credit (clinical method) - "
                "an answer naming a parent group of the case's orpha_id that holds at most partial_max_diseases "
                "diseases earns partial_credit; broader groups, siblings and children earn nothing"})
    partial_credit: float = field(default=0.3, metadata={
        "help": "reward for naming a small Orphanet parent group (with hierarchy); must lie strictly between "
                "wrong_reward and correct_reward"})
    partial_max_diseases: int = field(default=MAX_PARENT_DISEASES, metadata={
        "help": "a parent group earns partial credit when its parent_disease_count is at most this (RareArena: 10)"})
    topk: int = field(default=0, metadata={
        "help": "top-k mode for the rarearena-top5 template: the answer is a ranked list and the first matching "
                "item among the first k earns correct_reward * topk_rewards[rank-1]; 0 = single diagnosis"})
    topk_rewards: tuple[float, ...] = field(default=(), metadata={
        "help": "fraction of correct_reward per rank 1..k in top-k mode; empty = reciprocal rank (1, 1/2, 1/3, ...)"})
    fuzzy_threshold: float = field(default=0.9, metadata={
        "help": "clinical method: minimum difflib ratio between normalised names to accept a spelling variant, "
                "checked only after the subtype, prefix, qualifier and broader-category guards pass"})
    max_answer_chars: int = field(default=1000, metadata={
        "help": "clinical method: answers longer than this many characters are not a diagnosis name and never match"})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError("method", f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if isinstance(self.topk, bool) or not isinstance(self.topk, int) or self.topk < 0:
            raise ConfigError("topk", f"must be a non-negative integer, got {self.topk!r}")
        rewards = self.topk_rewards
        if isinstance(rewards, str) or not isinstance(rewards, Sequence):
            raise ConfigError("topk_rewards", f"must be a list of numbers, got {rewards!r}")
        try:
            rewards = tuple(float(r) for r in rewards)
        except (TypeError, ValueError):
            raise ConfigError("topk_rewards", f"must be a list of numbers, got {self.topk_rewards!r}") from None
        object.__setattr__(self, "topk_rewards", rewards)
        for name in ("lexicon", "hierarchy"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, os.fspath(getattr(self, name)))
        if isinstance(self.partial_max_diseases, bool) or not isinstance(self.partial_max_diseases, int) \
                or self.partial_max_diseases < 0:
            raise ConfigError("partial_max_diseases", f"must be a non-negative integer, got {self.partial_max_diseases!r}")
        for name in ("strict_format", "language_check", "empty_answer_is_wrong"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.max_answer_chars, bool) or not isinstance(self.max_answer_chars, int) \
                or self.max_answer_chars < 1:
            raise ConfigError("max_answer_chars", f"must be a positive integer, got {self.max_answer_chars!r}")
        for name in ("correct_reward", "wrong_reward", "no_answer_reward", "missing_think_penalty",
                     "extra_answer_penalty", "answer_in_think_penalty", "unclosed_tag_penalty",
                     "extra_text_penalty", "multiple_diagnoses_penalty", "language_penalty", "fuzzy_threshold",
                     "partial_credit"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(name, f"must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.hierarchy is not None:
            if self.method != "clinical":  # the original preset is the study's reward exactly: no partial credit
                raise ConfigError("hierarchy", "Orphanet partial credit needs method 'clinical' (the seed method "
                                               "and the original preset never give it)")
            if not self.wrong_reward < self.partial_credit < self.correct_reward:
                raise ConfigError("partial_credit", f"must lie strictly between wrong_reward ({self.wrong_reward}) "
                                                    f"and correct_reward ({self.correct_reward}), got {self.partial_credit}")

    def rank_reward(self, rank: int) -> float:
        """Return the fraction of `correct_reward` earned by the first match at 1-based `rank`."""
        if self.topk_rewards:
            return self.topk_rewards[rank - 1] if rank <= len(self.topk_rewards) else 0.0
        return 1.0 / rank

PRESETS: dict[str, RewardConfig] = {
    "clinical": RewardConfig(),
    # The original study (REFERENCE.md section 1): seed matcher, 1.0/0.1/0.0, only <answer> needed,
    # and an empty first answer block is an answer (0.1).
    "original": RewardConfig(method="seed", correct_reward=1.0, wrong_reward=0.1, no_answer_reward=0.0,
                             strict_format=False, language_check=False, empty_answer_is_wrong=True),
}

_CONFIG_FIELDS = {f.name for f in dataclasses.fields(RewardConfig)}

# Keyword arguments that verl adds on its own; they say nothing about our reward.
_VERL_EXTRA_KWARGS = {"reward_router_address", "reward_model_tokenizer"}


def resolve_config(config: RewardConfig | None = None, *, preset: str | None = None, **overrides: Any) -> RewardConfig:
    """Return `config` (or `PRESETS[preset]`, default clinical) with `overrides` of RewardConfig fields."""
    if config is None:
        name = preset or "clinical"
        if name not in PRESETS:
            raise ConfigError("preset", f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        config = PRESETS[name]
    elif preset is not None:
        raise ConfigError("preset", "give either a config or a preset, not both")
    unknown = set(overrides) - _CONFIG_FIELDS
    if unknown:
        raise ConfigError(sorted(unknown)[0], f"not a RewardConfig field (fields: {', '.join(sorted(_CONFIG_FIELDS))})")
    return dataclasses.replace(config, **overrides) if overrides else config


# ---------------------------------------------------------------------------------------------
# 2. The scoring core
# ---------------------------------------------------------------------------------------------

_CONFIG_CACHE: dict[Any, RewardConfig] = {}

_warned_kwargs: set[str] = set()


def _config_from_kwargs(kwargs: dict[str, Any]) -> RewardConfig:
    if not kwargs:
        return PRESETS["clinical"]
    try:
        cache_key = tuple(sorted((k, _freeze(v)) for k, v in kwargs.items()))
        hash(cache_key)
    except TypeError:
        cache_key = None
    config = _CONFIG_CACHE.get(cache_key) if cache_key is not None else None
    if config is not None:
        return config
    overrides = dict(kwargs)
    for name in list(overrides):
        if name in _VERL_EXTRA_KWARGS:
            overrides.pop(name)
        elif name not in _CONFIG_FIELDS and name not in ("config", "preset"):
            overrides.pop(name)
            if name not in _warned_kwargs:
                _warned_kwargs.add(name)
                logger.warning("compute_score: ignoring unknown keyword argument %r", name)
    config = resolve_config(overrides.pop("config", None), preset=overrides.pop("preset", None), **overrides)
    if cache_key is not None and len(_CONFIG_CACHE) < 256:
        _CONFIG_CACHE[cache_key] = config
    return config


def _freeze(value: Any) -> Any:
    """Return a hashable copy of a kwarg value (verl passes OmegaConf lists and dicts)."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return tuple(_freeze(v) for v in value)
    return value


def _topk_from_extra_info(extra_info: Any) -> int:
    if isinstance(extra_info, Mapping):
        value = extra_info.get("topk")
        if value is None and extra_info.get("template") == "rarearena-top5":
            value = 5
        try:
            return max(0, int(value)) if value is not None else 0
        except (TypeError, ValueError):
            return 0
    return 0


def _score(config: RewardConfig, text: str, references: list[str], orpha_id: str | None,
           topk: int) -> dict[str, Any]:
    parsed = parse_completion(text)
    mixed = is_mixed_language(text)
    answer = parsed.answer or ""
    strict = config.strict_format
    # The hacks of a strict format: a second answer, or an answer hidden in the reasoning, earn nothing.
    withheld = strict and (parsed.n_answer_blocks > 1 or parsed.answer_in_think)
    lexicon = load_lexicon(config.lexicon) if config.lexicon and config.method == "clinical" else None
    parents = _partial_names(config.hierarchy, orpha_id, config.partial_max_diseases) \
        if config.hierarchy and orpha_id else ()

    rank = 0
    partial = 0  # 1-based rank of the first item naming a small parent group; 0 for none
    too_many = False
    # the original pays wrong_reward for an empty first block: it is "present" (REFERENCE.md section 1)
    has_answer = bool(answer) or (config.empty_answer_is_wrong and parsed.answer is not None)
    if not has_answer:
        level = config.no_answer_reward
        pred = ""
    elif topk:
        items = parse_ranked_list(answer)
        too_many = len(items) > topk
        if not withheld:
            for position, item in enumerate(items[:topk], start=1):
                if _matches(config, item, references, lexicon, orpha_id):
                    rank = position
                    break
                if parents and not partial and _matches(config, item, parents, lexicon, None):
                    partial = position
        level = config.correct_reward * config.rank_reward(rank) if rank else config.wrong_reward
        if partial:  # a parent group above the right name must not pay less than dropping the right name
            level = max(level, config.wrong_reward
                        + (config.partial_credit - config.wrong_reward) * config.rank_reward(partial))
        pred = "\n".join(items[:topk])
    else:
        too_many = strict and (
            _answer_info(answer)[1] if len(answer) <= config.max_answer_chars else is_multiple_diagnoses(answer))
        if not withheld and _matches(config, answer, references, lexicon, orpha_id):
            rank = 1
        elif not withheld and parents and _matches(config, answer, parents, lexicon, None):
            partial = 1
        level = config.correct_reward if rank else config.partial_credit if partial else config.wrong_reward
        pred = answer.lower() if config.method == "seed" else answer

    format_penalty = _format_penalty(config, parsed, too_many) if strict else 0.0
    format_ok = parsed.format_ok and not too_many if strict else has_answer
    language_penalty = config.language_penalty if config.language_check and mixed else 0.0
    # score = level - format_penalty - language_penalty; the parts are what the TRL functions return
    return {"score": float(level - format_penalty - language_penalty), "acc": int(rank > 0),
            "format": int(format_ok), "pred": pred[:MAX_PRED_CHARS], "think_present": int(parsed.think_present),
            "mixed_language": int(mixed), "rank": rank,
            "level": level, "partial": int(partial > 0 and not rank), "format_penalty": format_penalty,
            "language_penalty": language_penalty}


@functools.lru_cache(maxsize=1 << 14)  # one entry per (file, case): O(1) after the first call
def _partial_names(hierarchy: str, orpha_id: str, max_diseases: int) -> tuple[str, ...]:
    """Return the names of `orpha_id`'s Orphanet parents holding at most `max_diseases` diseases."""
    return tuple(dict.fromkeys(load_hierarchy(hierarchy).parents(orpha_id, max_diseases)))


def _matches(config: RewardConfig, answer: str, references: Sequence[str], lexicon: "Lexicon | None",
             orpha_id: str | None) -> bool:
    if config.method == "seed":
        return _seed_match(answer, references)
    if len(answer) > config.max_answer_chars or not references:
        return False
    return _clinical_match(answer, references, lexicon, orpha_id, config.fuzzy_threshold)


def _format_penalty(config: RewardConfig, parsed: "ParsedCompletion", too_many: bool) -> float:
    """Return the sum of the strict-format penalties that apply."""
    penalty = 0.0
    if not parsed.think_present:
        penalty += config.missing_think_penalty
    if parsed.n_answer_blocks > 1:
        penalty += config.extra_answer_penalty
    if parsed.answer_in_think:
        penalty += config.answer_in_think_penalty
    if parsed.unclosed_tags:
        penalty += config.unclosed_tag_penalty
    if parsed.extra_text:
        penalty += config.extra_text_penalty
    if too_many:
        penalty += config.multiple_diagnoses_penalty
    return penalty


# ---------------------------------------------------------------------------------------------
# 3. Adapters: TRL reward functions and batches
# ---------------------------------------------------------------------------------------------

_BATCH_CACHE: dict[Any, list[dict[str, Any]]] = {}

_BATCH_LOCK = threading.Lock()


def score_batch(completions: Sequence[Any], config: RewardConfig | None = None, **columns: Any
                ) -> list[dict[str, Any]]:
    """Return `compute_score`'s result, plus its `level`, `format_penalty` and `language_penalty`,
    for each completion of a TRL batch (dataset columns as lists).

    The ground truth comes from the `reward_model` column ({"ground_truth": ...}), or from a
    `ground_truth` column. The last few batches are cached, so the accuracy, format and language
    functions of one step score each completion once.
    """
    config = config or PRESETS["clinical"]
    if "reward_model" in columns and columns["reward_model"] is not None:
        truths = list(columns["reward_model"])
    elif "ground_truth" in columns and columns["ground_truth"] is not None:
        truths = list(columns["ground_truth"])
    else:
        raise ConfigError("reward_model", "the dataset needs a 'reward_model' (or 'ground_truth') column")
    if len(truths) != len(completions):
        raise ConfigError("reward_model", f"{len(truths)} ground truths for {len(completions)} completions")
    extra_infos = columns.get("extra_info")
    extra_infos = list(extra_infos) if extra_infos is not None else [None] * len(completions)
    texts = [_completion_text(c) for c in completions]
    key = (config, tuple(texts), tuple(map(_truth_key, truths)), tuple(map(_truth_key, extra_infos)))
    with _BATCH_LOCK:
        cached = _BATCH_CACHE.get(key)
    if cached is not None:
        return cached
    results = []
    for text, truth, info in zip(texts, truths, extra_infos, strict=True):
        references, orpha_id = parse_ground_truth(truth)
        topk = config.topk or _topk_from_extra_info(info)
        results.append(_score(config, text, references, orpha_id, topk))
    with _BATCH_LOCK:
        if len(_BATCH_CACHE) >= 4:
            _BATCH_CACHE.pop(next(iter(_BATCH_CACHE)))
        _BATCH_CACHE[key] = results
    return results


def _truth_key(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))
    except (TypeError, ValueError):
        return repr(value)


def make_trl_reward_funcs(config: RewardConfig | None = None) -> tuple[list[Callable[..., list[float]]], list[float]]:
    """Return TRL reward functions (accuracy, format, language) and their `reward_weights`.

    The weighted sum equals `compute_score(...)["score"]` for the same config: accuracy gives the
    level (correct / wrong / no answer), format gives minus the format penalties, language minus
    the language penalty. Their `__name__`s are 'accuracy', 'format' and 'language', which TRL logs
    as `rewards/<name>/mean`. When TRL passes `log_metric`, the accuracy function also logs
    `accuracy`, `format_rate`, `think_rate` and `mixed_language_rate` for the batch.
    """
    config = config or PRESETS["clinical"]

    def accuracy(prompts=None, completions=(), **columns) -> list[float]:
        results = score_batch(completions, config, **columns)
        log_metric = columns.get("log_metric")
        if callable(log_metric) and results:
            n = len(results)
            log_metric("accuracy", sum(r["acc"] for r in results) / n)
            log_metric("format_rate", sum(r["format"] for r in results) / n)
            log_metric("think_rate", sum(r["think_present"] for r in results) / n)
            log_metric("mixed_language_rate", sum(r["mixed_language"] for r in results) / n)
            if config.hierarchy:
                log_metric("partial_credit_rate", sum(r["partial"] for r in results) / n)
        return [r["level"] for r in results]

    def format_(prompts=None, completions=(), **columns) -> list[float]:
        return [-r["format_penalty"] for r in score_batch(completions, config, **columns)]

    def language(prompts=None, completions=(), **columns) -> list[float]:
        return [-r["language_penalty"] for r in score_batch(completions, config, **columns)]

    format_.__name__ = format_.__qualname__ = "format"  # TRL logs rewards/format/mean
    return [accuracy, format_, language], [1.0, 1.0, 1.0]


def accuracy_reward(prompts=None, completions=(), **columns) -> list[float]:
    """TRL reward: the clinical accuracy level per completion (1.0 correct, 0.1 wrong, 0.0 no answer)."""
    return _DEFAULT_FUNCS[0](prompts, completions, **columns)


def format_reward(prompts=None, completions=(), **columns) -> list[float]:
    """TRL reward: minus the strict-format penalties per completion (0.0 for a clean R1-Zero format)."""
    return _DEFAULT_FUNCS[1](prompts, completions, **columns)


def language_reward(prompts=None, completions=(), **columns) -> list[float]:
    """TRL reward: minus the language penalty for a completion that mixes in another language, else 0.0."""
    return _DEFAULT_FUNCS[2](prompts, completions, **columns)

_DEFAULT_FUNCS, _ = make_trl_reward_funcs(PRESETS["clinical"])


# ---------------------------------------------------------------------------------------------
# 4. Parsing: the completion, ranked lists, the ground truth
# ---------------------------------------------------------------------------------------------

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"


@dataclass(frozen=True)
class ParsedCompletion:
    """The `<think>`/`<answer>` structure of one completion."""

    answer: str | None  # stripped text of the first <answer>...</answer> block; None when there is none
    think_present: bool  # a non-empty <think>...</think> block
    answer_in_think: bool  # an <answer> tag inside the think block
    n_answer_blocks: int  # number of complete <answer>...</answer> pairs (at most the tag counts)
    unclosed_tags: bool  # unbalanced, repeated or out-of-order tags
    trailing_text: str  # stripped text after the last </answer> or </think> ("" when none)
    extra_text: bool  # non-whitespace before <think>, between </think> and <answer>, or after </answer>
    format_ok: bool  # the strict R1-Zero format: exactly <think>x</think> <answer>y</answer>, x and y non-empty


def parse_completion(text: str) -> ParsedCompletion:
    """Return the think/answer structure of `text` in linear time (str.find and str.count only)."""
    text = _as_text(text)
    n_think_open, n_think_close = text.count(THINK_OPEN), text.count(THINK_CLOSE)
    n_answer_open, n_answer_close = text.count(ANSWER_OPEN), text.count(ANSWER_CLOSE)

    answer_start = text.find(ANSWER_OPEN)
    answer_end = text.find(ANSWER_CLOSE, answer_start + len(ANSWER_OPEN)) if answer_start >= 0 else -1
    answer = text[answer_start + len(ANSWER_OPEN):answer_end].strip() if answer_end >= 0 else None
    n_answer_blocks = min(n_answer_open, n_answer_close) if answer is not None else 0

    think_start = text.find(THINK_OPEN)
    think_end = text.find(THINK_CLOSE, think_start + len(THINK_OPEN)) if think_start >= 0 else -1
    has_think_block = think_end >= 0
    think_body_start = think_start + len(THINK_OPEN)
    think_present = has_think_block and not _is_blank(text, think_body_start, think_end)
    answer_in_think = has_think_block and text.find(ANSWER_OPEN, think_body_start, think_end) >= 0

    out_of_order = has_think_block and answer_start >= 0 and answer_start < think_start
    unclosed = (n_think_open != n_think_close or n_answer_open != n_answer_close or n_think_open > 1
                or n_answer_open > 1 or out_of_order or (n_answer_open and answer is None)
                or (n_think_open and not has_think_block))

    # Text outside the blocks: before the first tag, between </think> and the <answer> after it,
    # and after the last closing tag (unless an unclosed tag follows it: that is its content).
    firsts = [p for p in (text.find(t) for t in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)) if p >= 0]
    leading = bool(firsts) and not _is_blank(text, 0, min(firsts))
    between = False
    if has_think_block:
        next_answer = text.find(ANSWER_OPEN, think_end)
        if next_answer >= 0:
            between = not _is_blank(text, text.rfind(THINK_CLOSE, 0, next_answer) + len(THINK_CLOSE), next_answer)
    last_answer_close, last_think_close = text.rfind(ANSWER_CLOSE), text.rfind(THINK_CLOSE)
    last_close = max(last_answer_close + len(ANSWER_CLOSE) if last_answer_close >= 0 else -1,
                     last_think_close + len(THINK_CLOSE) if last_think_close >= 0 else -1)
    last_open = max(text.rfind(ANSWER_OPEN), text.rfind(THINK_OPEN))
    trailing_text = text[last_close:].strip() if last_close > last_open and last_close >= 0 else ""
    extra_text = leading or between or bool(trailing_text)

    format_ok = (think_present and bool(answer) and not unclosed and not extra_text and not answer_in_think
                 and n_answer_blocks == 1)
    return ParsedCompletion(answer=answer, think_present=think_present, answer_in_think=answer_in_think,
                            n_answer_blocks=n_answer_blocks,
                            unclosed_tags=bool(unclosed), trailing_text=trailing_text, extra_text=extra_text,
                            format_ok=format_ok)


def _is_blank(text: str, start: int, end: int) -> bool:
    """True when text[start:end] is only whitespace (stops at the first other character, copies nothing)."""
    return end <= start or _NON_SPACE.search(text, start, end) is None


def extract_answer(text: str) -> str:
    """Return the stripped text of the first `<answer>...</answer>` block, or "" when there is none."""
    return parse_completion(text).answer or ""

MAX_LIST_ITEMS = 100  # more than this is not a ranked differential; parsing stops there


def parse_ranked_list(text: str) -> list[str]:
    """Return the items of a ranked list ("1. A" / "- A" lines, "A; B", "1. A 2. B"), in order.

    Header lines ending with ':' are skipped; numbering and bullets are removed. At most
    `MAX_LIST_ITEMS` items are returned, and reading stops there, so the cost stays linear.
    """
    lines = (line.strip() for line in _as_text(text).splitlines())
    first = next((line for line in lines if line), None)
    if first is None:
        return []
    second = next((line for line in lines if line), None)
    if second is None:  # one line: "1. A 2. B 3. C" or "A; B; C"
        numbers = list(itertools.islice(_INLINE_NUMBER.finditer(first), MAX_LIST_ITEMS + 1))
        if len(numbers) >= 2:
            cuts = [m.start() for m in numbers] + [len(first)]
            head = first[:cuts[0]].strip()
            candidates = ([head] if head else []) + [first[cuts[i]:cuts[i + 1]] for i in range(len(numbers))]
        else:
            candidates = first.split(";", MAX_LIST_ITEMS)
    else:
        candidates = itertools.chain((first, second), lines)
    items: list[str] = []
    for line in candidates:
        line = line.strip()
        if not line or (line.endswith(":") and not _LIST_MARKER.match(line)):
            continue
        item = _LIST_MARKER.sub("", line, count=1)
        item = _ITEM_EXPLANATION.split(item, maxsplit=1)[0].strip().strip("*_`").strip()
        if item:
            items.append(item)
            if len(items) >= MAX_LIST_ITEMS:
                break
    return items


def parse_ground_truth(ground_truth: Any) -> tuple[list[str], str | None]:
    """Return (reference names, orpha_id) from a ground truth dict, JSON string, name or list of names.

    Accepts verl's `reward_model` dict too ({"ground_truth": {...}}). Lists may be numpy arrays
    (parquet round-trips them so); they are read duck-typed, without importing numpy.
    """
    if isinstance(ground_truth, (bytes, bytearray)):
        ground_truth = bytes(ground_truth).decode("utf-8", "replace")
    if isinstance(ground_truth, str):
        stripped = ground_truth.strip()
        if stripped[:1] in ("{", "[", '"'):
            try:
                return parse_ground_truth(json.loads(stripped))
            except (json.JSONDecodeError, RecursionError):
                pass
        return ([stripped] if stripped else []), None
    if isinstance(ground_truth, Mapping):
        if "ground_truth" in ground_truth and "diagnosis" not in ground_truth:
            return parse_ground_truth(ground_truth["ground_truth"])
        names = ground_truth.get("diagnosis", ground_truth.get("references"))
        return _as_names(names), _as_orpha_id(ground_truth.get("orpha_id"))
    return _as_names(ground_truth), None


def _as_names(names: Any) -> list[str]:
    if names is None:
        return []
    if isinstance(names, (str, bytes)):
        names = [names]
    elif hasattr(names, "tolist"):  # numpy array or scalar
        names = names.tolist()
        if not isinstance(names, list):
            names = [names]
    try:
        names = list(names)
    except TypeError:
        names = [names]
    out = []
    for name in names:
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        if name is None or isinstance(name, (dict, list)):
            continue
        name = str(name).strip()
        if name and name.lower() != "nan":
            out.append(name)
    return out


def _as_orpha_id(orpha_id: Any) -> str | None:
    if orpha_id is None:
        return None
    if hasattr(orpha_id, "item") and not isinstance(orpha_id, (str, bytes)):
        try:
            orpha_id = orpha_id.item()
        except (ValueError, TypeError, AttributeError):
            return None
    if isinstance(orpha_id, float):
        if orpha_id != orpha_id:  # NaN
            return None
        orpha_id = int(orpha_id) if orpha_id.is_integer() else orpha_id
    text = str(orpha_id).strip()
    if text.upper().startswith("ORPHA:"):
        text = text[len("ORPHA:"):].strip()
    return text or None


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, list):  # a conversational completion
        return _completion_text(value)
    return str(value)


def _completion_text(completion: Any) -> str:
    """Return the text of a completion: a string, or TRL's [{"role": "assistant", "content": ...}]."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        completion = [completion]
    parts = []
    for message in completion or []:
        content = message.get("content", "") if isinstance(message, Mapping) else message
        if isinstance(content, list):  # multimodal parts: [{"type": "text", "text": ...}]
            content = "".join(p.get("text", "") if isinstance(p, Mapping) else str(p) for p in content)
        parts.append(content if isinstance(content, str) else _as_text(content))
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# 5. Matching: the seed matcher (the original's, exactly) and the clinical matcher
# ---------------------------------------------------------------------------------------------


def seed_similarity(prediction: str, reference: str) -> float:
    """Return the original score: 1.0 if equal after lower/strip, else 0.8*SequenceMatcher + 0.2*Jaccard."""
    pred, gold = prediction.strip().lower(), reference.strip().lower()
    if pred == gold:
        return 1.0
    ratio = difflib.SequenceMatcher(None, pred, gold).ratio()
    pred_words, gold_words = set(_SEED_WORDS.findall(pred)), set(_SEED_WORDS.findall(gold))
    union = pred_words | gold_words
    jaccard = len(pred_words & gold_words) / len(union) if union else 0.0  # both empty: no words to compare
    return 0.8 * ratio + 0.2 * jaccard


def _seed_match(prediction: str, references: Sequence[str]) -> bool:
    pred = prediction.strip().lower()
    for reference in references:
        gold = reference.strip().lower()
        if pred == gold:
            return True
        # ratio <= 2*min(len)/sum(len) and Jaccard <= 1: skip SequenceMatcher when even that bound
        # cannot pass 0.8. Same decisions, and a huge answer costs O(len) instead of O(len^2).
        total = len(pred) + len(gold)
        if total and 0.8 * 2 * min(len(pred), len(gold)) / total + 0.2 <= 0.8 - 1e-9:
            continue
        if seed_similarity(pred, gold) > 0.8:
            return True
    return False


@dataclass(frozen=True)
class _Name:
    """A diagnosis name, normalised once (cached) for every clinical comparison."""

    key: str  # canonical text: the string two names must share to be the same diagnosis
    tokens: tuple[str, ...]
    designators: tuple[str, ...]  # subtype numbers and letters ("1", "2a", "c"), sorted
    prefixes: tuple[str, ...]  # e.g. ("hypo",), sorted
    qualifiers: frozenset[str]
    acronym_words: tuple[str, ...]  # tokens an acronym is built from (designators left out)
    acronym_designator: str  # digits/letters an acronym ends with ("2a" for MEN 2A)
    letters: Counter  # character counts of `key`: a cheap upper bound on the difflib ratio


def _strip_wrappers(text: str) -> str:
    """Return `text` without markdown, 'Diagnosis:'-style lead-ins and trailing punctuation."""
    text = _MARKDOWN.sub(" ", text.translate(_APOSTROPHES))
    if "(" in text:
        text = _HEDGE_PAREN.sub(" ", text)
    text = _SPACES.sub(" ", text).strip()
    lead_in = _LEADING_WRAPPER.match(text[:200])  # a lead-in is short; the cap keeps this linear
    if lead_in:
        text = text[lead_in.end():]
    text = text.rstrip(_END_PUNCTUATION)
    head, tail = text[:-80], text[-80:]
    return (head + _TRAILING_WRAPPER.sub("", tail, count=1)).rstrip(_END_PUNCTUATION)


def _drop_acronym_parens(text: str) -> str:
    """Remove '(DLBCL)' after a name, and use the name when it is written 'DLBCL (full name)'."""
    if "(" not in text:
        return text
    match = _PAREN.search(text)
    if match is None:
        return text
    inner = match.group(1).strip()
    outer = (text[:match.start()] + " " + text[match.end():]).strip()
    if _looks_like_acronym(inner):
        # "NF1 (NF2)": an acronym with its own subtype number stays, so the number is never lost
        designator = _ACRONYM_SHAPE.match(inner).group(2)
        if designator is None:
            return outer
        # (no other parenthesis in `outer`: _normalize(outer) then cannot come back here)
        if "(" not in outer and designator.lower() == _normalize(outer).acronym_designator:
            return outer
        return text
    if _looks_like_acronym(outer) and _acronym_of(outer, _normalize(inner)):
        return inner
    return text


def _looks_like_acronym(text: str) -> bool:
    match = _ACRONYM_SHAPE.match(text)
    if match is None:
        return False
    letters = match.group(1)
    return sum(c.isupper() for c in letters) >= 2 and (len(letters) >= 3 or match.group(2) is not None)


def _ascii_fold(text: str) -> str:
    text = text.translate(_TRANSLITERATE)
    if not text.isascii():
        text = _GREEK_RE.sub(lambda m: " " + _GREEK[m.group(0)] + " ", text)
        text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return text


def _canonical_designator(token: str) -> str | None:
    """Return the designator a token stands for ('ii' -> '2', 'iia' -> '2a', '1a', 'c'), or None."""
    if token.isdigit() or (token[:-1].isdigit() and token[-1].isalpha() and len(token) <= 4):
        return token
    if token in _ROMAN:
        return _ROMAN[token]
    match = _ROMAN_WITH_LETTER.match(token)
    if match:
        return _ROMAN[match.group(1)] + match.group(2)
    if token in _WORD_NUMBERS:
        return _WORD_NUMBERS[token]
    if len(token) == 1 and token.isalpha():
        return token
    return None


@functools.lru_cache(maxsize=1 << 16)  # lru_cache is thread-safe; references repeat on every call
def _normalize(name: str) -> _Name:
    text = _drop_acronym_parens(_strip_wrappers(name))
    text = _ascii_fold(text).lower()
    text = _POSSESSIVE.sub("", text)
    text = _NON_ALNUM.sub(" ", text).strip()
    for pattern, repl in _SPELLING:
        text = pattern.sub(repl, text)
    tokens = text.split()
    if len(tokens) > 1 and tokens[0] in _ARTICLES:
        tokens = tokens[1:]
    # "X NOS", "X, not otherwise specified": the qualifier says no subtype is known, so it is X itself
    if len(tokens) > 3 and tokens[-3:] == ["not", "otherwise", "specified"]:
        tokens = tokens[:-3]
    elif len(tokens) > 1 and tokens[-1] == "nos":
        tokens = tokens[:-1]
    # roman numerals and number words become digits where they designate a subtype
    for i, token in enumerate(tokens):
        after_word = i > 0 and tokens[i - 1] in _DESIGNATOR_WORDS
        if after_word or i == len(tokens) - 1:
            value = _canonical_designator(token)
            if value is not None and (after_word or token in _ROMAN):
                tokens[i] = value
    # "Type 1 Gaucher disease" == "Gaucher disease type 1" == "Gaucher disease 1": move "type N" last
    moved: list[str] = []
    kept: list[str] = []
    i = 0
    while i < len(tokens):
        if tokens[i] in _MOVABLE_DESIGNATOR_WORDS and i + 1 < len(tokens) \
                and _canonical_designator(tokens[i + 1]) is not None:
            moved.append(tokens[i + 1])
            i += 2
            continue
        kept.append(tokens[i])
        i += 1
    tokens = tuple(kept + moved)
    designators = tuple(sorted(t for t in tokens if any(c.isdigit() for c in t)
                               or (len(t) == 1 and t.isalpha() and t not in _QUALIFIERS)))
    prefixes = tuple(sorted(p for t in tokens for p in _PREFIXES if t.startswith(p)))
    qualifiers = frozenset(t for t in tokens if t in _QUALIFIERS)
    acronym_words = tuple(t for t in tokens if not any(c.isdigit() for c in t))
    acronym_designator = "".join(t for t in tokens if any(c.isdigit() for c in t))
    key = " ".join(tokens)
    return _Name(key=key, tokens=tokens, designators=designators, prefixes=prefixes, qualifiers=qualifiers,
                 acronym_words=acronym_words, acronym_designator=acronym_designator, letters=Counter(key))


def normalize_diagnosis(name: str) -> str:
    """Return the clinical canonical form of a diagnosis name ("" when nothing is left).

    Accents, case, punctuation, possessive 's, British spelling, roman numerals and "type N"
    order are normalised, and a lead-in such as "The most likely diagnosis is" is dropped:
    "Type II Gaucher's disease." and "gaucher disease type 2" both give "gaucher disease 2".
    """
    return _normalize(_as_text(name)[:10_000]).key


def _acronym_of(acronym: str, name: _Name) -> bool:
    """True when `acronym` (e.g. 'DLBCL', 'HLH', 'NF1', 'MEN2A') abbreviates the normalised name."""
    match = _ACRONYM_SHAPE.match(acronym.strip())
    if match is None:
        return False
    letters = match.group(1).lower()
    designator = (match.group(2) or "").lower()
    if designator != name.acronym_designator or not name.acronym_words:
        return False
    # Each word gives its first letter, plus up to two later letters (lympho-histiocytosis = LH);
    # optional words may give nothing. `states` holds how many acronym letters are consumed.
    states = {0}
    for word in name.acronym_words:
        following: set[int] = set()
        optional = word in _ACRONYM_OPTIONAL
        for consumed in states:
            if optional:
                following.add(consumed)
            if consumed < len(letters) and letters[consumed] == word[0]:
                position, consumed = 1, consumed + 1
                following.add(consumed)
                for _ in range(2):
                    if consumed >= len(letters):
                        break
                    position = word.find(letters[consumed], position) + 1
                    if position == 0:
                        break
                    consumed += 1
                    following.add(consumed)
        states = following
        if not states:
            return False
    return len(letters) in states


def is_multiple_diagnoses(answer: str) -> bool:
    """True when an answer names several diagnoses ("X; Y", "X or Y", "X vs Y", a numbered list)."""
    text = _as_text(answer).strip()
    lowered = text.lower().replace("with or without", " ")
    if _MULTI_SEPARATOR.search(lowered):
        return True
    items = _NUMBERED_ITEM.finditer(text)
    return next(items, None) is not None and next(items, None) is not None


def is_negated(answer: str) -> bool:
    """True when an answer denies a diagnosis ("Not X", "X ruled out", "No evidence of X").

    Kept public: the judge reward's prefilter (judge_reward.py) sends no negated answer to the judge."""
    return _is_negated(_strip_wrappers(_as_text(answer)))


def _is_negated(stripped: str) -> bool:
    """True when an answer (wrappers stripped) denies a diagnosis ("Not X", "X ruled out")."""
    return bool(_NEGATION.match(stripped) or _NEGATION.search(stripped[-40:]))


@functools.lru_cache(maxsize=1 << 16)  # GRPO groups repeat answers
def _answer_info(prediction: str) -> tuple[_Name, bool, bool, str | None]:
    """Return (normalised name, names several, denies one, the answer when it is an acronym)."""
    stripped = _strip_wrappers(prediction)
    return (_normalize(prediction), is_multiple_diagnoses(prediction), _is_negated(stripped),
            stripped if _looks_like_acronym(stripped) else None)


def _clinical_match(prediction: str, references: Sequence[str], lexicon: "Lexicon | None",
                    orpha_id: str | None, threshold: float) -> bool:
    pred, multiple, negated, acronym = _answer_info(prediction)
    if not pred.key:
        return False
    refs = [_normalize(r) for r in references]
    # 1. same canonical name (this also accepts a reference that itself contains "or" or ";")
    if any(pred.key == ref.key for ref in refs):
        return True
    if multiple or negated:  # a list, "X or Y", or a negation never earns credit
        return False
    # 2. "Marfan" for "Marfan syndrome": only a generic last word may be missing from the answer
    if pred.tokens[-1] not in _GENERIC_TAIL and any(
            ref.tokens and ref.tokens[-1] in _GENERIC_TAIL and ref.tokens[:-1] == pred.tokens for ref in refs):
        return True
    # 3. the lexicon: the answer's name resolves to the ground truth's Orpha code
    if lexicon is not None:
        codes = lexicon.codes.get(pred.key)
        if codes:
            targets = {orpha_id} if orpha_id else set()
            for ref in refs:
                targets.update(lexicon.codes.get(ref.key, ()))
            if codes & targets:
                return True
    # 4. an acronym of a reference ("DLBCL", "HLH", "NF1")
    if acronym is not None and any(_acronym_of(acronym, ref) for ref in refs):
        return True
    # 5. a spelling variant: same subtype, prefixes and qualifiers, not a broader name, close text
    if any(_fuzzy_ratio(pred, ref, threshold) >= threshold for ref in refs):
        return True
    # 6. a parenthetical after the name: "X type 2 (Y syndrome)", "Neurofibromatosis (NF2)"
    return "(" in prediction and _parenthetical_match(prediction, references, lexicon, orpha_id, threshold)


def _parenthetical_match(prediction: str, references: Sequence[str], lexicon: "Lexicon | None",
                         orpha_id: str | None, threshold: float) -> bool:
    """True when 'OUTER (INNER)' names a reference and neither part adds anything the reference lacks.

    Either the name outside matches and the inner text (an eponym or synonym) brings no subtype,
    prefix or qualifier the reference lacks ("X type 1 (X type 2)" never matches "X type 2"), or the
    inner text matches and the name outside is made of the reference's own words: the reference
    itself or a broader name of it ("Neurofibromatosis (NF2)"). So "A (B)" never pays for B when A
    is another disease: it is no hedge between two diagnoses.
    """
    stripped = _strip_wrappers(prediction)
    match = _PAREN.search(stripped)
    if match is None or stripped.count("(") != 1:
        return False
    inner_text = match.group(1).strip()
    outer_text = (stripped[:match.start()] + " " + stripped[match.end():]).strip()
    inner, outer = _normalize(inner_text), _normalize(outer_text)
    if not inner.key or not outer.key or _is_negated(inner_text) or _is_negated(outer_text):
        return False
    for reference in references:
        ref = _normalize(reference)
        if _adds_nothing(inner, ref) and _clinical_match(outer_text, [reference], lexicon, orpha_id, threshold):
            return True
        if set(outer.tokens) <= set(ref.tokens) and _clinical_match(inner_text, [reference], lexicon, orpha_id,
                                                                    threshold):
            return True
    return False


def _adds_nothing(inner: _Name, ref: _Name) -> bool:
    """True when a parenthetical carries no subtype, prefix or qualifier that the reference lacks."""
    return (set(inner.designators) <= set(ref.designators) and set(inner.prefixes) <= set(ref.prefixes)
            and inner.qualifiers <= ref.qualifiers)


def _fuzzy_ratio(pred: _Name, ref: _Name, threshold: float = 0.0) -> float:
    """Return the difflib ratio of two names that pass every guard, else 0.0 (also when it must be
    below `threshold`: difflib's ratio is at most the shared characters over the total)."""
    if pred.designators != ref.designators or pred.prefixes != ref.prefixes or pred.qualifiers != ref.qualifiers:
        return 0.0
    pred_words, ref_words = set(pred.tokens), set(ref.tokens)
    if pred_words < ref_words or ref_words < pred_words:  # broader (or narrower) than the reference
        return 0.0
    total = len(pred.key) + len(ref.key)
    if not total or 2 * min(len(pred.key), len(ref.key)) / total < threshold:
        return 0.0
    if 2 * sum((pred.letters & ref.letters).values()) / total < threshold:
        return 0.0
    return difflib.SequenceMatcher(None, pred.key, ref.key, autojunk=False).ratio()


def match_diagnosis(prediction: str, references: Sequence[str], method: str = "clinical",
                    lexicon: "Lexicon | str | os.PathLike | None" = None, *, orpha_id: str | None = None,
                    threshold: float = 0.9) -> bool:
    """True when `prediction` names the same diagnosis as one of `references`.

    `method="seed"` is the original study's rule; `method="clinical"` (default) normalises names and
    never accepts a different subtype, prefix, qualifier, broader name, negation or list. With a
    `lexicon` (a `Lexicon` or a path), a name that resolves to `orpha_id` or to a reference's code matches.
    """
    prediction = _as_text(prediction)
    references = _as_names(references)
    if not references:
        return False
    if method == "seed":
        return _seed_match(prediction, references)
    if method != "clinical":
        raise ConfigError("method", f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not prediction.strip() or len(prediction) > 10_000:
        return False
    if lexicon is not None and not isinstance(lexicon, Lexicon):
        lexicon = load_lexicon(lexicon)
    return _clinical_match(prediction, references, lexicon, _as_orpha_id(orpha_id), threshold)


def similarity(prediction: str, references: Sequence[str], method: str = "clinical",
               lexicon: "Lexicon | str | os.PathLike | None" = None, *, orpha_id: str | None = None,
               threshold: float = 0.9) -> float:
    """Return a graded similarity in [0, 1]: the best over `references`.

    seed: the original 0.8*SequenceMatcher + 0.2*Jaccard (1.0 when equal), > 0.8 passes.
    clinical: 1.0 for a match; otherwise the best difflib ratio of the normalised names, kept below
    `threshold`, so `similarity >= threshold` exactly when `match_diagnosis` is True.
    """
    prediction = _as_text(prediction)
    references = _as_names(references)
    if not references:
        return 0.0
    if method == "seed":
        return max(seed_similarity(prediction, r) for r in references)
    if match_diagnosis(prediction, references, method, lexicon, orpha_id=orpha_id, threshold=threshold):
        return 1.0
    pred = _normalize(prediction[:10_000]).key[:1000]  # difflib is quadratic: compare bounded prefixes
    best = 0.0
    for ref in references:
        key = _normalize(ref).key[:1000]
        if pred and key:
            best = max(best, difflib.SequenceMatcher(None, pred, key, autojunk=False).ratio())
    return min(best, threshold - 1e-6)


# ---------------------------------------------------------------------------------------------
# 6. Orphanet: the lexicon (names, synonyms -> codes) and the hierarchy (parents)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lexicon:
    """Normalised disease names and synonyms -> Orpha codes (O(1) lookups)."""

    path: str
    codes: Mapping[str, frozenset[str]]  # normalize_diagnosis(name) -> Orpha codes
    names: Mapping[str, tuple[str, ...]]  # Orpha code -> names, preferred name first

    def lookup(self, name: str) -> frozenset[str]:
        """Return the Orpha codes that `name` resolves to (empty when unknown)."""
        return self.codes.get(normalize_diagnosis(name), frozenset())

    def __len__(self) -> int:
        return len(self.names)

_LEXICONS: dict[str, Lexicon] = {}

_LEXICON_LOCK = threading.Lock()
# (kind, absolute path as given) -> the loaded file: realpath costs a syscall per path component,
# and compute_score asks for its lexicon and hierarchy on every call. (A relative path is resolved
# each time: the working directory may change.)
_LOADED_BY_ABSOLUTE_PATH: dict[tuple[str, str], Any] = {}


def load_lexicon(path: str | os.PathLike) -> Lexicon:
    """Load Orphanet `en_product1.xml` (names + synonyms) or `orphanet_hypernym.json` (names), once per path."""
    given = os.fspath(path)
    lexicon = _LOADED_BY_ABSOLUTE_PATH.get(("lexicon", given))  # scoring asks on every call: no syscall
    if lexicon is not None:
        return lexicon
    key = os.path.realpath(given)
    lexicon = _LEXICONS.get(key)
    if lexicon is None:
        with _LEXICON_LOCK:  # one thread parses; the others wait and reuse it
            lexicon = _LEXICONS.get(key)
            if lexicon is None:
                lexicon = _read_lexicon(key)
                _LEXICONS[key] = lexicon
                logger.info("lexicon %s: %d Orpha codes, %d names", key, len(lexicon.names), len(lexicon.codes))
    if os.path.isabs(given):
        _LOADED_BY_ABSOLUTE_PATH[("lexicon", given)] = lexicon
    return lexicon


def _read_lexicon(path: str) -> Lexicon:
    if not os.path.isfile(path):
        raise InputFileError(path, None, "lexicon", "file not found")
    with open(path, "rb") as fh:
        head = fh.read(512).lstrip()
    entries = _read_orphanet_xml(path) if head.startswith(b"<") else _read_hypernym_json(path)
    names: dict[str, list[str]] = {}
    codes: dict[str, set[str]] = {}
    for code, name in entries:
        names.setdefault(code, [])
        if name not in names[code]:
            names[code].append(name)
        key = normalize_diagnosis(name)
        if key:
            codes.setdefault(key, set()).add(code)
    return Lexicon(path=path, codes={k: frozenset(v) for k, v in codes.items()},
                   names={k: tuple(v) for k, v in names.items()})


def _read_orphanet_xml(path: str) -> list[tuple[str, str]]:
    """Read Orphanet product 1: each <Disorder>'s <OrphaCode>, <Name> and <SynonymList>/<Synonym>."""
    import xml.etree.ElementTree as ElementTree

    entries: list[tuple[str, str]] = []
    try:
        for _, element in ElementTree.iterparse(path, events=("end",)):
            if element.tag != "Disorder":
                continue
            code = (element.findtext("OrphaCode") or "").strip()
            if code:
                for name in [element.findtext("Name")] + [s.text for s in element.iterfind("SynonymList/Synonym")]:
                    if name and name.strip():
                        entries.append((code, name.strip()))
            element.clear()
    except ElementTree.ParseError as exc:
        line = exc.position[0] if getattr(exc, "position", None) else None
        raise InputFileError(path, line, None, f"not valid Orphanet XML ({exc})") from None
    if not entries:
        raise InputFileError(path, None, "Disorder", "no <Disorder> with <OrphaCode> and <Name> found")
    return entries


def _read_hypernym_json(path: str) -> list[tuple[str, str]]:
    """Read RareArena's orphanet_hypernym.json names: (Orpha code, name) per entity."""
    return [(code, entity.name) for code, entity in load_hierarchy(path).entities.items()]


@dataclass(frozen=True)
class OrphanetParent:
    """One parent group of an Orphanet entity, as orphanet_hypernym.json lists it."""

    name: str
    disease_count: int  # `parent_disease_count`: diseases the group holds
    child_count: int | None = None


@dataclass(frozen=True)
class OrphanetEntity:
    code: str
    name: str
    type: str
    parents: tuple[OrphanetParent, ...]  # in file order, duplicates kept (RareArena keeps them)


@dataclass(frozen=True)
class Hierarchy:
    """RareArena's orphanet_hypernym.json: Orpha code -> entity, with O(1) lookups by code and name."""

    path: str
    entities: Mapping[str, OrphanetEntity]  # Orpha code -> entity, in file order
    by_name: Mapping[str, tuple[str, ...]]  # exact entity name -> Orpha codes, in file order

    def name(self, code: Any) -> str | None:
        """Return the Orphanet name of a code, or None when the code is not in the file."""
        entity = self.entities.get(str(code).strip())
        return entity.name if entity else None

    def parents(self, code: Any, max_diseases: int | None = MAX_PARENT_DISEASES) -> list[str]:
        """Return the names of a code's parents holding at most `max_diseases` diseases (None: all),
        in file order; empty for an unknown code."""
        entity = self.entities.get(str(code).strip())
        if entity is None:
            return []
        return [p.name for p in entity.parents if max_diseases is None or p.disease_count <= max_diseases]

    def __len__(self) -> int:
        return len(self.entities)

_HIERARCHIES: dict[str, Hierarchy] = {}

# Its own lock: load_lexicon holds _LEXICON_LOCK while it reads a hypernym file through load_hierarchy.
_HIERARCHY_LOCK = threading.Lock()


def load_hierarchy(path: str | os.PathLike) -> Hierarchy:
    """Load RareArena's orphanet_hypernym.json once per path (thread-safe); validate every entity.

    A bad file fails here with `InputFileError` naming the entity and field, not half-way through
    a paid judge run or a training step.
    """
    given = os.fspath(path)
    hierarchy = _LOADED_BY_ABSOLUTE_PATH.get(("hierarchy", given))
    if hierarchy is not None:
        return hierarchy
    key = os.path.realpath(given)
    hierarchy = _HIERARCHIES.get(key)
    if hierarchy is None:
        with _HIERARCHY_LOCK:
            hierarchy = _HIERARCHIES.get(key)
            if hierarchy is None:
                hierarchy = _HIERARCHIES[key] = _read_hierarchy(key, given)
    if os.path.isabs(given):
        _LOADED_BY_ABSOLUTE_PATH[("hierarchy", given)] = hierarchy
    return hierarchy


def _read_hierarchy(path: str, shown: str) -> Hierarchy:
    if not os.path.isfile(path):
        raise InputFileError(shown, None, None, "Orphanet hierarchy file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            records = json.load(fh)
    except json.JSONDecodeError as exc:
        raise InputFileError(shown, exc.lineno, None, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except UnicodeDecodeError:
        raise InputFileError(shown, None, None, "not UTF-8 text") from None
    if not isinstance(records, list):
        raise InputFileError(shown, 1, None, "expected a JSON list of Orphanet entities")
    entities: dict[str, OrphanetEntity] = {}
    by_name: dict[str, list[str]] = {}
    for index, record in enumerate(records):
        if not isinstance(record, dict) or "Orphanetid" not in record:
            raise InputFileError(shown, None, f"[{index}].Orphanetid", "missing")
        if not isinstance(record.get("name"), str) or not record["name"].strip():
            raise InputFileError(shown, None, f"[{index}].name", "missing or not a string")
        parents = []
        for number, parent in enumerate(record.get("parents") or []):
            if not (isinstance(parent, dict) and isinstance(parent.get("parent"), str)
                    and isinstance(parent.get("parent_disease_count"), int)
                    and not isinstance(parent.get("parent_disease_count"), bool)):
                raise InputFileError(shown, None, f"[{index}].parents[{number}]",
                                     "each parent needs a string 'parent' and an integer 'parent_disease_count'")
            child_count = parent.get("parent_child_count")
            parents.append(OrphanetParent(parent["parent"].strip(), parent["parent_disease_count"],
                                          child_count if isinstance(child_count, int) else None))
        code = str(record["Orphanetid"]).strip()
        name = record["name"].strip()
        entities[code] = OrphanetEntity(code, name, str(record.get("type") or ""), tuple(parents))
        by_name.setdefault(name, []).append(code)
    return Hierarchy(path=path, entities=entities, by_name={k: tuple(v) for k, v in by_name.items()})


# ---------------------------------------------------------------------------------------------
# 7. Language consistency
# ---------------------------------------------------------------------------------------------

_BLOCK = 2048  # characters screened at a time

_MAX_BLOCKS = 24  # candidate blocks examined per text: bounded work, however long the text

_langid: Any = None

_langid_loaded = False

_LANGID_LOCK = threading.Lock()


def _language_identifier() -> Any:
    """Return py3langid's identifier restricted to Latin-script languages, or None when not installed."""
    global _langid, _langid_loaded
    if not _langid_loaded:
        with _LANGID_LOCK:
            if not _langid_loaded:
                try:
                    from py3langid.langid import MODEL_FILE, LanguageIdentifier

                    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
                    identifier.set_languages(_LANGID_LANGUAGES)
                    _langid = identifier
                except Exception as exc:  # missing, or a version with another API: fall back to word lists
                    logger.info("py3langid unavailable (%s): using function-word lists only", exc)
                    _langid = None
                _langid_loaded = True
    return _langid


def is_mixed_language(text: str) -> bool:
    """True when `text` contains another language than English.

    Flags other scripts (CJK, kana, Hangul, Cyrillic, Arabic, Hebrew, Thai, Devanagari, Greek words)
    and whole sentences in another Latin-script language (Spanish, French, German, ...), but not
    medical English with diacritics (Ménière), Greek letters (β-thalassemia), units and symbols
    (°C, µg, ≥) or Latin phrases (situs inversus, in situ). Linear time; a sentence is confirmed
    with py3langid when it is installed.
    """
    text = _as_text(text)
    if _OTHER_SCRIPT.search(text):
        return True
    greek = _GREEK_LETTER.search(text)
    if greek is not None and _GREEK_WORD.search(text, greek.start()):
        return True
    return _has_foreign_latin_sentence(text)


def _has_foreign_latin_sentence(text: str) -> bool:
    # Blocks are screened with C-speed set operations; only blocks holding two foreign function
    # words (or three accented letters) have their sentences examined.
    lowered = text.lower()
    candidates = []
    for start in range(0, len(lowered), _BLOCK):
        block = lowered[start:start + _BLOCK]
        if sum(map(_FOREIGN_WORDS.__contains__, block.split())) >= 2 or _has_accents(block, 3):
            candidates.append(block)
    if len(candidates) > _MAX_BLOCKS:  # keep the start and the end, where other languages get appended
        candidates = candidates[:_MAX_BLOCKS // 2] + candidates[-(_MAX_BLOCKS // 2):]
    return any(_is_foreign_sentence(sentence) for block in candidates for sentence in _SENTENCES.split(block))


def _has_accents(text: str, at_least: int) -> bool:
    matches = _ACCENTED.finditer(text)
    return all(next(matches, None) is not None for _ in range(at_least))


def _is_foreign_sentence(sentence: str) -> bool:
    """True when a (lower-cased) sentence is in another Latin-script language than English or Latin."""
    words = _WORDS.findall(sentence)
    if len(words) < 4:
        return False
    foreign = sum(map(_FOREIGN_WORDS.__contains__, words))
    english = sum(map(_ENGLISH_WORDS.__contains__, words))
    if not ((foreign >= 2 and foreign > english) or (english <= 1 and len(words) >= 5
                                                      and _has_accents(sentence, 3))):
        return False
    identifier = _language_identifier()
    if identifier is None:  # word lists alone: demand more evidence
        letters = sum(map(len, words))
        return ((foreign >= 3 and foreign >= 2 * english + 1) or (foreign >= 2 and english == 0)
                or len(_ACCENTED.findall(sentence)) >= 0.15 * letters)
    language, probability = identifier.classify(sentence)
    return language not in _NOT_FOREIGN and probability >= 0.6


# ---------------------------------------------------------------------------------------------
# 8. Vocabulary: the tables and patterns the parser, the matchers and the language check read
# ---------------------------------------------------------------------------------------------

_NON_SPACE = re.compile(r"\S")

_LIST_MARKER = re.compile(r"^\s*(?:\(?\d{1,2}\s*[.):\]]|[-*\u2022])\s*")

_INLINE_NUMBER = re.compile(r"(?:^|\s)\(?\d{1,2}[.)]\s+")

# "1. Gaucher disease - splenomegaly and bone crises": a spaced dash starts the item's explanation
# (names use unspaced hyphens: Charcot-Marie-Tooth).
_ITEM_EXPLANATION = re.compile(r"\s[-\u2013\u2014]\s")

_SEED_WORDS = re.compile(r"\w+")

_MARKDOWN = re.compile(r"[*_`#\"\u201c\u201d]+")

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})

# Phrases around the name that say "this is my answer" rather than name a disease.
_LEADING_WRAPPER = re.compile(
    r"^(?:(?:final|answer|dx|"
    r"(?:(?:the|my|our)\s+)?(?:(?:final|most\s+likely|more\s+likely|likely|probable|primary|working|clinical|"
    r"leading|presumptive|definitive)\s+)*diagnos[ie]s(?:\s+is)?|"
    r"(?:this|it)\s+is(?:\s+(?:most\s+likely|likely|probably|consistent\s+with))?|"
    r"(?:the\s+)?patient\s+(?:most\s+likely\s+|likely\s+|probably\s+)?(?:has|had)|"
    r"(?:most\s+)?likely|probably|probable|suspected|presumed|possible|consistent\s+with|"
    r"suggestive\s+of|compatible\s+with)\s*[:\-\u2013\u2014=]?\s*)+",
    re.IGNORECASE)

# Applied to the last 80 characters only, after trailing punctuation is gone: bounded work.
_TRAILING_WRAPPER = re.compile(
    r"(?:,?\s(?:is\s)?(?:the\s)?(?:most\slikely|likely|final|probable)\sdiagnosis|\sis\sthe\sdiagnosis)$",
    re.IGNORECASE)

_END_PUNCTUATION = " .!?;:,"

_HEDGE_PAREN = re.compile(
    r"\(\s*(?:(?:most|more|very)\s+)?(?:likely|probable|possible|suspected|favou?red)\s*\)", re.IGNORECASE)

_NEGATION = re.compile(
    r"^(?:not|no|without|unlikely|rule\sout|ruled\sout|r/o|excluded?|absence\sof|negative\sfor|cannot\sbe|"
    r"there\sis\sno)\b|\b(?:is\sunlikely|ruled\sout|excluded|is\snot\slikely|not\slikely|is\snot\ssupported)$",
    re.IGNORECASE)

_MULTI_SEPARATOR = re.compile(
    r";|\n|\b(?:or|versus|vs|differential)\b|[a-z0-9]{3} ?/ ?[a-z0-9]{3}", re.IGNORECASE)

_NUMBERED_ITEM = re.compile(r"(?:^|\s)\(?\d{1,2}[.)]\s+\S")

_PAREN = re.compile(r"\(([^()]{1,80})\)")

_ACRONYM_SHAPE = re.compile(r"^([A-Za-z]{2,10})[-\s]?(\d{1,2}[A-Za-z]?)?$")

_NON_ALNUM = re.compile(r"[^a-z0-9]+")

_SPACES = re.compile(r"\s+")

_POSSESSIVE = re.compile(r"(?<=\w)'s\b|(?<=s)'(?=\s|$)")

# British -> American spelling, on whole normalised words (both sides get the same treatment).
_SPELLING = [(re.compile(pattern), repl) for pattern, repl in [
    (r"aem", "em"),                 # anaemia, leukaemia, haem-, ischaemic, hypokalaemic
    (r"\boe(?=[a-z])", "e"),        # oedema, oesophageal, oestrogen
    (r"(?<=rrh)oe", "e"),           # diarrhoea, amenorrhoea
    (r"\bcoel", "cel"),             # coeliac
    (r"\bfoet", "fet"),             # foetal
    (r"paed", "ped"),               # paediatric, orthopaedic
    (r"\baet", "et"),               # aetiology
    (r"(?<=[gcf])aec", "ec"),       # gynaecology, caecum, faeces
    (r"anaes", "anes"),             # anaesthesia
    (r"\b(tum|col|behavi|hum|lab)our", r"\1or"),
    (r"sulph", "sulf"),
    (r"\bleuc", "leuk"),            # leucodystrophy, leucocyte
    (r"ae", "e"),                   # remaining ae digraphs (haematoma -> hematoma handled above too)
]]

_TRANSLITERATE = str.maketrans({"ß": "ss", "æ": "ae", "Æ": "ae", "ø": "o", "Ø": "o", "œ": "oe", "Œ": "oe",
                                "ł": "l", "Ł": "l", "đ": "d", "Đ": "d", "ı": "i"})

_GREEK = {"α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "ε": "epsilon", "κ": "kappa", "λ": "lambda",
          "μ": "mu", "θ": "theta", "ω": "omega", "σ": "sigma", "τ": "tau", "ζ": "zeta", "η": "eta"}

_GREEK_RE = re.compile("[" + "".join(_GREEK) + "]")

_ROMAN = {"i": "1", "ii": "2", "iii": "3", "iv": "4", "v": "5", "vi": "6", "vii": "7", "viii": "8", "ix": "9",
          "x": "10", "xi": "11", "xii": "12", "xiii": "13", "xiv": "14", "xv": "15"}

_WORD_NUMBERS = {"one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
                 "eight": "8", "nine": "9", "ten": "10"}

_ROMAN_WITH_LETTER = re.compile(r"^(i{1,3}|iv|vi{0,3}|ix|x)([a-e])$")

_DESIGNATOR_WORDS = {"type", "subtype", "group", "class", "grade", "stage", "form", "factor", "phase",
                     "variant", "complementation", "mody", "pattern"}

_MOVABLE_DESIGNATOR_WORDS = {"type", "subtype"}

_GENERIC_TAIL = {"disease", "syndrome", "disorder"}

_ARTICLES = {"a", "an", "the"}

# Prefixes that turn a disease into a different one (hypo- vs hyper-, non-Hodgkin vs Hodgkin).
_PREFIXES = ("non", "pseudo", "hypo", "hyper", "intra", "extra", "micro", "macro", "poly", "mono", "uni", "bi",
             "anti", "para", "post", "pre", "neo")

# Modifiers whose presence or absence names another entity (acute vs chronic leukaemia).
_QUALIFIERS = frozenset({
    "acute", "chronic", "subacute", "early", "late", "infantile", "juvenile", "adult", "neonatal", "congenital",
    "acquired", "dominant", "recessive", "linked", "x", "y", "primary", "secondary", "benign", "malignant",
    "familial", "sporadic", "central", "peripheral", "left", "right", "unilateral", "bilateral", "partial",
    "complete", "mild", "severe", "classic", "atypical", "isolated", "syndromic", "nonsyndromic", "focal",
    "generalized", "diffuse", "localized", "systemic", "cutaneous", "ocular", "cerebral", "spinal", "renal",
    "hepatic", "cardiac", "pulmonary", "male", "female", "maternal", "paternal", "hereditary", "idiopathic",
    "transient", "permanent", "lethal", "perinatal", "prenatal", "childhood", "onset", "small",
    "large", "giant", "b", "t", "nk"})

# Words an acronym may skip (tetralogy of Fallot = TOF or TF; Niemann-Pick disease type C = NPC).
_ACRONYM_OPTIONAL = frozenset({"of", "and", "with", "the", "to", "in", "due", "for", "on", "by", "a", "an",
                               "disease", "syndrome", "disorder", "type"})

# Letters of scripts that never appear in English clinical text: Cyrillic, Armenian, Hebrew, Arabic,
# Devanagari, Bengali, Thai, Georgian, Hangul, kana, CJK ideographs. (Full-width punctuation such as
# '，' alone is not a language.)
_OTHER_SCRIPT = re.compile(
    "[\u0400-\u052f\u0531-\u0587\u05d0-\u05ea\u0620-\u064a\u066e-\u06d3\u0750-\u077f\u0904-\u0939"
    "\u0985-\u09b9\u0e01-\u0e30\u10a0-\u10ff\u1100-\u11ff\u3041-\u3096\u30a1-\u30fa\u3105-\u312f"
    "\u3131-\u318e\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
OTHER_SCRIPT = _OTHER_SCRIPT  # public: browse highlights exactly what is_mixed_language flags

# Greek letters are medical symbols (β-thalassemia, κ light chains); a run of three is a Greek word.
_GREEK_LETTER = re.compile("[\u0370-\u03ff\u1f00-\u1fff]")

_GREEK_WORD = re.compile("[\u0370-\u03ff\u1f00-\u1fff]{3,}")
# A run of other-language text as is_mixed_language counts it (other-script letters, Greek words),
# spaces and digits inside it included: what `browse` highlights, so highlight and flag agree.
OTHER_LANGUAGE_RUN = re.compile(f"(?:{_OTHER_SCRIPT.pattern}|{_GREEK_WORD.pattern})+"
                                f"(?:[\\s\\d]+(?:{_OTHER_SCRIPT.pattern}|{_GREEK_WORD.pattern})+)*")

_WORDS = re.compile(r"[^\W\d_]+")

# Function words of Spanish, French, Italian, Portuguese, German and Dutch that English medical
# text does not use (so: not 'a', 'in', 'die', 'per', 'non', 'von', 'van', 'do', 'as').
_FOREIGN_TEXT = """
el los las del que y con por una es se su sus como más pero también sin desde hace tiene muy este esta fue
al lo para entre según cuando donde hay
le les des du et est une dans pour avec pas sur qui au aux ce cette sont été très mais ou il elle nous
della delle di che è sono nel gli il dei degli alla anche più questo questa ha
não uma com em os das dos ao pelo pela também foi são
der das und ist nicht mit ein eine einer den dem zu auf bei wird sich im auch oder wurde sind
het een niet met op zijn voor ook wordt naar
"""

_ENGLISH_TEXT = """
the and of with is was were in to for on by this that are be been has have had which from an a as at it its
or not no but may can also these there their than after before into patient patients we our should would
"""

_FOREIGN_WORDS = frozenset(_FOREIGN_TEXT.split())

_ENGLISH_WORDS = frozenset(_ENGLISH_TEXT.split())

_ACCENTED = re.compile("[\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff]")

_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")

_LANGID_LANGUAGES = ["en", "la", "es", "fr", "de", "it", "pt", "nl", "ca", "ro", "sv", "da", "no", "pl", "cs",
                     "sk", "sl", "hr", "tr", "id", "ms", "vi", "tl", "fi", "hu", "et", "lv", "lt", "eu", "gl",
                     "af", "sw"]

_NOT_FOREIGN = {"en", "la"}  # Latin phrases (situs inversus, in situ) are medical English
