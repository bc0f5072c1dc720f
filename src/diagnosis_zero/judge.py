"""`diagnosis-zero judge`: score predictions with an LLM judge, following RareArena's protocols.

The judge is any OpenAI-compatible chat endpoint (OpenAI itself, or vLLM/SGLang serving an open
model), reached through the official `openai` client with bounded concurrency. Each predicted
diagnosis is graded 2 (the reference disease: exact, synonym, clear equivalent), 1 (an accepted
broader category) or 0. With a ranked list (the `rarearena-top5` template) every item is graded,
giving top-1 and top-k.

Protocols (RareArena, REFERENCE.md §2; the prompt text is our own, written to the same criteria):
- `rarearena`: the original. Score 1 for any broad category that includes the reference; this
  over-credits hypernyms.
- `rarearena-updated` (default): score 2 against {diagnosis, Orphanet name}; score 1 only against
  the case's Orphanet parents with `parent_disease_count <= 10`, read from `orphanet_hypernym.json`.

Judgements are cached in SQLite keyed by (protocol, judge model, normalized prediction,
references): most answers repeat across cases, runs and checkpoints, and a pair is never paid
for twice. Each answer is committed as it arrives, so a killed run loses nothing it was told.
An answer that is not a score is recorded as a `judge_error` with its raw text, never as 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from diagnosis_zero.errors import ConfigError, DiagnosisZeroError, InputFileError
from diagnosis_zero.evaluate import add_config_arguments, config_from_args, record_key, resume_jsonl
from diagnosis_zero.io import append_jsonl, iter_jsonl

log = logging.getLogger(__name__)

PROTOCOLS = ("rarearena", "rarearena-updated")
MAX_PARENT_DISEASES = 10  # RareArena's updated protocol: parents naming at most this many diseases
MAX_RETRY_AFTER = 120.0  # seconds; a server asking for longer is not waited on blindly


def default_cache_path() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "diagnosis-zero", "judge-cache.sqlite")


@dataclass
class JudgeConfig:
    input: str = field(default="", metadata={"required": True, "help": "evaluated JSON Lines file (`evaluate` output)"})
    output: str = field(default="", metadata={"required": True, "help": "judged JSON Lines file; resumed if it exists"})
    judge_model: str = field(default="gpt-4o", metadata={"help": "judge model name as the endpoint knows it"})
    base_url: str | None = field(default=None, metadata={
        "help": "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 for vLLM; default: OpenAI"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={
        "help": "environment variable holding the API key (the key itself is never printed or written)"})
    protocol: str = field(default="rarearena-updated", metadata={
        "choices": PROTOCOLS, "help": "RareArena judge protocol"})
    hierarchy: str | None = field(default=None, metadata={
        "help": "orphanet_hypernym.json (RareArena); required by rarearena-updated for the score-1 parents"})
    concurrency: int = field(default=16, metadata={"help": "requests in flight at once"})
    top_k: int = field(default=5, metadata={"help": "items of a ranked-list prediction that are graded"})
    temperature: float = field(default=0.1, metadata={"help": "judge sampling temperature (RareArena: 0.1)"})
    max_tokens: int | None = field(default=None, metadata={
        "help": "cap on the judge's answer length in tokens; not sent when unset"})
    timeout: float = field(default=60.0, metadata={"help": "seconds before a request is abandoned and retried"})
    max_retries: int = field(default=6, metadata={
        "help": "retries of a request after HTTP 429/5xx, timeouts and dropped connections"})
    backoff: float = field(default=1.0, metadata={
        "help": "first retry delay in seconds; doubles each retry, with jitter (Retry-After wins)"})
    max_backoff: float = field(default=30.0, metadata={"help": "longest retry delay in seconds"})
    cache: str = field(default_factory=default_cache_path, metadata={
        "help": "SQLite judgement cache shared by runs and checkpoints"})
    retry_errors: bool = field(default=False, metadata={
        "help": "re-judge lines of an existing output that carry a judge error"})


# ---------------------------------------------------------------------------------------------
# Prompts and answers

SYSTEM_PROMPT = ("You are a board-certified clinical geneticist grading another model's rare-disease "
                 "diagnosis against the reference. You answer with one digit.")

RAREARENA_PROMPT = """Grade the predicted diagnosis of a rare-disease case against its reference diagnosis.

