"""`diagnosis-zero agreement`: how often each rule reward agrees with the LLM judge.

For judged results (`step-N.judged.jsonl`; `--results` files, or run folders as `io.find_results`
reads them), each rule method grades the same answer the judge saw,
on the judge's scale (`reward.rule_grade`: 2 names the diagnosis, 1 names a small Orphanet parent
group, 0 neither). The methods:

- `seed`: the original study's matcher;
- `clinical`: the default reward's matcher;
- `clinical+lexicon`: with Orphanet names and synonyms (`--orphanet`: en_product1.xml, else the JSON);
- `clinical+partial`: with the lexicon (if any) and Orphanet partial credit (needs orphanet_hypernym.json).

Against the judge's verdicts (score 2 vs not) each method gets a confusion table, precision,
recall and Cohen's kappa. This is how to choose the reward to train with. A case is a
disagreement (`disagrees`) when the rule's grade differs from the judge's score as far as the
method can express it: a method without partial credit only says 2 or 0, so a judge's 1 counts as
0 for it; the partial-credit method is compared on 2/1/0. `browse`'s "judge disagreement" filter
uses the same function. Lines the judge could not grade (`judge.score` null) are counted, not used.
"""

from __future__ import annotations

import argparse
import csv
import functools
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path

from diagnosis_zero import reward
from diagnosis_zero.cli import add_dataclass_arguments, dataclass_from_args
from diagnosis_zero.errors import ConfigError, InputFileError
from diagnosis_zero.io import atomic_path, find_results, read_jsonl, write_text_atomic

log = logging.getLogger(__name__)

METHOD_NAMES = ("seed", "clinical", "clinical+lexicon", "clinical+partial")
JUDGED_GLOB = "step-N.judged.jsonl"


@dataclass
class AgreementConfig:
    """Flags of `diagnosis-zero agreement`."""

    results: list[str] = field(default_factory=list, metadata={
        "required": True, "metavar": "PATH",
        "help": "judged results files (step-N.judged.jsonl) or folders holding them"})
    orphanet: list[str] | None = field(default=None, metadata={
        "metavar": "PATH", "aliases": ["--hierarchy", "--lexicon"],
        "help": "Orphanet file(s): en_product1.xml and/or orphanet_hypernym.json; adds the methods "
                "clinical+lexicon and (with the JSON) clinical+partial"})
    output_dir: str | None = field(default=None, metadata={
        "metavar": "DIR", "help": "write agreement.md, agreement.csv and disagreements.csv here"})
    partial_credit: float = field(default=reward.RewardConfig.partial_credit, metadata={
        "help": "the partial-credit level of clinical+partial (reward.RewardConfig.partial_credit)"})
    partial_max_diseases: int = field(default=reward.MAX_PARENT_DISEASES, metadata={
        "help": "parent groups of at most this many diseases earn partial credit"})


def method_configs(orphanet: Sequence[str] | None = (), partial_credit: float | None = None,
                   partial_max_diseases: int | None = None) -> dict[str, reward.RewardConfig]:
    """Return the rule methods available with these Orphanet files: name -> RewardConfig."""
    files = [str(p) for p in orphanet or ()]
    xml = [p for p in files if _is_xml(p)]
    json_files = [p for p in files if not _is_xml(p)]
    lexicon = (xml or json_files or [None])[0]
    configs = {"seed": reward.resolve_config(preset="original"), "clinical": reward.PRESETS["clinical"]}
    if lexicon:
        configs["clinical+lexicon"] = reward.resolve_config(lexicon=lexicon)
    if json_files:
        options = {"lexicon": lexicon, "hierarchy": json_files[0]}
        if partial_credit is not None:
            options["partial_credit"] = partial_credit
        if partial_max_diseases is not None:
            options["partial_max_diseases"] = partial_max_diseases
        configs["clinical+partial"] = reward.resolve_config(**options)
    return configs


def _is_xml(path: str) -> bool:
    if not Path(path).is_file():
        raise InputFileError(path, None, None, "Orphanet file not found")
    with open(path, "rb") as fh:
        return fh.read(512).lstrip().startswith(b"<")


def judged_answer(record: Mapping) -> str:
    """Return the answer the judge's top-1 `score` is about: the first item of a ranked list (a
    list prediction, or RareArena's raw output: `judge.answer_source == "raw"`), else the
    completion's answer block, else the prediction."""
    prediction = record.get("prediction")
    if isinstance(prediction, list):
        return str(prediction[0]) if prediction else ""
    judge = record.get("judge")
    if isinstance(judge, Mapping) and judge.get("answer_source") == "raw":
        items = reward.parse_ranked_list(record.get("completion") or "")
        return items[0] if items else ""
    answer = reward.extract_answer(record.get("completion") or "")
    return answer or (prediction if isinstance(prediction, str) else "")


