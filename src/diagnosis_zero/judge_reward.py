"""An LLM-judge reward for GRPO: the rule reward, with the judge asked only where the rules cannot tell.

For each completion (the rule reward, `reward.score_batch`, is computed first and always):
- a strict format failure keeps the rule reward (its format level), with no judge call;
- a list, several diagnoses or a negation gets no credit (the rule reward), with no call;
- a clinical rule match is correct, with no call;
- an answer that is not a plain diagnosis name (see `judge_text`) keeps the rule reward, with no call;
- anything else goes to the per-item judge (`judge.ItemGrader`) with the case's Orphanet parents of
  at most 10 diseases: 2 -> the correct level, 1 -> `partial_reward`, 0 -> the wrong level.

One partial-credit value: `partial_reward` defaults to the rule reward's `partial_credit`, and
`orphanet` to the rule reward's `hierarchy`, so a score 1 from the judge pays what the rules pay
for naming the same small parent group (`partial_level`, `JudgeReward`).

Within a step each (answer, references) pair is asked once; every verdict lands in the SQLite cache
that `diagnosis-zero judge` uses, so evaluation and later epochs reuse it. A judge that is slow, down
or rate-limited is retried by the grader until the step's deadline; whatever is still unanswered then
falls back to the rule reward and is counted in `judge_fallback_rate`. Nothing here raises for a
judge fault, so training never stops or hangs because of the judge.

TRL (1.16 awaits async reward functions on its own event loop): `make_trl_reward_funcs`.
verl 0.9.1 (its naive reward manager awaits an async `compute_score`): point
`reward.custom_reward_function.path` at this file and `name` at `compute_score`. verl loads the file
by path, so imports are absolute and the judge client is imported only when first needed.
"""

# No `from __future__ import annotations`: verl loads this file by path without registering it in
# sys.modules, where dataclasses would look string annotations up.
import asyncio
import dataclasses
import logging
import math
import re
import time
import unicodedata
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from diagnosis_zero import reward
from diagnosis_zero.errors import ConfigError
from diagnosis_zero.judge_items import JudgeAbort, default_cache_path

logger = logging.getLogger(__name__)

PROTOCOLS = ("item",)
RESULT_KEYS = ("judged", "judge_score", "judge_fallback", "judge_cached", "judge_latency")


