"""The judge's plumbing and its per-item grader: endpoint, client, SQLite cache, `ItemGrader`.

Two kinds of grading share this module's client and cache file:
- **per item** (`ItemGrader`, `judge --protocol item`, and the training-time judge reward): each
  predicted diagnosis is graded alone, with our own prompt and a system message, against the
  score-2 names and the score-1 parents. Items repeat across cases, runs and checkpoints, so each
  is cached on its own, keyed by (label, judge model, normalized item, reference sets). Its numbers
  are NOT comparable with RareArena's published ones (another prompt, another unit of grading).
- **verbatim** (`judge --protocol rarearena` / `rarearena-updated`, see `rarearena.py`): one
  request per case in RareArena's own words. Its cache key is the whole request (model, messages,
  sampling parameters), in a table of its own, so nothing graded per item is ever served to it.

Retries (HTTP 408/409/429/5xx, timeouts, dropped connections) and Retry-After are the `openai`
client's own (`max_retries`); a request it gives up on is a `judge_error`, never a score. A refusal
that retrying cannot fix (bad key, unknown model) stops the run (`JudgeAbort`). The API key is read
from the environment, sent, and never logged or written.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
import os
import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from diagnosis_zero.errors import ConfigError, DiagnosisZeroError

log = logging.getLogger(__name__)

# HTTP attempts of the request being sent by the current task (the client's request hook runs in it)
_ATTEMPTS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("judge_attempts", default=None)

# The label under which per-item judgements are keyed. It is the protocol name they were stored
# under before the verbatim protocols existed, so caches filled by earlier runs stay valid.
ITEM_CACHE_LABEL = "rarearena-updated"


def default_cache_path() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "diagnosis-zero", "judge-cache.sqlite")


@dataclass
class JudgeEndpoint:
    """Where and how to ask the judge: an OpenAI-compatible chat endpoint and its limits."""

    base_url: str | None = None  # None: OpenAI itself
    judge_model: str = "gpt-4o"
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 60.0  # seconds per attempt
    max_retries: int = 6  # the openai client's retries after 408/409/429/5xx, timeouts, drops
    concurrency: int = 16  # requests in flight at once
    temperature: float = 0.1
    max_tokens: int | None = None  # not sent when None


# ---------------------------------------------------------------------------------------------
# Cache


class JudgeCache:
    """SQLite store of judgements; every answer is its own committed transaction (WAL).

    Table `judgements`: per-item grades. Table `requests`: verbatim replies keyed by the SHA-256 of
    the whole request. Only answers that parsed are stored, so an error is asked again next time.
    """

    def __init__(self, path: str | os.PathLike):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # autocommit: each INSERT commits at once, so a kill -9 keeps every answer received
        self.conn = sqlite3.connect(str(path), timeout=60, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS judgements (protocol TEXT NOT NULL, judge_model TEXT NOT NULL, "
            "prediction TEXT NOT NULL, refs TEXT NOT NULL, score INTEGER NOT NULL, raw TEXT, "
            "prompt_tokens INTEGER, completion_tokens INTEGER, created REAL, "
            "PRIMARY KEY (protocol, judge_model, prediction, refs))")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS requests (request_sha256 TEXT PRIMARY KEY, judge_model TEXT NOT NULL, "
            "reply TEXT NOT NULL, prompt_tokens INTEGER, completion_tokens INTEGER, created REAL)")

    def get(self, key: tuple) -> tuple[int, str] | None:
        row = self.conn.execute("SELECT score, raw FROM judgements WHERE protocol=? AND judge_model=? "
                                "AND prediction=? AND refs=?", key).fetchone()
        return (row[0], row[1]) if row else None

    def put(self, key: tuple, score: int, raw: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.conn.execute("INSERT OR REPLACE INTO judgements VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          (*key, score, raw, prompt_tokens, completion_tokens, time.time()))

    def get_reply(self, request: dict) -> str | None:
        row = self.conn.execute("SELECT reply FROM requests WHERE request_sha256=?",
                                (request_digest(request),)).fetchone()
        return row[0] if row else None

    def put_reply(self, request: dict, reply: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.conn.execute("INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?, ?, ?)",
                          (request_digest(request), request["model"], reply, prompt_tokens,
                           completion_tokens, time.time()))

    def close(self) -> None:
        self.conn.close()


def request_digest(request: dict) -> str:
    """Return the SHA-256 of a request body in canonical JSON: the verbatim protocols' cache key."""
    canonical = json.dumps(request, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def cache_key(protocol: str, judge_model: str, prediction: str, references: list[str],
              parents: list[str]) -> tuple[str, str, str, str]:
    """Return a per-item cache key: (label, judge model, normalized prediction, reference sets)."""
    from diagnosis_zero.reward import normalize_diagnosis

    normalized = normalize_diagnosis(prediction) or prediction.strip().lower()
    refs = {"score2": sorted({r.strip() for r in references})}
    if protocol == ITEM_CACHE_LABEL:
        refs["score1"] = sorted(set(parents))
    return protocol, judge_model, normalized, json.dumps(refs, ensure_ascii=False, sort_keys=True)


# ---------------------------------------------------------------------------------------------
# Talking to the judge


@dataclass
class Verdict:
    """One per-item grade: score 2/1/0, or None with `error` set; `raw` is the judge's text."""

    score: int | None
    raw: str | None
    error: str | None = None
    cached: bool = False


@dataclass
class Reply:
    text: str | None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class JudgeStats:
    cases: int = 0
    items: int = 0
    sent: int = 0  # requests asked (each may take several HTTP attempts)
    attempts: int = 0  # HTTP attempts, counted by the client's request hook
    cached: int = 0
    errors: int = 0
    short_replies: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def retries(self) -> int:
        return max(0, self.attempts - self.sent)


class JudgeAbort(DiagnosisZeroError):
    """The endpoint refused in a way retrying cannot fix (bad key, unknown model, bad request)."""


def api_key(endpoint: JudgeEndpoint) -> str:
    """Return the API key from `endpoint.api_key_env`; a placeholder for a local server."""
    key = os.environ.get(endpoint.api_key_env, "")
    if key:
        return key
    if endpoint.base_url:
        log.info("$%s is not set; sending a placeholder key (local servers ignore it)", endpoint.api_key_env)
        return "EMPTY"
    raise ConfigError("api-key-env",
                      f"environment variable {endpoint.api_key_env} is not set; the OpenAI API needs a key")


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "[redacted]") if secret and secret != "EMPTY" else text


