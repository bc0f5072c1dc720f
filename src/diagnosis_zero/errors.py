"""Domain errors. The CLI prints them on one line, without a traceback, and exits with code 2."""

from __future__ import annotations


class DiagnosisZeroError(Exception):
    """Base class for every error a user can fix (bad input, bad config, missing file)."""

    exit_code = 2


class InputFileError(DiagnosisZeroError):
    """A problem with one record of an input file: names the file, the 1-based line and the field."""

    def __init__(self, path, line: int | None, field: str | None, reason: str):
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = reason
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{reason}")


class ConfigError(DiagnosisZeroError):
    """A bad configuration value (recipe field, CLI option); names the field."""

    def __init__(self, field: str, reason: str, source: str | None = None):
        self.field = field
        self.reason = reason
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}field '{field}': {reason}")