@dataclass(frozen=True)
class JudgeRewardConfig:
    """Where the judge is and how the reward uses it (recipe key `judge_reward`, a mapping of these)."""

    base_url: str | None = field(default=None, metadata={
        "help": "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 for vLLM; unset = OpenAI"})
    judge_model: str = field(default="gpt-4o", metadata={"help": "judge model name as the endpoint knows it"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={
        "help": "environment variable holding the API key (never the key itself)"})
    protocol: str = field(default="item", metadata={
        "choices": PROTOCOLS, "help": "judge protocol: 'item', one request per distinct answer, cached one by "
                                      "one (RareArena's verbatim protocols grade a whole top-5 per request)"})
    orphanet: str | None = field(default=None, metadata={
        "help": "orphanet_hypernym.json: the case's parents of <= 10 diseases are the judge's score-1 names; "
                "unset = the rule reward's `hierarchy`, and without one the judge gives 2 or 0 only"})
    partial_reward: float | None = field(default=None, metadata={
        "help": "reward level for a judge score of 1; unset = the rule reward's `partial_credit` (default 0.3)"})
    concurrency: int = field(default=32, metadata={"help": "judge requests in flight at once"})
    timeout: float = field(default=10.0, metadata={"help": "seconds before one judge request is abandoned and retried"})
    max_retries: int = field(default=3, metadata={"help": "retries of a request after HTTP 429/5xx, timeouts, drops"})
    deadline: float = field(default=60.0, metadata={
        "help": "seconds a step waits for the judge (from the step's first request; verl: from each call) "
                "before the unanswered completions fall back to the rule reward"})
    cache: str = field(default_factory=default_cache_path, metadata={
        "help": "SQLite verdict cache, the same file `diagnosis-zero judge --cache` uses"})
    temperature: float = field(default=0.1, metadata={"help": "judge sampling temperature (RareArena: 0.1)"})
    max_tokens: int | None = field(default=None, metadata={"help": "cap on the judge's reply in tokens"})
    max_judge_chars: int = field(default=200, metadata={
        "help": "answers longer than this many characters are not a diagnosis name and are not sent"})

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError("judge_reward.protocol", f"unknown protocol {self.protocol!r}; one of {', '.join(PROTOCOLS)}")
        for name in ("concurrency", "max_judge_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"judge_reward.{name}", f"must be a positive integer, got {value!r}")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ConfigError("judge_reward.max_retries", f"must be a non-negative integer, got {self.max_retries!r}")
        for name in ("timeout", "deadline"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"judge_reward.{name}", f"must be a positive number of seconds, got {value!r}")
        if self.partial_reward is not None and (isinstance(self.partial_reward, bool)
                                                or not isinstance(self.partial_reward, (int, float))):
            raise ConfigError("judge_reward.partial_reward", f"must be a number, got {self.partial_reward!r}")


FIELDS = {f.name for f in dataclasses.fields(JudgeRewardConfig)}


def config_from_mapping(mapping: Mapping[str, Any]) -> JudgeRewardConfig:
    """Return the JudgeRewardConfig of a recipe's `judge_reward` mapping; an unknown key is an error."""
    for name in mapping:
        if name not in FIELDS:
            raise ConfigError(f"judge_reward.{name}", f"not a judge reward field; fields: {', '.join(sorted(FIELDS))}")
    return JudgeRewardConfig(**{name: value for name, value in mapping.items()})


def check_recipe(mapping: Mapping[str, Any], levels: reward.RewardConfig,
                 reward_weights: Sequence[float] | None = None) -> JudgeRewardConfig:
    """Return the JudgeRewardConfig of a recipe's `judge_reward`, after every check that can fail
    before training: fields, levels, the Orphanet file, the API key, the number of reward weights."""
    config = config_from_mapping(mapping)
    JudgeReward(config, levels)
    from diagnosis_zero import judge_items

    judge_items.api_key(endpoint(config))  # OpenAI itself needs a key in the environment
    if reward_weights is not None and len(reward_weights) != 4:
        raise ConfigError("reward_weights", "with judge_reward there are 4 reward functions (judge, accuracy, "
                          f"format, language; default weights 1, 0, 1, 1), got {len(reward_weights)} weights")
    return config


def partial_level(config: JudgeRewardConfig, levels: reward.RewardConfig) -> float:
    """Return the reward for a judge score of 1: `partial_reward`, else the rule reward's
    `partial_credit` (one value for both rewards); strictly between the wrong and correct levels."""
    inherited = config.partial_reward is None
    value = levels.partial_credit if inherited else config.partial_reward
    if not levels.wrong_reward < value < levels.correct_reward:
        # the rule reward checks its partial_credit only with a hierarchy, so name where the value came from
        source = f"the rule reward's partial_credit {value}" if inherited else f"{value}"
        raise ConfigError("judge_reward.partial_reward", f"{source} must lie strictly between the wrong level "
                          f"({levels.wrong_reward}) and the correct level ({levels.correct_reward}); set "
                          "judge_reward.partial_reward or the reward's partial_credit")
    return float(value)


# ---------------------------------------------------------------------------------------------
# What the judge may see

# The characters disease names are written in: Latin (with accents), Greek letters, digits, and a
# little punctuation. No quotes, brackets, '#', '*', '<', '=' or line breaks, so an answer cannot
# close the prompt's quoting or open a markdown section. ':' and ';' only inside a token, as in
# karyotypes ("t(9;22)") and enzyme names ("L-Arginine:glycine"), never as "Label: value".
_NAME_CHARS = re.compile(r"[A-Za-z0-9\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u0370-\u03ff \-'\u2019(),./+&:;]+")
_LOOSE_PUNCTUATION = re.compile(r"[:;](?!\S)|(?<!\S)[:;]")
# The judge's own vocabulary. No diagnosis name needs these words (checked against every name in
# orphanet_hypernym.json); an answer that uses them talks to the judge, not about the patient.
_JUDGE_WORDS = re.compile(
    r"\b(?:scor(?:e|es|ed|ing)|judg\w*|ignor\w*|disregard\w*|instruct\w*|prompt\w*|rules?|assistant|"
    r"reply|respond|evaluat\w*|answer\w*|student\w*|reference\w*)\b", re.IGNORECASE)
# A number that reads as a verdict: "grade 2", "2 points", "X;2" ("low-grade glioma", "point mutation"
# and "t(9;22)" stay).
_VERDICT_NUMBER = re.compile(r"\bgrade\W*[0-2]\b|\b[0-2]\s*points?\b|[:;][0-2]\b", re.IGNORECASE)
_WORD = re.compile(r"[^\W\d_]{3,}")
_SPACES = re.compile(r"\s+")


def judge_text(answer: str, max_chars: int = 200) -> str | None:
    """Return the answer as the judge will see it (NFKC-normalised, spaces collapsed), or None when it
    is not a plain diagnosis name: several lines, too long, characters no name uses, the judge's
    vocabulary, or no word."""
    text = unicodedata.normalize("NFKC", answer or "").strip()
    if "\n" in text or "\r" in text:  # a name is one line; a second line could pose as the prompt's
        return None
    text = _SPACES.sub(" ", text).rstrip(".")
    if not text or len(text) > max_chars or not _NAME_CHARS.fullmatch(text) or _LOOSE_PUNCTUATION.search(text):
        return None
    if _JUDGE_WORDS.search(text) or _VERDICT_NUMBER.search(text) or not _WORD.search(text):
        return None
    return text


# ---------------------------------------------------------------------------------------------
# Scoring a step


@dataclass
class StepStats:
    """What one step asked of the judge: the source of the per-step judge metrics."""

    completions: int = 0
    routed: int = 0  # completions the rules left to the judge
    pairs: int = 0  # distinct (answer, references) pairs among them
    calls: int = 0  # pairs sent to the endpoint: not served from the cache (answered in time or not)
    cache_hits: int = 0
    fallbacks: int = 0  # routed completions that got the rule reward: no verdict before the deadline
    latencies: list[float] = field(default_factory=list)  # seconds per request sent, retries included

    def metrics(self) -> dict[str, float]:
        """Return the judge's metrics.jsonl keys for this step (latency only when something was sent)."""
        row = {"judge_calls": float(self.calls),
               "judge_cache_hit_rate": self.cache_hits / self.pairs if self.pairs else 0.0,
               "judge_fallback_rate": self.fallbacks / self.routed if self.routed else 0.0,
               "judge_routed_rate": self.routed / self.completions if self.completions else 0.0}
        if self.latencies:
            row["judge_latency_p50"] = percentile(self.latencies, 50)
            row["judge_latency_p95"] = percentile(self.latencies, 95)
        return row


def percentile(values: Sequence[float], q: float) -> float:
    """Return the q-th percentile of `values` (linear interpolation, as numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class _LoopState:
    """The grader and the requests in flight of one event loop (clients and tasks are loop-bound)."""

    def __init__(self, grader):
        self.grader = grader
        self.in_flight: dict[tuple, asyncio.Task] = {}


class JudgeReward:
    """The judge reward for one reward config and one judge endpoint; safe to share across steps."""

    def __init__(self, config: JudgeRewardConfig, levels: reward.RewardConfig | None = None,
                 grader_factory: Callable[[JudgeRewardConfig], Any] | None = None):
        self.levels = levels or reward.PRESETS["clinical"]
        if config.orphanet is None and self.levels.hierarchy:  # the rule reward's parents are the judge's
            config = dataclasses.replace(config, orphanet=self.levels.hierarchy)
        self.config = config
        if self.levels.topk:
            raise ConfigError("judge_reward", "the judge reward grades one diagnosis per completion; "
                              "top-k reward mode (topk > 0) is not supported with it")
        self.partial = partial_level(config, self.levels)
        self.hierarchy = reward.load_hierarchy(config.orphanet) if config.orphanet else None
        self.grader_factory = grader_factory or item_grader
        self._states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._warned: set[str] = set()
        self.refused: JudgeAbort | None = None  # the endpoint refused for good (bad key, unknown model)

    def route(self, rule: Mapping[str, Any], answer: str) -> str | None:
        """Return the text to send to the judge, or None when the rule reward stands."""
        if not rule["format"] or rule["acc"] or not answer:  # format failure, or a rule match
            return None
        if reward.is_multiple_diagnoses(answer) or reward.is_negated(answer):
            return None
        return judge_text(answer, self.config.max_judge_chars)

    def parents(self, orpha_id: str | None) -> list[str]:
        """Return the case's score-1 names: Orphanet parents of at most 10 diseases (deduplicated)."""
        if self.hierarchy is None or not orpha_id:
            return []
        return list(dict.fromkeys(self.hierarchy.parents(orpha_id)))

    def level(self, score: int | None, parents: list[str]) -> float | None:
        """Return the reward level of a judge score (None: no usable verdict)."""
        if score == 2:
            return self.levels.correct_reward
        if score == 1:  # only an Orphanet parent of <= 10 diseases is worth partial credit
            return self.partial if parents else self.levels.wrong_reward
        if score == 0:
            return self.levels.wrong_reward
        return None

    async def score(self, completions: Sequence[Any], truths: Sequence[Any],
                    extra_infos: Sequence[Any] | None = None) -> tuple[list[dict[str, Any]], StepStats]:
        """Return, for each completion, the rule reward's result with `level` and `score` from the
        judge where it was asked, plus RESULT_KEYS; and the step's judge statistics."""
        began = time.monotonic()
        rules = reward.score_batch(list(completions), self.levels, reward_model=list(truths),
                                   extra_info=list(extra_infos) if extra_infos is not None else None)
        stats = StepStats(completions=len(rules))
        asks: list[tuple | None] = []
        for completion, rule, truth in zip(completions, rules, truths, strict=True):
            text = self.route(rule, reward.extract_answer(completion))
            if text is None:
                asks.append(None)
                continue
            references, orpha_id = reward.parse_ground_truth(truth)
            asks.append((text, tuple(references), tuple(self.parents(orpha_id))))
        pairs = list(dict.fromkeys(a for a in asks if a is not None))
        stats.routed = sum(a is not None for a in asks)
        stats.pairs = len(pairs)
        verdicts = await self._verdicts(pairs, began + self.config.deadline, stats)
        results = []
        for rule, ask in zip(rules, asks, strict=True):
            result = dict(rule, judged=0, judge_score=-1, judge_fallback=0, judge_cached=0, judge_latency=0.0)
            if ask is not None:
                verdict, latency = verdicts.get(ask, (None, None))
                level = self.level(getattr(verdict, "score", None), list(ask[2]))
                result["judged"] = 1
                if level is None:
                    stats.fallbacks += 1
                    result["judge_fallback"] = 1
                else:
                    result.update(judge_score=verdict.score, judge_cached=int(bool(verdict.cached)),
                                  judge_latency=latency or 0.0, level=level, acc=int(verdict.score == 2))
                    result["score"] = level - result["format_penalty"] - result["language_penalty"]
            results.append(result)
        if stats.fallbacks:
            logger.warning("judge: %d of %d judged completions fell back to the rule reward",
                           stats.fallbacks, stats.routed)
        return results, stats

    async def _verdicts(self, pairs: list[tuple], deadline: float, stats: StepStats) -> dict[tuple, tuple]:
        """Return pair -> (Verdict, seconds) for the pairs answered before `deadline` (monotonic time)."""
        if not pairs or self.refused is not None:
            return {}
        state = self._state()
        if state is None:
            return {}
        tasks = {pair: self._task(state, pair) for pair in pairs}
        # Requests still out at the deadline are left to finish (bounded by the grader's timeout and
        # retries): a late verdict still fills the cache, and the grader's in-flight record of the
        # item is cleared only when its request ends.
        done, _ = await asyncio.wait(tasks.values(), timeout=max(0.0, deadline - time.monotonic()))
        answered = {}
        for pair, task in tasks.items():
            if task not in done:  # a cache hit answers at once: this one went to the endpoint
                stats.calls += 1
                continue
            if task.exception() is not None:
                if isinstance(task.exception(), JudgeAbort):  # retrying cannot fix it: ask no more
                    self.refused = task.exception()
                self._warn_once(type(task.exception()).__name__,
                                f"judge request failed, the rule reward stands in: {task.exception()}")
                continue
            verdict, latency = task.result()
            if verdict.error:
                self._warn_once(verdict.error[:60], f"judge: {verdict.error}")
            if verdict.cached:
                stats.cache_hits += 1
            else:
                stats.calls += 1
                stats.latencies.append(latency)
            answered[pair] = (verdict, None if verdict.cached else latency)
        return answered

    def _task(self, state: _LoopState, pair: tuple) -> asyncio.Task:
        """Return the request for `pair`, shared by every completion and call that asks it meanwhile."""
        task = state.in_flight.get(pair)
        if task is None or task.done():
            task = state.in_flight[pair] = asyncio.ensure_future(self._ask(state.grader, pair))
            task.add_done_callback(lambda done, p=pair: state.in_flight.pop(p, None)
                                   if state.in_flight.get(p) is done else None)
        return task

    @staticmethod
    async def _ask(grader, pair: tuple) -> tuple[Any, float]:
        started = time.monotonic()
        text, references, parents = pair
        verdict = await grader.grade(text, list(references), list(parents))
        return verdict, time.monotonic() - started

    def _state(self) -> _LoopState | None:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            try:
                state = self._states[loop] = _LoopState(self.grader_factory(self.config))
            except Exception as exc:  # noqa: BLE001 - a judge that cannot be set up must not stop training
                self._warn_once("setup", f"judge unavailable, using the rule reward: {exc}")
                return None
        return state

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)


def endpoint(config: JudgeRewardConfig):
    """Return the `judge_items.JudgeEndpoint` of `config`."""
    from diagnosis_zero import judge_items

    return judge_items.JudgeEndpoint(base_url=config.base_url, judge_model=config.judge_model,
                                     api_key_env=config.api_key_env, timeout=config.timeout,
                                     max_retries=config.max_retries, concurrency=config.concurrency,
                                     temperature=config.temperature, max_tokens=config.max_tokens)


def item_grader(config: JudgeRewardConfig):
    """Return the per-item grader of `diagnosis-zero judge` for `config`, on the shared cache file."""
    import openai  # noqa: F401 - imported here, at setup, so the first request's latency is the judge's

    from diagnosis_zero import judge_items

    return judge_items.ItemGrader(endpoint(config), judge_items.JudgeCache(config.cache))


# ---------------------------------------------------------------------------------------------
# TRL


def make_trl_reward_funcs(levels: reward.RewardConfig, config: JudgeRewardConfig,
                          grader_factory: Callable[[JudgeRewardConfig], Any] | None = None
                          ) -> tuple[list[Callable], list[float]]:
    """Return TRL reward functions (judge, accuracy, format, language) and their weights (1, 0, 1, 1).

    `judge` (async; TRL awaits it on its event loop) gives the accuracy level with the judge's
    verdicts; the rule accuracy keeps weight 0 so `rewards/accuracy` still shows what the rules alone
    would pay. The weighted sum is the judge reward's `score`. `judge` logs the step's judge metrics
    through TRL's `log_metric`.
    """
    judge_reward = JudgeReward(config, levels, grader_factory)
    funcs, _ = reward.make_trl_reward_funcs(levels)

    async def judge(prompts=None, completions=(), **columns) -> list[float]:
        truths = columns.get("reward_model")
        if truths is None:
            truths = columns.get("ground_truth")
        if truths is None:
            raise ConfigError("reward_model", "the dataset needs a 'reward_model' (or 'ground_truth') column")
        results, stats = await judge_reward.score(completions, truths, columns.get("extra_info"))
        log_metric = columns.get("log_metric")
        if callable(log_metric):
            for name, value in stats.metrics().items():
                log_metric(name, value)
        return [result["level"] for result in results]

    return [judge, *funcs], [1.0, 0.0, 1.0, 1.0]


# ---------------------------------------------------------------------------------------------
# verl

_REWARDS: dict[Any, JudgeReward] = {}


async def compute_score(data_source: Any = None, solution_str: Any = "", ground_truth: Any = None,
                        extra_info: Any = None, **kwargs: Any) -> dict[str, Any]:
    """Score one completion with the judge reward (verl's custom reward; its naive manager awaits it).

    kwargs (`reward.custom_reward_function.reward_kwargs`) hold JudgeRewardConfig fields (`base_url`,
    `judge_model`, `orphanet`, ...) and the rule reward's (`preset`, RewardConfig fields). Returns
    `reward.compute_score`'s keys plus RESULT_KEYS, the same keys on every call. Concurrent calls on
    one event loop (verl scores a batch so) share requests: a pair is asked once.
    """
    judge_kwargs = {k: v for k, v in kwargs.items() if k in FIELDS}
    rule_kwargs = {k: v for k, v in kwargs.items() if k not in FIELDS}
    key = reward._freeze(kwargs)
    judge_reward = _REWARDS.get(key)
    if judge_reward is None:
        levels = reward._config_from_kwargs(rule_kwargs)
        judge_reward = _REWARDS[key] = JudgeReward(config_from_mapping(judge_kwargs), levels)
    results, _ = await judge_reward.score([solution_str], [ground_truth], [extra_info])
    result = results[0]
    return {name: result[name] for name in (*reward.SCORE_KEYS, *RESULT_KEYS)}