class JudgeClient:
    """An `openai.AsyncOpenAI` with bounded concurrency, request counting and a stop on refusal.

    The client is made lazily for the running event loop (and remade for a new one), so a caller
    that runs `asyncio.run` per batch, as a training reward does, can keep one `JudgeClient`.
    """

    def __init__(self, endpoint: JudgeEndpoint, stats: JudgeStats | None = None):
        if endpoint.concurrency < 1:
            raise ConfigError("concurrency", "must be at least 1")
        self.endpoint = endpoint
        self.stats = stats or JudgeStats()
        self._key = api_key(endpoint)
        self._client = None
        self._loop = None
        self._slots: asyncio.Semaphore | None = None
        self.refused: JudgeAbort | None = None
        for noisy in ("openai", "httpx", "httpx2", "httpcore", "httpcore2"):  # request logs are noise here
            logging.getLogger(noisy).setLevel(logging.WARNING)

    def _ensure_client(self):
        import openai

        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            stats = self.stats

            async def count_attempt(request) -> None:
                stats.attempts += 1
                if (mine := _ATTEMPTS.get()) is not None:
                    mine[0] += 1

            http_client = openai.DefaultAsyncHttpxClient(event_hooks={"request": [count_attempt]})
            self._client = openai.AsyncOpenAI(api_key=self._key, base_url=self.endpoint.base_url,
                                              max_retries=self.endpoint.max_retries,
                                              timeout=self.endpoint.timeout, http_client=http_client)
            self._loop, self._slots = loop, asyncio.Semaphore(self.endpoint.concurrency)
        return self._client

    def request(self, messages: list[dict], temperature: float | None = None,
                max_tokens: int | None = None) -> dict:
        """Return the request body: model, messages and the sampling parameters that are set."""
        body = {"model": self.endpoint.judge_model, "messages": messages,
                "temperature": self.endpoint.temperature if temperature is None else temperature}
        max_tokens = self.endpoint.max_tokens if max_tokens is None else max_tokens
        if max_tokens:
            body["max_tokens"] = max_tokens
        return body

    async def ask(self, request: dict) -> Reply:
        """Send one chat request (the client retries transient faults); return its text or an error."""
        import openai

        client = self._ensure_client()
        async with self._slots:
            if self.refused is not None:  # the endpoint already refused us for good: send nothing more
                raise self.refused
            self.stats.sent += 1
            attempts = [0]
            _ATTEMPTS.set(attempts)
            try:
                response = await client.chat.completions.create(**request)
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status in (408, 409, 429) or status >= 500:
                    return Reply(None, f"judge_error: HTTP {status} after {attempts[0]} attempts")
                message = _redact(str(getattr(exc, "message", exc)), self._key)
                self.refused = JudgeAbort(f"judge endpoint refused the request (HTTP {status}): {message}")
                raise self.refused from None
            except openai.APIConnectionError as exc:  # timeouts and dropped connections, retried
                return Reply(None, f"judge_error: {type(exc).__name__} after {attempts[0]} attempts")
            except openai.APIError as exc:  # a 200 whose body is not a chat completion
                return Reply(None, f"judge_error: malformed response ({type(exc).__name__})")
        usage = getattr(response, "usage", None)
        reply = Reply(None, None, getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0)
        self.stats.prompt_tokens += reply.prompt_tokens
        self.stats.completion_tokens += reply.completion_tokens
        choices = getattr(response, "choices", None) or []
        if not choices or choices[0].message is None:
            reply.error = "judge_error: response without choices"
        else:
            reply.text = choices[0].message.content or ""
        return reply

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


