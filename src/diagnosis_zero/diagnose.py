"""`diagnosis-zero diagnose`: diagnose one case from a file or stdin, and show the reasoning.

    diagnosis-zero diagnose --model runs/demo/checkpoint-50 --case-file case.txt
    echo "A 4-year-old boy with ..." | diagnosis-zero diagnose --lexicon en_product1.xml

With `--lexicon` (Orphanet's en_product1.xml or RareArena's orphanet_hypernym.json) the answer is
resolved to its Orphanet entry.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from diagnosis_zero.errors import ConfigError, InputFileError
from diagnosis_zero.evaluate import GenerationConfig, add_config_arguments, config_from_args, load_generator

_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


@dataclass
class DiagnoseConfig:
    model: str = field(default="bundled:smollm2-135m-instruct", metadata={
        "help": "model: local folder (e.g. a checkpoint), hub id or bundled:NAME"})
    case_file: str | None = field(default=None, metadata={"help": "text file with the case; default: read stdin"})
    template: str = field(default="r1-zero", metadata={
        "help": "prompt template: r1-zero (the original study's), rarearena-top5, or a file with {case}"})
    lexicon: str | None = field(default=None, metadata={
        "help": "Orphanet en_product1.xml or orphanet_hypernym.json, to resolve the answer to an Orphanet entry"})


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
    add_config_arguments(parser, DiagnoseConfig)
    add_config_arguments(parser, GenerationConfig)


def run(args) -> int:
    from diagnosis_zero.data import build_prompt
    from diagnosis_zero.reward import load_lexicon

    config = config_from_args(DiagnoseConfig, args)
    generation = config_from_args(GenerationConfig, args)
    if generation.num_samples != 1:
        raise ConfigError("num_samples", "diagnose writes one answer; use `evaluate` for several samples")
    lexicon = load_lexicon(config.lexicon) if config.lexicon else None  # fails before the model loads
    prompt = build_prompt(read_case(config.case_file), config.template)
    generator = load_generator(config.model, generation)
    try:
        [[(text, _)]] = generator.generate([prompt])
    finally:
        generator.close()
    ranked = config.template == "rarearena-top5"
    print(describe(generation.assistant_prefix + text, lexicon, ranked))
    return 0