Reference diagnosis names: {references}
Predicted diagnosis: {prediction}

Score 2 if the prediction is the reference disease itself: the same name, a synonym, or the same disease under another accepted name, eponym, abbreviation or spelling.
Score 1 if the prediction is a broad category or group of diseases that includes the reference disease.
Score 0 otherwise: a different disease, a different subtype or type number, a category that does not contain the reference, or no diagnosis.

Answer with the single digit 2, 1 or 0 and nothing else."""

UPDATED_PROMPT = """Grade the predicted diagnosis of a rare-disease case against two lists of names.

Score-2 names (the reference disease): {references}
Score-1 names (accepted broader categories): {parents}
Predicted diagnosis: {prediction}

Score 2 if the prediction is an exact match, a strict synonym or a clear equivalent (another accepted name, eponym, abbreviation or spelling) of a score-2 name.
Score 1 if it is not, but it is an exact match, a strict synonym or a clear equivalent of a score-1 name. No other broader category earns a 1.
Score 0 otherwise, including a different disease, a different subtype or type number, or any broader category that is not a score-1 name.

Answer with the single digit 2, 1 or 0 and nothing else."""


def judge_messages(protocol: str, prediction: str, references: list[str], parents: list[str]) -> list[dict]:
    """Return the chat messages asking the judge to grade one predicted diagnosis."""
    if protocol == "rarearena":
        user = RAREARENA_PROMPT.format(references=" | ".join(references), prediction=prediction)
    else:
        user = UPDATED_PROMPT.format(references=" | ".join(references), prediction=prediction,
                                     parents=" | ".join(parents) if parents else "(none)")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_BARE = re.compile(r"[\s*`'\"(\[]*([012])[\s*`'\")\].]*")
_LEADING = re.compile(r"[\s*`'\"(\[]*([012])\s*(?:[-:.)]|$)")
_LABELLED = re.compile(r"\b(?:score|grade|rating|answer)\s*(?:is|:|=)?\s*[*`'\"(\[]*([012])\b", re.IGNORECASE)


def parse_judgement(text: str | None) -> int | None:
    """Return the score 2/1/0 in a judge's answer, or None when it does not state exactly one."""
    if not text:
        return None
    text = _THINK.sub("", text)
    if "</think>" in text:  # reasoning judges whose opening tag is in the template
        text = text.rsplit("</think>", 1)[1]
    text = text.strip()
    if bare := _BARE.fullmatch(text):
        return int(bare.group(1))
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and answer.get("score") in (0, 1, 2, "0", "1", "2"):
        return int(answer["score"])
    labelled = {int(s) for s in _LABELLED.findall(text)}
    if len(labelled) == 1:
        return labelled.pop()
    if not labelled and (leading := _LEADING.match(text)):
        return int(leading.group(1))
    return None


# ---------------------------------------------------------------------------------------------
# Inputs