# ---------------------------------------------------------------------------------------------
# The per-item grader: our own prompt, one diagnosis per request

SYSTEM_PROMPT = ("You are a board-certified clinical geneticist grading another model's rare-disease "
                 "diagnosis against the reference. You answer with one digit.")

ITEM_PROMPT = """Grade the predicted diagnosis of a rare-disease case against two lists of names.

Score-2 names (the reference disease): {references}
Score-1 names (accepted broader categories): {parents}
Predicted diagnosis: {prediction}

Score 2 if the prediction is an exact match, a strict synonym or a clear equivalent (another accepted name, eponym, abbreviation or spelling) of a score-2 name.
Score 1 if it is not, but it is an exact match, a strict synonym or a clear equivalent of a score-1 name. No other broader category earns a 1.
Score 0 otherwise, including a different disease, a different subtype or type number, or any broader category that is not a score-1 name.

Answer with the single digit 2, 1 or 0 and nothing else."""


def item_messages(prediction: str, references: list[str], parents: list[str]) -> list[dict]:
    """Return the chat messages asking the judge to grade one predicted diagnosis."""
    user = ITEM_PROMPT.format(references=" | ".join(references), prediction=prediction,
                              parents=" | ".join(parents) if parents else "(none)")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_BARE = re.compile(r"[\s*`'\"(\[]*([012])[\s*`'\")\].]*")
_LEADING = re.compile(r"[\s*`'\"(\[]*([012])\s*(?:[-:.)]|$)")
_LABELLED = re.compile(r"\b(?:score|grade|rating|answer)\s*(?:is|:|=)?\s*[*`'\"(\[]*([012])\b", re.IGNORECASE)


def parse_judgement(text: str | None) -> int | None:
    """Return the score 2/1/0 in a per-item judge's answer, or None when it does not state exactly one."""
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


@dataclass
class ItemGrader:
    """Grade one predicted diagnosis at a time, cached item by item; the reusable per-item API.

    `grade(answer, references, parents)`: references are the score-2 names, parents the score-1
    names (empty: only 2 or 0). The same item asked twice at once is sent once. `lookup` answers
    from the cache alone. Its numbers are not comparable with RareArena's published ones.
    """

    endpoint: JudgeEndpoint
    cache: JudgeCache
    stats: JudgeStats = field(default_factory=JudgeStats)

    def __post_init__(self) -> None:
        self.client = JudgeClient(self.endpoint, self.stats)
        self._in_flight: dict[tuple, asyncio.Future] = {}

    def key(self, answer: str, references: list[str], parents: list[str]) -> tuple[str, str, str, str]:
        return cache_key(ITEM_CACHE_LABEL, self.endpoint.judge_model, answer, references, parents)

    def lookup(self, answer: str, references: list[str], parents: list[str]) -> Verdict | None:
        """Return the cached verdict for this item, or None; never sends a request."""
        hit = self.cache.get(self.key(answer, references, parents))
        return Verdict(score=hit[0], raw=hit[1], cached=True) if hit is not None else None

    async def grade(self, answer: str, references: list[str], parents: list[str]) -> Verdict:
        """Return the judge's verdict on one predicted diagnosis (from the cache when known)."""
        if not answer.strip():
            return Verdict(score=0, raw=None)  # no diagnosis: nothing to ask
        key = self.key(answer, references, parents)
        if (hit := self.cache.get(key)) is not None:
            self.stats.cached += 1
            return Verdict(score=hit[0], raw=hit[1], cached=True)
        if key in self._in_flight:  # the same item asked twice in one run is sent once
            self.stats.cached += 1
            verdict = await asyncio.shield(self._in_flight[key])
            return Verdict(verdict.score, verdict.raw, verdict.error, cached=verdict.error is None)
        task = self._in_flight[key] = asyncio.ensure_future(self._send(key, answer, references, parents))
        # The entry leaves when the request ends, even if every caller was cancelled meanwhile (a
        # deadline): a later call then asks again instead of reading a stale error.
        task.add_done_callback(lambda done, key=key: self._in_flight.pop(key, None)
                               if self._in_flight.get(key) is done else None)
        return await asyncio.shield(task)

    async def _send(self, key: tuple, answer: str, references: list[str], parents: list[str]) -> Verdict:
        reply = await self.client.ask(self.client.request(item_messages(answer, references, parents)))
        if reply.error:
            return Verdict(score=None, raw=reply.text, error=reply.error)
        score = parse_judgement(reply.text)
        if score is None:
            return Verdict(score=None, raw=reply.text, error="judge_error: answer is not a score 2/1/0")
        self.cache.put(key, score, reply.text, reply.prompt_tokens, reply.completion_tokens)
        return Verdict(score=score, raw=reply.text)

    async def close(self) -> None:
        await self.client.close()
