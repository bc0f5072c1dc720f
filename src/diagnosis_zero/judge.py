"""`diagnosis-zero judge`: grade predictions with an LLM judge, as RareArena does or item by item.

The judge is any OpenAI-compatible chat endpoint (OpenAI itself, or vLLM/SGLang serving an open
model), reached through the official `openai` client with bounded concurrency and its own retries.

Protocols:
- `rarearena-updated` (default) and `rarearena`: RareArena's own judging, byte for byte
  (`rarearena.py`): ONE request per case holding the model's whole answer, RareArena's prompt as
  one user message, no system message, temperature 0.1, max_tokens 4096; the reply's
  `score N` are the item scores (top-1 = the first, top-5 = the best of the first five). The
  published baselines used `rarearena` (the original judge). The answer sent is the content of the
  answer block for a model trained with tags, or the stripped raw completion for output of
  RareArena's inference prompt (`answer_source: "raw"`); each judged line records which.
- `item`: our own grader (`judge_items.ItemGrader`): each predicted diagnosis alone, our prompt
  and a system message, cached item by item (cheaper: items repeat across cases and checkpoints).
  Its numbers are NOT comparable with RareArena's published ones.

The cache (SQLite) is keyed by the whole request for the verbatim protocols, so a re-run sends
nothing, and per item for `item`; the two never serve each other. A reply without a score is a
`judge_error` with its raw text, never 0; a reply with fewer scores than items is marked
`short_reply`. Output lines are written in input order and a killed run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from diagnosis_zero import cli, rarearena
from diagnosis_zero.errors import ConfigError, InputFileError
from diagnosis_zero.generation import record_key
from diagnosis_zero.io import append_jsonl, atomic_path, iter_jsonl, resume_jsonl
from diagnosis_zero.judge_items import (
    ItemGrader,
    JudgeCache,
    JudgeClient,
    JudgeEndpoint,
    JudgeStats,
    default_cache_path,
    request_digest,
)

log = logging.getLogger(__name__)

ITEM = "item"
PROTOCOLS = (*rarearena.VERBATIM_PROTOCOLS, ITEM)


@dataclass
class JudgeConfig:
    input: str = field(default="", metadata={"required": True, "help": "evaluated JSON Lines file (`evaluate` output)"})
    output: str = field(default="", metadata={"required": True, "help": "judged JSON Lines file; resumed if it exists"})
    judge_model: str = field(default="gpt-4o", metadata={"help": "judge model name as the endpoint knows it"})
    base_url: str | None = field(default=None, metadata={
        "help": "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 for vLLM; default: OpenAI"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={
        "help": "environment variable holding the API key (the key itself is never printed or written)"})
    protocol: str = field(default=rarearena.PROTOCOL_UPDATED, metadata={
        "choices": PROTOCOLS, "help": "rarearena / rarearena-updated: RareArena's judging verbatim; "
        "item: our per-item grader (not comparable with RareArena's published numbers)"})
    orphanet: list[str] | None = field(default=None, metadata={
        "aliases": ["--hierarchy"], "metavar": "PATH",
        "help": "RareArena's orphanet_hypernym.json (needed by rarearena-updated and item for the score-1 parents)"})
    concurrency: int = field(default=16, metadata={"help": "requests in flight at once"})
    top_k: int = field(default=rarearena.TOP_K, metadata={"help": "items counted for top-k (RareArena: 5)"})
    temperature: float | None = field(default=None, metadata={
        "help": "judge temperature for --protocol item; unset = 0.1 (the verbatim protocols always send RareArena's 0.1)"})
    max_tokens: int | None = field(default=None, metadata={
        "help": "cap on the judge's reply for --protocol item; unset = none (the verbatim protocols send RareArena's 4096)"})
    timeout: float = field(default=60.0, metadata={"help": "seconds per attempt before it is abandoned and retried"})
    max_retries: int = field(default=6, metadata={
        "help": "retries by the openai client after HTTP 408/409/429/5xx, timeouts and dropped connections "
                "(it honours Retry-After)"})
    cache: str = field(default_factory=default_cache_path, metadata={
        "help": "SQLite judgement cache shared by runs and checkpoints"})
    retry_errors: bool = field(default=False, metadata={
        "help": "re-judge lines of an existing output that carry a judge error"})


def endpoint_of(config: JudgeConfig) -> JudgeEndpoint:
    """Return the endpoint settings of a judge run (RareArena's sampling for the verbatim protocols)."""
    verbatim = config.protocol in rarearena.VERBATIM_PROTOCOLS
    return JudgeEndpoint(
        base_url=config.base_url, judge_model=config.judge_model, api_key_env=config.api_key_env,
        timeout=config.timeout, max_retries=config.max_retries, concurrency=config.concurrency,
        temperature=rarearena.JUDGE_TEMPERATURE if verbatim or config.temperature is None else config.temperature,
        max_tokens=rarearena.JUDGE_MAX_TOKENS if verbatim else config.max_tokens)


# ---------------------------------------------------------------------------------------------
# Inputs


def answer_text(record: dict) -> tuple[str, str]:
    """Return (the answer text sent to a verbatim judge, its source: "raw" or "answer_block").

    Output of RareArena's inference prompt (`answer_source: "raw"`) is sent whole, stripped as
    RareArena's run.py stores it (`response.strip()`); a tagged model's output is the content
    of its first answer block.
    """
    from diagnosis_zero.reward import extract_answer

    completion = record.get("completion") or ""
    if record.get("answer_source") == "raw":
        return completion.strip(), "raw"
    return extract_answer(completion), "answer_block"


def expected_items(record: dict, top_k: int) -> int:
    """Return how many diagnoses the answer lists (at most top_k): a ranked list's length, else 1."""
    prediction = record.get("prediction")
    if isinstance(prediction, list):
        return max(1, min(len(prediction), top_k))
    return 1


def prediction_items(prediction, top_k: int) -> list[str]:
    """Return the diagnoses to grade item by item: the answer, or the first `top_k` of a ranked list."""
    if isinstance(prediction, list):
        return [str(p).strip() for p in prediction[:top_k] if str(p).strip()]
    prediction = (prediction or "").strip() if isinstance(prediction, str) else ""
    return [prediction] if prediction else []


def _check_record(path, line: int, record: dict, protocol: str) -> None:
    if "id" not in record:
        raise InputFileError(path, line, "id", "missing")
    if "prediction" not in record:
        raise InputFileError(path, line, "prediction", "missing (is this an `evaluate` output?)")
    prediction = record["prediction"]
    if not (prediction is None or isinstance(prediction, str)
            or (isinstance(prediction, list) and all(isinstance(p, str) for p in prediction))):
        raise InputFileError(path, line, "prediction", "expected a string or a list of strings")
    references = record.get("references")
    if not (isinstance(references, list) and references and all(isinstance(r, str) for r in references)):
        raise InputFileError(path, line, "references", "expected a non-empty list of names")
    if protocol in rarearena.VERBATIM_PROTOCOLS and not isinstance(record.get("completion"), str):
        raise InputFileError(path, line, "completion", f"missing (the {protocol} protocol sends the model's answer)")
    if protocol != rarearena.PROTOCOL_ORIGINAL and "orpha_id" not in record:
        raise InputFileError(path, line, "orpha_id", f"missing (needed by the {protocol} protocol)")


def hierarchy_path(paths: list[str] | None) -> str | None:
    """Return the orphanet_hypernym.json among the --orphanet files (the XML holds no hierarchy)."""
    json_paths = [p for p in paths or [] if not p.lower().endswith(".xml")]
    if len(json_paths) > 1:
        raise ConfigError("orphanet", "give one orphanet_hypernym.json (and optionally en_product1.xml)")
    return json_paths[0] if json_paths else None


# ---------------------------------------------------------------------------------------------
# Grading one case


class VerbatimGrader:
    """One RareArena request per case, cached by the whole request; identical requests sent once."""

    def __init__(self, config: JudgeConfig, client: JudgeClient, cache: JudgeCache, hierarchy):
        self.config, self.client, self.cache, self.hierarchy = config, client, cache, hierarchy
        self._in_flight: dict[str, asyncio.Future] = {}

    async def judge(self, record: dict) -> dict:
        answer, source = answer_text(record)
        verdict = {"protocol": self.config.protocol, "model": self.config.judge_model, "answer_source": source}
        if not answer.strip():  # nothing to grade: no request, score 0 (RareArena would send an empty answer)
            return {"score": 0, "scores": [], "top1": 0, "topk": 0, "raw": None, "error": None,
                    "cached": False, "num_scores": 0, "short_reply": False, **verdict}
        request = {"model": self.config.judge_model, **rarearena.build_judge_request(
            self.config.protocol, answer, record["references"][0], self.hierarchy, record.get("orpha_id"))}
        reply, error, cached = self.cache.get_reply(request), None, True
        if reply is not None:
            self.client.stats.cached += 1
        else:
            digest = request_digest(request)
            task = self._in_flight.get(digest)
            first = task is None
            if first:
                task = self._in_flight[digest] = asyncio.ensure_future(self.client.ask(request))
            else:  # the same request twice in one run (same answer, same references) is sent once
                self.client.stats.cached += 1
            answered = await asyncio.shield(task)
            reply, error, cached = answered.text, answered.error, not first and answered.error is None
            if first and error is None and rarearena.parse_scores(reply):
                self.cache.put_reply(request, reply, answered.prompt_tokens, answered.completion_tokens)
        scores = rarearena.parse_scores(reply) if error is None else []
        if error is None and not scores:
            error = "judge_error: reply holds no `score N`"
        top1, topk = rarearena.top_scores(scores, self.config.top_k)
        return {"score": top1, "scores": scores, "top1": top1, "topk": topk, "raw": reply, "error": error,
                "cached": cached, "num_scores": len(scores),
                "short_reply": 0 < len(scores) < expected_items(record, self.config.top_k), **verdict}


async def _judge_items(record: dict, grader: ItemGrader, config: JudgeConfig, hierarchy) -> dict:
    """Grade each predicted diagnosis of a case alone (protocol `item`)."""
    items = prediction_items(record["prediction"], config.top_k)
    parents = sorted(set(hierarchy.parents(record.get("orpha_id")))) if hierarchy is not None else []
    verdicts = await asyncio.gather(*(grader.grade(item, record["references"], parents) for item in items))
    grader.stats.items += len(items)
    errors = [f"item {i + 1}: {v.error}" if len(items) > 1 else v.error for i, v in enumerate(verdicts) if v.error]
    raws = [v.raw for v in verdicts]
    scores = [v.score for v in verdicts] if items else [0]  # no answer: nothing to grade
    return {"score": scores[0], "scores": scores,
            "raw": raws if isinstance(record["prediction"], list) else (raws[0] if raws else None),
            "error": "; ".join(errors) or None, "cached": bool(items) and all(v.cached for v in verdicts),
            "protocol": ITEM, "model": config.judge_model, "answer_source": "prediction"}


async def _judge_records(records: list[dict], config: JudgeConfig, hierarchy, cache: JudgeCache,
                         out_fh, stats: JudgeStats) -> None:
    from tqdm import tqdm

    endpoint = endpoint_of(config)
    if config.protocol == ITEM:
        grader = ItemGrader(endpoint, cache, stats)
        client = grader.client

        async def grade_case(record: dict) -> dict:
            return await _judge_items(record, grader, config, hierarchy)
    else:
        client = JudgeClient(endpoint, stats)
        verbatim = VerbatimGrader(config, client, cache, hierarchy)
        grade_case = verbatim.judge
    bar = tqdm(total=len(records), unit="case", desc="judge", dynamic_ncols=True)

    async def judge_case(record: dict) -> dict:
        judged = await grade_case(record)
        stats.cases += 1
        stats.errors += bool(judged["error"])
        stats.short_replies += bool(judged.get("short_reply"))
        bar.update(1)
        bar.set_postfix_str(f"sent={stats.sent} cached={stats.cached} errors={stats.errors} "
                            f"tokens={stats.prompt_tokens + stats.completion_tokens}", refresh=False)
        return {**record, "judge": judged}

    tasks = [asyncio.ensure_future(judge_case(record)) for record in records]
    pending: list[dict] = []
    flush_every = max(16, config.concurrency)
    try:
        for task in tasks:  # written in input order, flushed per batch
            pending.append(await task)
            if len(pending) >= flush_every:
                append_jsonl(out_fh, pending)
                pending.clear()
    finally:
        if pending:
            append_jsonl(out_fh, pending)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        bar.close()
        await client.close()


def judge_file(config: JudgeConfig) -> JudgeStats:
    """Judge every not-yet-judged line of `config.input` into `config.output`; return the counts."""
    from diagnosis_zero.judge_items import api_key
    from diagnosis_zero.reward import load_hierarchy

    if config.protocol not in PROTOCOLS:
        raise ConfigError("protocol", f"unknown protocol {config.protocol!r}; one of {', '.join(PROTOCOLS)}")
    if config.concurrency < 1:
        raise ConfigError("concurrency", "must be at least 1")
    if config.protocol in rarearena.VERBATIM_PROTOCOLS:
        for name, value, fixed in (("temperature", config.temperature, rarearena.JUDGE_TEMPERATURE),
                                   ("max-tokens", config.max_tokens, rarearena.JUDGE_MAX_TOKENS)):
            if value is not None and value != fixed:
                raise ConfigError(name, f"the {config.protocol} protocol sends RareArena's {fixed}; "
                                  "use --protocol item to judge with other settings")
    if Path(config.input).resolve() == Path(config.output).resolve():
        raise ConfigError("output", "must differ from --input")
    path = hierarchy_path(config.orphanet)
    if config.protocol != rarearena.PROTOCOL_ORIGINAL and path is None:
        raise ConfigError("orphanet", f"the {config.protocol} protocol needs --orphanet orphanet_hypernym.json "
                          "(RareArena's benchmark_data/), or use --protocol rarearena")
    hierarchy = load_hierarchy(path) if path else None
    api_key(endpoint_of(config))  # a missing key fails here, before any file is touched

    records = []
    for line, record in iter_jsonl(config.input):
        _check_record(config.input, line, record, config.protocol)
        records.append(record)
    done = resume_jsonl(config.output)
    if config.retry_errors and any((r.get("judge") or {}).get("error") for r in done):
        done = [r for r in done if not (r.get("judge") or {}).get("error")]
        with atomic_path(config.output) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            append_jsonl(fh, done)
    done_keys = {record_key(r) for r in done}
    todo = [r for r in records if record_key(r) not in done_keys]
    if done_keys:
        log.info("%s: %d lines already judged, %d to go", config.output, len(records) - len(todo), len(todo))
    if hierarchy is not None:
        ids = {str(r.get("orpha_id") or "").strip() for r in todo}
        unknown = sum(1 for i in ids if i not in hierarchy.entities)
        if unknown:
            log.warning("%d of %d Orphanet codes are not in %s: their diagnosis text stands in for the "
                        "Orphanet name", unknown, len(ids), path)

    stats = JudgeStats()
    cache = JudgeCache(config.cache)
    Path(config.output).parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(config.output, "a", encoding="utf-8") as out_fh:
            asyncio.run(_judge_records(todo, config, hierarchy, cache, out_fh, stats))
    finally:
        cache.close()
    return stats


class _NoLongerUsed(argparse.Action):
    """A removed flag: accepted so old scripts run, with a warning that it does nothing."""

    def __call__(self, parser, namespace, values, option_string=None):
        log.warning("%s no longer has an effect: retries and their backoff are the openai client's "
                    "(--max-retries)", option_string)


def add_arguments(parser) -> None:
    cli.add_dataclass_arguments(parser, JudgeConfig)
    parser.add_argument("--backoff", "--max-backoff", type=float, action=_NoLongerUsed, help=argparse.SUPPRESS)


def run(args) -> int:
    config = cli.dataclass_from_args(JudgeConfig, args)
    stats = judge_file(config)
    print(f"judged {stats.cases} cases with protocol {config.protocol} -> {config.output}")
    if config.protocol == ITEM:
        print(f"  ({stats.items} diagnoses graded one by one: {rarearena.NOT_COMPARABLE})")
    print(f"  requests sent: {stats.sent}, from cache: {stats.cached}, retries: {stats.retries}")
    print(f"  tokens: {stats.prompt_tokens} prompt + {stats.completion_tokens} completion")
    if stats.short_replies:
        print(f"  short replies (fewer scores than items): {stats.short_replies}")
    print(f"  judge errors: {stats.errors}" + (" (lines keep `judge.error` and the raw answer; "
                                               "rerun with --retry-errors to re-judge them)" if stats.errors else ""))
    return 0
