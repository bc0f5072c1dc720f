"""The `diagnosis-zero` command: one verb per module.

Each verb module exposes `add_arguments(parser)` and `run(args) -> int`. Only the module of
the verb being run is imported, so `diagnosis-zero --help` and light verbs never pay for torch.
A module that sets `ACCEPTS_EXTRA_ARGS = True` receives unknown `--flags` in `args.extra_args`
(`train` uses this to forward any GRPOConfig field).
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import importlib
import importlib.util
import json
import logging
import sys
import types
import typing

from diagnosis_zero import __version__
from diagnosis_zero.errors import DiagnosisZeroError

# verb -> (module, one-line description)
VERBS: dict[str, tuple[str, str]] = {
    "prepare": ("diagnosis_zero.data", "RareArena or HPO demo cases -> train/test parquet (verl/TRL schema)"),
    "train": ("diagnosis_zero.train", "GRPO training on TRL from a YAML recipe (default: CPU demo)"),
    "evaluate": ("diagnosis_zero.evaluate", "generate and rule-score completions for a test split"),
    "evaluate-mcq": ("diagnosis_zero.mcq", "accuracy on MMLU college medicine, MedQA or MedMCQA"),
    "diagnose": ("diagnosis_zero.diagnose", "diagnose one case from a file or stdin"),
    "judge": ("diagnosis_zero.judge", "score predictions with an LLM judge (RareArena protocol)"),
    "metrics": ("diagnosis_zero.metrics", "summarise evaluated or judged files as tables"),
    "report": ("diagnosis_zero.report", "plots, tables and an HTML report for training runs"),
    "browse": ("diagnosis_zero.browse", "local web app to read and compare model outputs"),
    "agreement": ("diagnosis_zero.agreement", "how often each rule reward agrees with the LLM judge"),
}


# ---------------------------------------------------------------------------------------------
# One way to turn a config dataclass into command-line flags (every verb but `train`, which uses
# TRL's own parser over its recipe dataclass and GRPOConfig). The flag vocabulary is docs/cli.md.

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _alternatives(annotation) -> list:
    """Return the alternatives of an annotation, with Optional/Union flattened."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [alt for arg in typing.get_args(annotation) for alt in _alternatives(arg)]
    return [annotation]


def _flag_spec(annotation) -> tuple[object, list | None, bool, bool]:
    """Return (item type, choices, is_bool, is_list) for a field annotation."""
    alternatives = [alt for alt in _alternatives(annotation) if alt is not type(None)]
    if len(alternatives) != 1:
        raise TypeError(f"unsupported annotation {annotation!r}: one type (optionally | None) per field")
    tp = alternatives[0]
    origin = typing.get_origin(tp)
    is_list = origin in (list, tuple)
    if is_list:
        tp = (typing.get_args(tp) or (str,))[0]
        origin = typing.get_origin(tp)
    choices = None
    if origin is typing.Literal:
        choices = list(typing.get_args(tp))
        tp = type(choices[0])
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        choices = [member.value for member in tp]
        tp = type(choices[0])
    elif tp is dict or origin is dict:
        tp = json.loads
    if tp is bool and is_list:
        raise TypeError("a list of booleans is not supported")
    return tp, choices, tp is bool, is_list


class _DeprecatedAlias(argparse.Action):
    """An old spelling of a flag: still works, warns once, hidden from --help."""

    def __init__(self, option_strings, dest, new_flag: str, is_bool: bool = False, **kwargs):
        self.new_flag, self.is_bool = new_flag, is_bool
        if is_bool:  # old spellings took `--x`, `--x true` or `--x false`
            kwargs.update(nargs="?", const="true")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        # printed, not logged: logging is configured only after the arguments are parsed
        print(f"warning: {option_string} is deprecated; use {self.new_flag}", file=sys.stderr)
        if self.is_bool:
            word = str(values).strip().lower()
            if word not in _TRUE | _FALSE:
                parser.error(f"{option_string}: expected true or false, got {values!r}")
            values = word in _TRUE
        setattr(namespace, self.dest, values)


def add_dataclass_arguments(parser: argparse.ArgumentParser, config_cls) -> None:
    """Add one flag per field of a config dataclass: `--field-name`, typed from the type hints.

    bool -> `--x/--no-x`; `X | None` -> optional X; `list[X]` -> one or more values; `Literal` and
    Enum -> choices. Field metadata: `help`, `required`, `choices`, `metavar`, `repeatable` (a list
    flag given several times adds up; default None), and `aliases`: old
    spellings kept hidden, working, with a deprecation warning (docs/cli.md).
    """
    hints = typing.get_type_hints(config_cls)
    for config_field in dataclasses.fields(config_cls):
        if not config_field.init:
            continue
        meta = config_field.metadata
        flag = "--" + config_field.name.replace("_", "-")
        tp, choices, is_bool, is_list = _flag_spec(hints[config_field.name])
        choices = meta.get("choices", choices)
        default = (config_field.default_factory() if config_field.default_factory is not dataclasses.MISSING
                   else config_field.default)
        help_text = meta.get("help", "")
        kwargs: dict = {"dest": config_field.name}
        if is_bool:
            kwargs.update(action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            kwargs.update(type=tp, choices=choices, metavar=meta.get("metavar"))
            if is_list:
                kwargs["nargs"] = "+"
                if meta.get("repeatable"):  # `--x a --x b` adds up, as action="append" did
                    kwargs["action"] = "extend"
            if meta.get("required"):
                kwargs.update(required=not meta.get("aliases"), help=help_text)
            else:
                shown = " ".join(map(str, default)) if isinstance(default, list) else default
                suffix = "" if default is None or default == [] else f" (default: {shown})"
                kwargs.update(default=default, help=f"{help_text}{suffix}" if help_text else None)
        target = parser
        if meta.get("required") and meta.get("aliases"):  # the flag or an old spelling of it
            target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument(flag, **kwargs)
        for alias in meta.get("aliases", ()):
            typed = {} if is_bool else {"type": tp, "nargs": "+" if is_list else None}
            target.add_argument(alias, dest=config_field.name, action=_DeprecatedAlias, new_flag=flag,
                                is_bool=is_bool, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **typed)


def dataclass_from_args(config_cls, args: argparse.Namespace):
    """Build a config dataclass from arguments parsed with `add_dataclass_arguments`."""
    return config_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)
                         if f.init and hasattr(args, f.name)})


def _top_level_help() -> str:
    width = max(len(v) for v in VERBS)
    lines = ["usage: diagnosis-zero VERB [options]   (diagnosis-zero VERB --help)", "", "verbs:"]
    lines += [f"  {verb:<{width}}  {desc}" for verb, (_, desc) in VERBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_level_help())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"diagnosis-zero {__version__}")
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"diagnosis-zero: unknown verb '{verb}'\n\n{_top_level_help()}", file=sys.stderr)
        return 2
    module_name, description = VERBS[verb]
    if importlib.util.find_spec(module_name) is None:
        print(f"diagnosis-zero {verb}: not built yet", file=sys.stderr)
        return 2
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"diagnosis-zero {verb}", description=description)
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING)")
    module.add_arguments(parser)
    if getattr(module, "ACCEPTS_EXTRA_ARGS", False):
        args, extra = parser.parse_known_args(rest)
        args.extra_args = extra
    else:
        args = parser.parse_args(rest)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(module.run(args) or 0)
    except DiagnosisZeroError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
