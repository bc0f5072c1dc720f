"""`diagnosis-zero diagnose`: diagnose one case from a file or stdin, and show the reasoning.

    diagnosis-zero diagnose --model runs/demo/checkpoint-50 --case-file case.txt
    echo "A 4-year-old boy with ..." | diagnosis-zero diagnose --orphanet en_product1.xml

With `--orphanet` (Orphanet's en_product1.xml or RareArena's orphanet_hypernym.json) the answer is
resolved to its Orphanet entry. Given a training run's checkpoint, the template, assistant prefix and
generation length default to the run's own (its saved recipe), as in `evaluate` and `browse`. One
answer, so there is no `--num-samples`.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from diagnosis_zero.cli import add_dataclass_arguments, dataclass_from_args
from diagnosis_zero.errors import InputFileError
from diagnosis_zero.generation import DecodingConfig, GenerationConfig, load_generator

_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


@dataclass
class DiagnoseConfig:
    model: str = field(default="bundled:smollm2-135m-instruct", metadata={
        "help": "model: local folder (e.g. a checkpoint), hub id or bundled:NAME"})
    case_file: str | None = field(default=None, metadata={"help": "text file with the case; default: read stdin"})
    template: str | None = field(default=None, metadata={
        "help": "prompt template: r1-zero (the original study's), rarearena-top5, or a file with {case}; "
                "default: a training run's own, else r1-zero"})
    orphanet: list[str] | None = field(default=None, metadata={"aliases": ("--lexicon",), "help": (
        "Orphanet en_product1.xml and/or orphanet_hypernym.json, to resolve the answer to an Orphanet entry "
        "(names read from the XML when both are given)")})


def read_case(case_file: str | None) -> str:
    """Return the case text from a file, or from stdin when no file is given."""
    if case_file is None:
        if sys.stdin.isatty():
            print("Type or paste the case, then Ctrl-D:", file=sys.stderr)
        text, source = sys.stdin.read(), "<stdin>"
    else:
        path = Path(case_file)
        if not path.is_file():
            raise InputFileError(path, None, None, "file not found")
        try:
            text, source = path.read_text(encoding="utf-8"), str(path)
        except UnicodeDecodeError as exc:
            raise InputFileError(path, None, None, f"not valid UTF-8 (byte offset {exc.start})") from None
    if not text.strip():
        raise InputFileError(source, None, None, "the case text is empty")
    return text.strip()


def describe(completion: str, lexicon=None, ranked: bool = False) -> str:
    """Return the reasoning, the answer and (with a lexicon) its Orphanet entry, as printed."""
    from diagnosis_zero.reward import extract_answer, parse_ranked_list

    think = _THINK.search(completion)
    # without a think block, the reasoning is whatever came before the answer
    reasoning = (think.group(1) if think else completion.split("<answer>", 1)[0]).strip()
    answer = extract_answer(completion)
    lines = ["Reasoning:", reasoning or "(none)", ""]
    if not answer:
        lines.append("Answer: (none: the completion has no <answer>...</answer> block)")
        return "\n".join(lines)
    diagnoses = parse_ranked_list(answer) if ranked else [answer]
    if ranked:
        lines.append("Answer (ranked):")
        lines += [f"  {rank}. {name}" for rank, name in enumerate(diagnoses, start=1)]
    else:
        lines.append(f"Answer: {answer}")
    if lexicon is not None:
        for name in diagnoses:
            codes = sorted(lexicon.lookup(name), key=lambda c: (len(c), c))
            if codes:
                entries = "; ".join(f"ORPHA:{code} {lexicon.names[code][0]}" for code in codes)
                lines.append(f"Orphanet: {name} -> {entries}")
            else:
                lines.append(f"Orphanet: {name} -> not found in {Path(lexicon.path).name}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, DiagnoseConfig)
    add_dataclass_arguments(parser, DecodingConfig)


def run(args) -> int:
    from diagnosis_zero.data import build_prompt
    from diagnosis_zero.evaluate import describe_generation, lexicon_path
    from diagnosis_zero.generation import prompting_record, resolve_decoding
    from diagnosis_zero.reward import load_lexicon

    config = dataclass_from_args(DiagnoseConfig, args)
    decoding, template = resolve_decoding(dataclass_from_args(GenerationConfig, args), config.model,
                                          config.template, default_template="r1-zero")
    # fails before the model loads
    lexicon = load_lexicon(lexicon_path(config.orphanet)) if config.orphanet else None
    prompt = build_prompt(read_case(config.case_file), template)
    generator = load_generator(config.model, decoding)
    try:
        [[(text, _)]] = generator.generate([prompt])
    finally:
        generator.close()
    ranked = template == "rarearena-top5"
    print(describe(decoding.assistant_prefix + text, lexicon, ranked))
    print(f"\n({describe_generation(prompting_record(decoding, template))})")
    return 0