def rule_grade(record: Mapping, config: reward.RewardConfig) -> int:
    """Return the rule's grade (2/1/0) of a results line under one method's config."""
    return reward.rule_grade(judged_answer(record), record.get("references") or [], record.get("orpha_id"), config)


def judge_score(record: Mapping) -> int | None:
    """Return the judge's top-1 score (0, 1 or 2), or None when the line was not graded."""
    judge = record.get("judge")
    return judge.get("score") if isinstance(judge, Mapping) else None


def disagrees(record: Mapping, method: str | reward.RewardConfig = "clinical",
              orphanet: Sequence[str] | None = ()) -> bool | None:
    """True when a method's rule grade differs from the judge's verdict; None when unjudged.

    A method without partial credit answers 2 or 0, so the judge's 1 counts as 0 for it; the
    partial-credit method is compared on 2/1/0. `method` is a name (`seed`, `clinical`,
    `clinical+lexicon`, `clinical+partial`; the last two need `orphanet` files) or a RewardConfig.
    """
    score = judge_score(record)
    if score is None:
        return None
    config = method if isinstance(method, reward.RewardConfig) else _named_config(method, tuple(orphanet or ()))
    return rule_grade(record, config) != _judge_grade(score, config)


@functools.lru_cache(maxsize=64)  # browse asks once per line
def _named_config(method: str, orphanet: tuple[str, ...]) -> reward.RewardConfig:
    configs = method_configs(orphanet)
    if method not in configs:
        needs = " (needs --orphanet files)" if method in METHOD_NAMES else ""
        raise ConfigError("method", f"unknown or unavailable method {method!r}{needs}; available: {', '.join(configs)}")
    return configs[method]


def _judge_grade(score: int, config: reward.RewardConfig) -> int:
    return score if config.hierarchy else (2 if score == 2 else 0)


# ---------------------------------------------------------------------------------------------
# Reading judged files


def find_judged_files(paths: Iterable[str]) -> list[Path]:
    """Return the judged files that `--results` paths stand for (`io.find_results`: a file for
    itself, a folder for its step-N.judged.jsonl files, by step)."""
    files: list[Path] = []
    for path in paths:
        found = [f.path for f in find_results(path) if f.judged or Path(path).is_file()]
        if not found:
            raise InputFileError(path, None, None, f"no {JUDGED_GLOB} files in this folder (run `judge` first)")
        files.extend(found)
    return files


def read_judged(path: Path) -> list[tuple[int, dict]]:
    """Return (line number, record) for each judged line, validating the fields agreement reads."""
    records = []
    for line, record in read_jsonl(path).rows:  # a torn last line (a judge still writing) is skipped
        judge = record.get("judge")
        if not isinstance(judge, Mapping):
            raise InputFileError(path, line, "judge", "missing or not an object (run `diagnosis-zero judge` first)")
        score = judge.get("score")
        if score is not None and (isinstance(score, bool) or score not in (0, 1, 2)):
            raise InputFileError(path, line, "judge.score", f"must be 0, 1, 2 or null, got {score!r}")
        references = record.get("references")
        if not isinstance(references, list) or not all(isinstance(r, str) for r in references):
            raise InputFileError(path, line, "references", "must be a list of names")
        prediction = record.get("prediction")
        if prediction is not None and not isinstance(prediction, (str, list)):
            raise InputFileError(path, line, "prediction", f"must be a string or a list, got {prediction!r}")
        if not isinstance(record.get("completion", ""), str):
            raise InputFileError(path, line, "completion", "must be a string")
        records.append((line, record))
    return records


# ---------------------------------------------------------------------------------------------
# Statistics


@dataclass
class MethodAgreement:
    """The agreement of one rule method with the judge over the graded lines."""

    method: str
    tp: int = 0  # rule 2, judge 2
    fp: int = 0  # rule 2, judge not 2
    fn: int = 0  # rule not 2, judge 2
    tn: int = 0
    grades: Counter = field(default_factory=Counter)  # (rule grade, judge grade) -> lines
    disagreements: int = 0

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def kappa(self) -> float | None:
        """Cohen's kappa of "score 2 vs not"."""
        return cohen_kappa(Counter({(2, 2): self.tp, (2, 0): self.fp, (0, 2): self.fn, (0, 0): self.tn}))

    @property
    def kappa_grades(self) -> float | None:
        """Cohen's kappa on the grades the method can give (2/0, or 2/1/0 with partial credit)."""
        return cohen_kappa(self.grades)


