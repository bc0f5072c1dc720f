"""Small file helpers shared by every verb: JSON Lines reading with precise errors, atomic writes."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from diagnosis_zero.errors import InputFileError


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
