"""The `diagnosis-zero` command: one verb per module.

Each verb module exposes `add_arguments(parser)` and `run(args) -> int`. Only the module of
the verb being run is imported, so `diagnosis-zero --help` and light verbs never pay for torch.
A module that sets `ACCEPTS_EXTRA_ARGS = True` receives unknown `--flags` in `args.extra_args`
(`train` uses this to forward any GRPOConfig field).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

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
}


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