def load_hierarchy(path: str | os.PathLike) -> dict[str, dict]:
    """Return orpha_id -> Orphanet entity ({Orphanetid, name, type, parents}) from orphanet_hypernym.json.

    Every parent is checked for a name and an integer `parent_disease_count`, so a bad file fails
    here, naming the entity, rather than half-way through a paid judge run.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, None, None, "hierarchy file not found")
    try:
        entities = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputFileError(path, None, None, f"not valid JSON ({exc})") from None
    if not isinstance(entities, list):
        raise InputFileError(path, None, None, "expected a JSON array of Orphanet entities")
    hierarchy: dict[str, dict] = {}
    for number, entity in enumerate(entities):
        if not isinstance(entity, dict) or "Orphanetid" not in entity:
            raise InputFileError(path, None, f"[{number}].Orphanetid", "missing")
        for parent in entity.get("parents") or []:
            if not (isinstance(parent, dict) and "parent" in parent
                    and isinstance(parent.get("parent_disease_count"), int)):
                raise InputFileError(path, None, f"[{number}].parents",
                                     "each parent needs 'parent' and an integer 'parent_disease_count'")
        hierarchy[str(entity["Orphanetid"]).strip()] = entity
    return hierarchy


def score1_parents(entity: dict | None) -> list[str]:
    """Return the parents that count as score 1 in the updated protocol (<= 10 diseases)."""
    return sorted({str(p["parent"]).strip() for p in (entity or {}).get("parents") or []
                   if p["parent_disease_count"] <= MAX_PARENT_DISEASES})


def prediction_items(prediction, top_k: int) -> list[str]:
    """Return the diagnoses to grade: the answer, or the first `top_k` items of a ranked list."""
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
    if protocol == "rarearena-updated" and "orpha_id" not in record:
        raise InputFileError(path, line, "orpha_id", "missing (needed by the rarearena-updated protocol)")


# ---------------------------------------------------------------------------------------------
# Cache


class JudgeCache:
    """SQLite store of judgements; every answer is its own committed transaction (WAL)."""

    def __init__(self, path: str | os.PathLike):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # autocommit: each INSERT commits at once, so a kill -9 keeps every answer received
        self.conn = sqlite3.connect(str(path), timeout=60, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS judgements (protocol TEXT NOT NULL, judge_model TEXT NOT NULL, "
            "prediction TEXT NOT NULL, refs TEXT NOT NULL, score INTEGER NOT NULL, raw TEXT, "
            "prompt_tokens INTEGER, completion_tokens INTEGER, created REAL, "
            "PRIMARY KEY (protocol, judge_model, prediction, refs))")

    def get(self, key: tuple) -> tuple[int, str] | None:
        row = self.conn.execute("SELECT score, raw FROM judgements WHERE protocol=? AND judge_model=? "
                                "AND prediction=? AND refs=?", key).fetchone()
        return (row[0], row[1]) if row else None

    def put(self, key: tuple, score: int, raw: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.conn.execute("INSERT OR REPLACE INTO judgements VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          (*key, score, raw, prompt_tokens, completion_tokens, time.time()))

    def close(self) -> None:
        self.conn.close()


def cache_key(protocol: str, judge_model: str, prediction: str, references: list[str],
              parents: list[str]) -> tuple[str, str, str, str]:
    """Return the cache key: (protocol, judge model, normalized prediction, reference sets)."""
    from diagnosis_zero.reward import normalize_diagnosis

    normalized = normalize_diagnosis(prediction) or prediction.strip().lower()
    refs = {"score2": sorted({r.strip() for r in references})}
    if protocol == "rarearena-updated":
        refs["score1"] = sorted(set(parents))
    return protocol, judge_model, normalized, json.dumps(refs, ensure_ascii=False, sort_keys=True)


# ---------------------------------------------------------------------------------------------
# Talking to the judge


@dataclass
class Verdict:
    score: int | None
    raw: str | None
    error: str | None = None
    cached: bool = False


@dataclass
class JudgeStats:
    cases: int = 0
    items: int = 0
    sent: int = 0
    cached: int = 0
    errors: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class JudgeAbort(DiagnosisZeroError):
    """The endpoint refused in a way retrying cannot fix (bad key, unknown model, bad request)."""


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "[redacted]") if secret else text


def _retry_delay(exc, attempt: int, config: JudgeConfig) -> float:
    response = getattr(exc, "response", None)
    headers = response.headers if response is not None else {}
    for header, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is not None:
            try:
                return min(max(float(value) / divisor, 0.0), MAX_RETRY_AFTER)
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
    ceiling = min(config.max_backoff, config.backoff * 2 ** attempt)
    return ceiling / 2 + random.uniform(0, ceiling / 2)


async def _ask(client, messages: list[dict], config: JudgeConfig, stats: JudgeStats, api_key: str
               ) -> tuple[str | None, str | None, int, int]:
    """Send one grading request, retrying transient faults; return (text, error, tokens in, out)."""
    import openai

    request = {"model": config.judge_model, "messages": messages, "temperature": config.temperature}
    if config.max_tokens:
        request["max_tokens"] = config.max_tokens
    for attempt in range(config.max_retries + 1):
        try:
            response = await client.chat.completions.create(**request)
        except (openai.APIConnectionError, openai.APIStatusError) as exc:
            status = getattr(exc, "status_code", None)
            transient = status is None or status in (408, 409, 429) or status >= 500
            if not transient:
                message = _redact(str(getattr(exc, "message", exc)), api_key)
                raise JudgeAbort(f"judge endpoint refused the request (HTTP {status}): {message}") from None
            what = f"HTTP {status}" if status else type(exc).__name__
            if attempt == config.max_retries:
                return None, f"judge_error: {what} after {attempt + 1} attempts", 0, 0
            delay = _retry_delay(exc, attempt, config)
            log.debug("judge request failed (%s); retry %d in %.2fs", what, attempt + 1, delay)
            stats.retries += 1
            await asyncio.sleep(delay)
            continue
        except openai.APIError as exc:  # a 200 whose body is not a chat completion
            return None, f"judge_error: malformed response ({type(exc).__name__})", 0, 0
        usage = getattr(response, "usage", None)
        tokens_in = getattr(usage, "prompt_tokens", 0) or 0
        tokens_out = getattr(usage, "completion_tokens", 0) or 0
        choices = getattr(response, "choices", None) or []
        if not choices or choices[0].message is None:
            return None, "judge_error: response without choices", tokens_in, tokens_out
        return choices[0].message.content or "", None, tokens_in, tokens_out
    raise AssertionError("unreachable")


async def _judge_records(records: list[dict], parents_of: dict[str, dict], config: JudgeConfig,
                         api_key: str, cache: JudgeCache, out_fh, stats: JudgeStats) -> None:
    import openai
    from tqdm import tqdm

    client = openai.AsyncOpenAI(api_key=api_key, base_url=config.base_url, max_retries=0,
                                timeout=config.timeout)
    slots = asyncio.Semaphore(config.concurrency)
    in_flight: dict[tuple, asyncio.Task] = {}
    refused: list[JudgeAbort] = []
    bar = tqdm(total=len(records), unit="case", desc="judge", dynamic_ncols=True)

    def show() -> None:
        bar.set_postfix_str(f"sent={stats.sent} cached={stats.cached} errors={stats.errors} "
                            f"tokens={stats.prompt_tokens + stats.completion_tokens}", refresh=False)

    async def grade(prediction: str, references: list[str], parents: list[str]) -> Verdict:
        key = cache_key(config.protocol, config.judge_model, prediction, references, parents)
        if (hit := cache.get(key)) is not None:
            stats.cached += 1
            return Verdict(score=hit[0], raw=hit[1], cached=True)
        if key in in_flight:  # the same pair asked twice in one run is sent once
            stats.cached += 1
            verdict = await asyncio.shield(in_flight[key])
            return Verdict(verdict.score, verdict.raw, verdict.error, cached=verdict.error is None)

        async def send() -> Verdict:
            async with slots:
                if refused:  # the endpoint already refused us for good: send nothing more
                    raise refused[0]
                stats.sent += 1
                try:
                    text, error, tokens_in, tokens_out = await _ask(
                        client, judge_messages(config.protocol, prediction, references, parents),
                        config, stats, api_key)
                except JudgeAbort as exc:
                    refused.append(exc)
                    raise
            stats.prompt_tokens += tokens_in
            stats.completion_tokens += tokens_out
            if error:
                return Verdict(score=None, raw=text, error=error)
            score = parse_judgement(text)
            if score is None:
                return Verdict(score=None, raw=text, error="judge_error: answer is not a score 2/1/0")
            cache.put(key, score, text, tokens_in, tokens_out)
            return Verdict(score=score, raw=text)

        task = in_flight[key] = asyncio.ensure_future(send())
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                in_flight.pop(key, None)

    async def judge_case(record: dict) -> dict:
        items = prediction_items(record["prediction"], config.top_k)
        parents = score1_parents(parents_of.get(str(record.get("orpha_id") or "").strip()))
        verdicts = await asyncio.gather(*(grade(item, record["references"], parents) for item in items))
        stats.items += len(items)
        errors = [f"item {i + 1}: {v.error}" if len(items) > 1 else v.error
                  for i, v in enumerate(verdicts) if v.error]
        stats.errors += bool(errors)
        raws = [v.raw for v in verdicts]
        scores = [v.score for v in verdicts] if items else [0]  # no answer: nothing to grade
        record = dict(record)
        record["judge"] = {
            "score": scores[0],
            "scores": scores,
            "raw": raws if isinstance(record["prediction"], list) else (raws[0] if raws else None),
            "error": "; ".join(errors) or None,
            "cached": bool(items) and all(v.cached for v in verdicts),
            "protocol": config.protocol,
            "model": config.judge_model,
        }
        stats.cases += 1
        bar.update(1)
        show()
        return record

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


def _api_key(config: JudgeConfig) -> str:
    key = os.environ.get(config.api_key_env, "")
    if key:
        return key
    if config.base_url:
        log.info("$%s is not set; sending a placeholder key (local servers ignore it)", config.api_key_env)
        return "EMPTY"
    raise ConfigError("api-key-env", f"environment variable {config.api_key_env} is not set; the OpenAI API needs a key")


def judge_file(config: JudgeConfig) -> JudgeStats:
    """Judge every not-yet-judged line of `config.input` into `config.output`; return the counts."""
    if config.protocol not in PROTOCOLS:
        raise ConfigError("protocol", f"unknown protocol {config.protocol!r}; one of {', '.join(PROTOCOLS)}")
    if config.concurrency < 1:
        raise ConfigError("concurrency", "must be at least 1")
    if Path(config.input).resolve() == Path(config.output).resolve():
        raise ConfigError("output", "must differ from --input")
    if config.protocol == "rarearena-updated":
        if not config.hierarchy:
            raise ConfigError("hierarchy", "the rarearena-updated protocol needs --hierarchy "
                              "orphanet_hypernym.json (RareArena's benchmark_data/), or use --protocol rarearena")
        parents_of = load_hierarchy(config.hierarchy)
    else:
        parents_of = {}
    api_key = _api_key(config)
    for noisy in ("openai", "httpx", "httpx2", "httpcore", "httpcore2"):  # request logs are noise here
        logging.getLogger(noisy).setLevel(logging.WARNING)

    records = []
    for line, record in iter_jsonl(config.input):
        _check_record(config.input, line, record, config.protocol)
        records.append(record)
    done = resume_jsonl(config.output)
    if config.retry_errors and any((r.get("judge") or {}).get("error") for r in done):
        done = [r for r in done if not (r.get("judge") or {}).get("error")]
        from diagnosis_zero.io import atomic_path

        with atomic_path(config.output) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            append_jsonl(fh, done)
    done_keys = {record_key(r) for r in done}
    todo = [r for r in records if record_key(r) not in done_keys]
    if done_keys:
        log.info("%s: %d lines already judged, %d to go", config.output, len(records) - len(todo), len(todo))
    if config.protocol == "rarearena-updated":
        ids = {str(r.get("orpha_id") or "").strip() for r in todo}
        unknown = sum(1 for i in ids if i not in parents_of)
        if unknown:
            log.warning("%d of %d Orphanet codes are not in %s: only score 2 or 0 is possible for them",
                        unknown, len(ids), config.hierarchy)

    stats = JudgeStats()
    cache = JudgeCache(config.cache)
    Path(config.output).parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(config.output, "a", encoding="utf-8") as out_fh:
            asyncio.run(_judge_records(todo, parents_of, config, api_key, cache, out_fh, stats))
    finally:
        cache.close()
    return stats


def add_arguments(parser) -> None:
    add_config_arguments(parser, JudgeConfig)


def run(args) -> int:
    config = config_from_args(JudgeConfig, args)
    stats = judge_file(config)
    print(f"judged {stats.cases} cases ({stats.items} diagnoses) -> {config.output}")
    print(f"  requests sent: {stats.sent}, from cache: {stats.cached}, retries: {stats.retries}")
    print(f"  tokens: {stats.prompt_tokens} prompt + {stats.completion_tokens} completion")
    print(f"  judge errors: {stats.errors}" + (" (lines keep `judge.error` and the raw answer; "
                                               "rerun with --retry-errors to re-judge them)" if stats.errors else ""))
    return 0
