"""File helpers shared by every verb: JSON Lines reading (with one torn-tail policy), finding
results files by step, the Orphanet hierarchy of `--orphanet`, and atomic writes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from diagnosis_zero.errors import ConfigError, InputFileError

if TYPE_CHECKING:
    from diagnosis_zero.reward import Hierarchy

log = logging.getLogger(__name__)


def iter_jsonl(path: str | os.PathLike, *, skip_invalid: bool = False, errors: list | None = None
               ) -> Iterator[tuple[int, dict]]:
    """Yield `(line_number, record)` for each non-blank line of a JSON Lines file.

    Raises `InputFileError` naming the file and the 1-based line for a missing file, bytes that
    are not UTF-8, a line that is not JSON or not a JSON object. With `skip_invalid=True` bad
    lines are skipped and their `InputFileError`s appended to `errors` instead.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, None, None, "file not found")
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                err = InputFileError(path, line_no, None, f"not valid UTF-8 (byte offset {exc.start})")
                if not skip_invalid:
                    raise err from None
                if errors is not None:
                    errors.append(err)
                continue
            if not text.strip():
                continue
            # without its line ending: an error at the end of the line would otherwise be placed
            # at column 1 of the (nonexistent) next line
            text = text.rstrip("\r\n")
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                err = InputFileError(path, line_no, None, f"not valid JSON ({exc.msg} at column {exc.colno})")
            else:
                if isinstance(record, dict):
                    yield line_no, record
                    continue
                err = InputFileError(path, line_no, None, f"expected a JSON object, got {type(record).__name__}")
            if not skip_invalid:
                raise err
            if errors is not None:
                errors.append(err)


# ---------------------------------------------------------------------------------------------
# Reading JSON Lines that a writer may still be appending to. One policy for every reader: a
# last line with no newline that does not parse is a *torn tail* (a writer still at work, or
# killed mid-line: our writers write each line and its newline in one call), so it is skipped and
# reported; any other bad line is the file's own defect, an error unless the caller asks to skip it.


@dataclass
class JsonlLines:
    """The readable lines of one JSON Lines file, and what was left out."""

    path: Path
    rows: list[tuple[int, dict]]          # (1-based line number, record)
    torn_tail: InputFileError | None = None
    bad_lines: list[InputFileError] = field(default_factory=list)  # only with skip_bad=True

    @property
    def records(self) -> list[dict]:
        return [record for _, record in self.rows]


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        if fh.seek(0, os.SEEK_END) == 0:
            return True
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def read_jsonl(path: str | os.PathLike, *, skip_bad: bool = False) -> JsonlLines:
    """Return the records of a JSON Lines file, skipping a torn tail (see above).

    A missing file or a bad line other than the torn tail raises `InputFileError` (file, line);
    with `skip_bad=True` bad lines are skipped and listed in `bad_lines` instead.
    """
    path = Path(path)
    errors: list[InputFileError] = []
    rows = list(iter_jsonl(path, skip_invalid=True, errors=errors))
    result = JsonlLines(path, rows)
    if errors and not _ends_with_newline(path):
        last_line = path.read_bytes().count(b"\n") + 1
        if errors[-1].line == last_line:
            result.torn_tail = errors.pop()
            log.warning("%s:%d: skipping a partial last line (the file is still being written?)",
                        path, last_line)
    if errors and not skip_bad:
        raise errors[0]
    result.bad_lines = errors
    return result


def resume_jsonl(path: str | os.PathLike) -> list[dict]:
    """Return the records already in a resumable output file (none if it does not exist).

    A torn tail is cut off the file (its case is redone), and a last line that lacks only its
    newline gets one, so appending never glues a new record onto it. Other bad lines raise.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = read_jsonl(path)
    if not _ends_with_newline(path):
        with open(path, "rb+") as fh:
            content = fh.read()
            if lines.torn_tail is not None:
                keep = content.rfind(b"\n") + 1
                log.warning("%s: dropping a partial last line left by an interrupted run (%d bytes)",
                            path, len(content) - keep)
                fh.truncate(keep)
            else:
                fh.write(b"\n")
    return lines.records


# ---------------------------------------------------------------------------------------------
# Results files: `evaluate` writes step-N.jsonl per checkpoint, `judge` step-N.judged.jsonl.

_STEP_FILE = re.compile(r"^step-(\d+)(\.judged)?\.jsonl$")
_STEP_PREFIX = re.compile(r"^step-(\d+)(?![\d])")


@dataclass(frozen=True)
class ResultsFile:
    path: Path
    name: str          # what the file is of: "step-N", or the file name without (.judged).jsonl
    step: int | None   # N of a step-N file name, else None
    judged: bool       # a judge output (*.judged.jsonl)


def results_file(path: str | os.PathLike) -> ResultsFile:
    """Describe one results file from its name (step-N[.judged].jsonl, or any *.jsonl)."""
    path = Path(path)
    judged = path.name.endswith(".judged.jsonl")
    name = path.name.removesuffix(".jsonl").removesuffix(".judged")
    match = _STEP_PREFIX.match(path.name)
    return ResultsFile(path, name, int(match.group(1)) if match else None, judged)


def find_results(path: str | os.PathLike) -> list[ResultsFile]:
    """Return the results files a `--results` path stands for, by step, evaluated before judged.

    A file stands for itself, whatever its name; a folder for its step-N.jsonl and
    step-N.judged.jsonl files (none: an empty list). A missing path raises `InputFileError`.
    """
    path = Path(path)
    if path.is_file():
        return [results_file(path)]
    if not path.is_dir():
        raise InputFileError(path, None, None, "results path not found")
    found = [results_file(child) for child in path.iterdir() if _STEP_FILE.match(child.name) and child.is_file()]
    return sorted(found, key=lambda f: (f.step, f.judged))


def orphanet_hierarchy(paths) -> Hierarchy | None:
    """Return the hierarchy of the `orphanet_hypernym.json` among `--orphanet` paths (None: not given).

    `--orphanet` may also name Orphanet's en_product1.xml (names and synonyms only), which has no
    hierarchy; the JSON is told apart by its suffix.
    """
    from diagnosis_zero.reward import load_hierarchy

    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths or [])
    json_files = [p for p in paths if str(p).lower().endswith(".json")]
    if len(json_files) > 1:
        raise ConfigError("orphanet", "give one orphanet_hypernym.json")
    return load_hierarchy(json_files[0]) if json_files else None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, on error delete it.

    Readers never see a half-written file, and an interrupted run leaves nothing behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def append_jsonl(fh, records) -> None:
    """Append records to an open text file, one JSON line each, and flush to disk.

    Used for resumable outputs: a crash loses at most the batch being written.
    """
    for record in records:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    fh.flush()
    os.fsync(fh.fileno())