def cohen_kappa(pairs: Mapping[tuple[int, int], int]) -> float | None:
    """Return Cohen's kappa of (rater A, rater B) label counts; None when chance agreement is total."""
    n = sum(pairs.values())
    if not n:
        return None
    observed = sum(count for (a, b), count in pairs.items() if a == b) / n
    first, second = Counter(), Counter()
    for (a, b), count in pairs.items():
        first[a] += count
        second[b] += count
    expected = sum(first[label] * second[label] for label in first) / (n * n)
    return None if expected == 1 else (observed - expected) / (1 - expected)


def measure(files: Sequence[Path], configs: Mapping[str, reward.RewardConfig]
            ) -> tuple[list[MethodAgreement], list[dict], int]:
    """Return (agreement per method, disagreement rows, unjudged lines) over judged files."""
    results = {name: MethodAgreement(name) for name in configs}
    rows: list[dict] = []
    unjudged = 0
    for path in files:
        for line, record in read_judged(path):
            score = judge_score(record)
            if score is None:
                unjudged += 1
                continue
            for name, config in configs.items():
                grade = rule_grade(record, config)
                judged = _judge_grade(score, config)
                stats = results[name]
                stats.grades[(grade, judged)] += 1
                if grade == 2:
                    stats.tp, stats.fp = stats.tp + (score == 2), stats.fp + (score != 2)
                else:
                    stats.fn, stats.tn = stats.fn + (score == 2), stats.tn + (score != 2)
                if grade != judged:
                    stats.disagreements += 1
                    rows.append({"method": name, "file": str(path), "line": line, "id": record.get("id", ""),
                                 "sample": record.get("sample", ""), "model": record.get("model", ""),
                                 "step": record.get("step", ""), "answer": judged_answer(record),
                                 "references": " | ".join(record.get("references") or []),
                                 "orpha_id": record.get("orpha_id") or "", "rule_grade": grade,
                                 "judge_score": score, "judge_raw": str(record["judge"].get("raw") or "")[:500]})
    return list(results.values()), rows, unjudged


# ---------------------------------------------------------------------------------------------
# Output

COLUMNS = ["method", "n", "TP", "FP", "FN", "TN", "precision", "recall", "kappa", "kappa_grades", "disagreements"]


def _row(stats: MethodAgreement) -> list:
    return [stats.method, stats.n, stats.tp, stats.fp, stats.fn, stats.tn, stats.precision, stats.recall,
            stats.kappa, stats.kappa_grades, stats.disagreements]


def _shown(value) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def format_table(stats: Sequence[MethodAgreement], markdown: bool = False) -> str:
    """Return the agreement table as aligned text, or as a markdown table."""
    rows = [[_shown(v) for v in _row(s)] for s in stats]
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(COLUMNS, widths, strict=True)))]
    lines += ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True)))
              for r in rows]
    return "\n".join(lines) + "\n"


def _csv_text(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    buffer = StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


DISAGREEMENT_COLUMNS = ["method", "file", "line", "id", "sample", "model", "step", "answer", "references", "orpha_id",
                        "rule_grade", "judge_score", "judge_raw"]


def write_outputs(output_dir: Path, stats: Sequence[MethodAgreement], rows: Sequence[dict], note: str) -> None:
    """Write agreement.md, agreement.csv and disagreements.csv into `output_dir`, atomically."""
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output_dir / "agreement.md", "# Rule reward vs judge\n\n" + note + "\n\n"
                      + format_table(stats, markdown=True))
    write_text_atomic(output_dir / "agreement.csv", _csv_text(COLUMNS, ([_shown(v) for v in _row(s)] for s in stats)))
    with atomic_path(output_dir / "disagreements.csv") as tmp:
        tmp.write_text(_csv_text(DISAGREEMENT_COLUMNS, ([r[c] for c in DISAGREEMENT_COLUMNS] for r in rows)),
                       encoding="utf-8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, AgreementConfig)


def run(args: argparse.Namespace) -> int:
    config = dataclass_from_args(AgreementConfig, args)
    files = find_judged_files(config.results)
    configs = method_configs(config.orphanet, config.partial_credit, config.partial_max_diseases)
    stats, rows, unjudged = measure(files, configs)
    note = (f"{len(files)} judged file(s), {stats[0].n if stats else 0} graded lines"
            f"{f', {unjudged} without a judge score (skipped)' if unjudged else ''}. "
            "Positive = score 2 (rule: names the diagnosis). kappa: Cohen's kappa of score 2 vs not; "
            "kappa_grades: on the grades the method gives (2/0, or 2/1/0 with partial credit).")
    print(note)
    print(format_table(stats), end="")
    if config.output_dir:
        write_outputs(Path(config.output_dir), stats, rows, note)
        print(f"wrote {config.output_dir}/agreement.md, agreement.csv, disagreements.csv ({len(rows)} rows)")
    return 0
