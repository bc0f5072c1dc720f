"""`diagnosis-zero evaluate`: generate completions for a test split and score them with the reward.

(Work in progress: the generation part lands with the data/reward/models modules.)
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path

from diagnosis_zero.io import iter_jsonl

log = logging.getLogger(__name__)

_ARG_TYPES = {"int": int, "float": float, "str": str}


def add_config_arguments(parser: argparse.ArgumentParser, config_cls) -> None:
    """Add one `--flag` per field of a config dataclass, with the field's default and help."""
    for config_field in dataclasses.fields(config_cls):
        flag = "--" + config_field.name.replace("_", "-")
        type_name = str(config_field.type).replace(" | None", "")
        help_text = config_field.metadata.get("help", "")
        if config_field.metadata.get("required"):
            parser.add_argument(flag, dest=config_field.name, required=True, help=help_text,
                                type=_ARG_TYPES[type_name])
        elif type_name == "bool":
            parser.add_argument(flag, dest=config_field.name, default=config_field.default,
                                action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag, dest=config_field.name, default=config_field.default,
                                type=_ARG_TYPES[type_name], choices=config_field.metadata.get("choices"),
                                help=f"{help_text} (default: {config_field.default})")


def config_from_args(config_cls, args: argparse.Namespace):
    """Build a config dataclass from the parsed CLI arguments of `add_config_arguments`."""
    return config_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)})


def resume_jsonl(path: str | os.PathLike) -> list[dict]:
    """Return the records already in a resumable output file (none if it does not exist).

    A crash can leave a last line without its newline: that partial line is cut off the file
    (and its case redone), so appending never glues a new record onto it.
    """
    path = Path(path)
    if not path.exists():
        return []
    with open(path, "rb+") as fh:
        content = fh.read()
        if content and not content.endswith(b"\n"):
            keep = content.rfind(b"\n") + 1
            log.warning("%s: dropping a partial last line left by an interrupted run (%d bytes)",
                        path, len(content) - keep)
            fh.truncate(keep)
    return [record for _, record in iter_jsonl(path)]


def record_key(record: dict) -> tuple[str, int]:
    """The identity of an output line: case id and sample index."""
    return str(record.get("id")), int(record.get("sample") or 0)
