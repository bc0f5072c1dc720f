"""`diagnosis-zero metrics`: accuracy and behaviour statistics of evaluated or judged files.

One file gives one column of figures. Several files (the steps of a run, or runs of several sizes)
give the original study's layout: one row per model, one column per step, and the gain from the
first step to the last. `--results` takes files and folders; a folder stands for its
step-N.jsonl files, each step read from its judged file (step-N.judged.jsonl) when there is one.

Rates are fractions in [0, 1] in `summarize` and the JSON output, percentages in the tables. A
value that cannot be computed (no judged line, no list prediction) is None / "-", never 0. A
field of the wrong type (`"acc": "yes"`, a score that is not a number) is an error naming the
file, line and field, never a silent guess.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from diagnosis_zero import cli
from diagnosis_zero.errors import ConfigError, InputFileError
from diagnosis_zero.io import find_results, read_jsonl, results_file

log = logging.getLogger(__name__)

# name -> (label, kind); kind decides the formatting: rate (%), count, tokens, reward
METRICS: dict[str, tuple[str, str]] = {
    "n": ("lines", "count"),
    "top1_rule": ("top-1, rule", "rate"),
    "top5_rule": ("top-5, rule", "rate"),
    "top1_judge": ("top-1, judge (score 2)", "rate"),
    "top1_judge_incl1": ("top-1, judge (score 2 or 1)", "rate"),
    "top5_judge": ("top-5, judge (score 2)", "rate"),
    "top5_judge_incl1": ("top-5, judge (score 2 or 1)", "rate"),
    "score_mean": ("rule reward, mean", "reward"),
    "format_rate": ("format adherence", "rate"),
    "think_rate": ("think present", "rate"),
    "think_dropped_rate": ("think dropped (answer, no think)", "rate"),
    "mixed_language_rate": ("mixed language", "rate"),
    "acc_mixed": ("top-1 rule, mixed-language lines", "rate"),
    "acc_not_mixed": ("top-1 rule, other lines", "rate"),
    "judge_acc_mixed": ("top-1 judge, mixed-language lines", "rate"),
    "judge_acc_not_mixed": ("top-1 judge, other lines", "rate"),
    "tokens_mean": ("completion tokens, mean", "tokens"),
    "tokens_median": ("completion tokens, median", "tokens"),
    "n_judged": ("judged lines", "count"),
    "judge_errors": ("judge errors", "count"),
}


@dataclass
class MetricsConfig:
    results: list[str] = field(default_factory=list, metadata={
        "required": True, "metavar": "PATH", "aliases": ["--input"],
        "help": "evaluated or judged JSON Lines files, or folders of step-N.jsonl / step-N.judged.jsonl"})
    format: Literal["table", "json", "markdown"] = field(default="table", metadata={"help": "output format"})
    metric: list[str] | None = field(default=None, metadata={
        "repeatable": True, "choices": list(METRICS), "metavar": "NAME",
        "help": "metric of the model x step table (repeatable); default: top1_judge if any line is judged, "
                f"else top1_rule; one of: {', '.join(METRICS)}"})
    layout: Literal["steps", "rarearena"] = field(default="steps", metadata={
        "help": "steps: the tables above; rarearena: RareArena's table (share of cases at score 0/1/2 and Total, "
                "top-1 and top-5, judged and error counts) per file and judge protocol"})


# ---------------------------------------------------------------------------------------- reading

def _number(value, *, integer: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and (not integer or float(value).is_integer())


def _invalid_field(record: dict) -> tuple[str, str] | None:
    """Return (field, reason) for the first field of a results line with a wrong type, else None."""
    for name in ("acc", "format", "think_present", "mixed_language"):  # reward gives bools or 0/1
        value = record.get(name)
        if value is not None and not isinstance(value, bool) and value not in (0, 1):
            return name, f"expected true/false or 0/1, got {value!r}"
    for name, integer in (("score", False), ("num_tokens", False), ("rank", True), ("step", True)):
        value = record.get(name)
        if value is not None and not _number(value, integer=integer):
            return name, f"expected {'an integer' if integer else 'a number'}, got {value!r}"
    judge = record.get("judge")
    if judge is None:
        return None
    if not isinstance(judge, dict):
        return "judge", f"expected an object, got {judge!r}"
    if judge.get("score") not in (None, 0, 1, 2) or isinstance(judge.get("score"), bool):
        return "judge.score", f"expected 2, 1, 0 or null, got {judge.get('score')!r}"
    scores = judge.get("scores")
    if scores is not None and (not isinstance(scores, list)
                               or any(s not in (None, 0, 1, 2) or isinstance(s, bool) for s in scores)):
        return "judge.scores", f"expected a list of 2, 1, 0 or null, got {scores!r}"
    return None


def results_paths(paths) -> list[Path]:
    """Return the files `--results` stands for: files as given, each folder's steps (judged preferred).

    A missing path, or a folder without step-N files, raises `InputFileError`.
    """
    files = []
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        found = find_results(path)
        if not found:
            raise InputFileError(path, None, None, "no results files (step-N.jsonl or step-N.judged.jsonl)")
        if Path(path).is_dir():
            by_step = {f.step: f for f in found}  # sorted evaluated before judged: the judged one wins
            found = list(by_step.values())
        files += [f.path for f in found]
    return files


def load_results(paths) -> list[dict]:
    """Return the lines of evaluated/judged files, each with `model` and `step` filled in.

    A line without a `model` takes its run folder's name; one without a `step` takes N from a
    `step-N...` file name (None otherwise). Each line also gets `_file`, the path it came from.
    A torn last line (a file still being written) is skipped; any other bad line raises
    `InputFileError` with the file, line and field.
    """
    records = []
    for path in map(Path, [paths] if isinstance(paths, (str, Path)) else paths):
        if not path.is_file():
            raise InputFileError(path, None, None, "results path not found")
        step = results_file(path).step
        for line_no, record in read_jsonl(path).rows:
            invalid = _invalid_field(record)
            if invalid:
                raise InputFileError(path, line_no, *invalid)
            if record.get("model") in (None, ""):
                record["model"] = path.resolve().parent.name
            if record.get("step") is None and step is not None:
                record["step"] = step
            record["_file"] = str(path)
            records.append(record)
    return records


# ---------------------------------------------------------------------------------------- figures

def _mean(values) -> float | None:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else None


def _rule_rank(record: dict) -> int | None:
    """1-based rank of the first rule-matched item of a list prediction (None: no match)."""
    if record.get("rank") is not None:  # reward.compute_score: 0 = no item matched
        return int(record["rank"]) or None
    return 1 if record.get("acc") else None


def _judged(record: dict) -> dict | None:
    judge = record.get("judge")
    if isinstance(judge, dict) and not judge.get("error") and judge.get("score") is not None:
        return judge
    return None


def think_dropped(record: dict) -> bool:
    """True when a completion has an answer but no think block: the reasoning was dropped.

    The one definition of "think dropped" (metrics, report, browse and docs use it); a completion
    with neither block is a format failure, not dropped reasoning.
    """
    prediction = record.get("prediction")
    answered = bool(prediction.strip() if isinstance(prediction, str) else prediction)
    return answered and not record.get("think_present")


def summarize(records: list[dict]) -> dict:
    """Return the accuracy and behaviour figures of a set of result lines (see METRICS)."""
    lists = [r for r in records if isinstance(r.get("prediction"), list)]
    judged = [(r, j) for r in records if (j := _judged(r)) is not None]
    judged_lists = [(r, j) for r, j in judged if isinstance(r.get("prediction"), list)]
    mixed = [r for r in records if r.get("mixed_language")]
    not_mixed = [r for r in records if not r.get("mixed_language")]
    tokens = [r["num_tokens"] for r in records if isinstance(r.get("num_tokens"), (int, float))]

    def judge_top1(pairs) -> float | None:
        return _mean(j["score"] == 2 for _, j in pairs)

    def judge_best(pairs, floor: int) -> float | None:
        return _mean(max((s for s in (j.get("scores") or [j["score"]]) if s is not None), default=0) >= floor
                     for _, j in pairs)

    return {
        "n": len(records),
        "top1_rule": _mean(_rule_rank(r) == 1 for r in records),
        "top5_rule": _mean(_rule_rank(r) is not None and _rule_rank(r) <= 5 for r in lists) if lists else None,
        "top1_judge": judge_top1(judged),
        "top1_judge_incl1": _mean(j["score"] >= 1 for _, j in judged),
        "top5_judge": judge_best(judged_lists, 2) if judged_lists else None,
        "top5_judge_incl1": judge_best(judged_lists, 1) if judged_lists else None,
        "score_mean": _mean(r["score"] for r in records if isinstance(r.get("score"), (int, float))),
        "format_rate": _mean(bool(r.get("format")) for r in records),
        "think_rate": _mean(bool(r.get("think_present")) for r in records),
        "think_dropped_rate": _mean(think_dropped(r) for r in records),
        "mixed_language_rate": _mean(bool(r.get("mixed_language")) for r in records),
        "acc_mixed": _mean(_rule_rank(r) == 1 for r in mixed),
        "acc_not_mixed": _mean(_rule_rank(r) == 1 for r in not_mixed),
        "judge_acc_mixed": judge_top1([(r, j) for r, j in judged if r.get("mixed_language")]),
        "judge_acc_not_mixed": judge_top1([(r, j) for r, j in judged if not r.get("mixed_language")]),
        "tokens_mean": _mean(tokens),
        "tokens_median": float(statistics.median(tokens)) if tokens else None,
        "n_judged": len(judged),
        "judge_errors": sum(1 for r in records if isinstance(r.get("judge"), dict) and r["judge"].get("error")),
    }


def summarize_files(paths) -> list[dict]:
    """Return one summary per results file (folders: per step), each with its `model`, `step` and `file`."""
    summaries = []
    for path in results_paths(paths):
        records = load_results([path])
        models = sorted({str(r["model"]) for r in records})
        steps = sorted({r["step"] for r in records if r.get("step") is not None})
        if len(models) > 1 or len(steps) > 1:
            log.warning("%s mixes models %s / steps %s; labelled by its first line", path, models, steps)
        first = records[0] if records else {"model": Path(path).resolve().parent.name, "step": None}
        summaries.append({"model": str(first["model"]), "step": first.get("step"), "file": str(path),
                          **summarize(records)})
    return summaries


# ---------------------------------------------------------------------------------------------
# Rendering


def format_value(name: str, value) -> str:
    if value is None:
        return "-"
    kind = METRICS.get(name, ("", "reward"))[1]
    if kind == "rate":
        return f"{100 * value:.1f}%"
    if kind == "count":
        return str(int(value))
    if kind == "tokens":
        return f"{value:.1f}"
    return f"{value:.3f}"


def _natural(text: str) -> list[tuple]:
    """Sort key that puts 1.5b before 3b before 7b before 32b."""
    return [(0, float(part), "") if part[0].isdigit() else (1, 0.0, part.lower())
            for part in re.split(r"(\d+(?:\.\d+)?)", text) if part]


def _render(header: list[str], rows: list[list[str]], fmt: str) -> str:
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in [header, ["-" * w for w in widths], *rows]]
    return "\n".join(line.rstrip() for line in lines)


def step_table(summaries: list[dict], metric: str) -> tuple[list[str], list[list[str]]]:
    """Return the original's layout for one metric: model rows x step columns, plus the gain."""
    chosen: dict[tuple[str, int | None], dict] = {}
    for summary in summaries:
        key = (summary["model"], summary["step"])
        if key in chosen:
            keep = max(chosen[key], summary, key=lambda s: s["n_judged"])
            log.warning("several files for model %s step %s; using %s", key[0], key[1], keep["file"])
            summary = keep
        chosen[key] = summary
    steps = sorted({step for _, step in chosen}, key=lambda s: -1 if s is None else s)
    models = sorted({model for model, _ in chosen}, key=_natural)
    header = ["model", *("base" if s is None else f"step {s}" for s in steps), "gain"]
    rows = []
    for model in models:
        values = [chosen[(model, s)][metric] if (model, s) in chosen else None for s in steps]
        present = [v for v in values if v is not None]
        gain = "-"
        if len(present) >= 2:
            delta = present[-1] - present[0]
            gain = f"{100 * delta:+.1f}" if METRICS[metric][1] == "rate" else f"{delta:+.3g}"
        rows.append([model, *(format_value(metric, v) for v in values), gain])
    return header, rows


def render(summaries: list[dict], fmt: str = "table", metrics: list[str] | None = None) -> str:
    """Render summaries as a plain-text table, Markdown or JSON."""
    if fmt == "json":
        return json.dumps(summaries if len(summaries) > 1 else summaries[0], indent=2)
    names = list(METRICS)
    if len(summaries) == 1:
        summary = summaries[0]
        title = f"{summary['model']}" + (f" step {summary['step']}" if summary["step"] is not None else "")
        rows = [[METRICS[n][0], format_value(n, summary[n])] for n in names]
        return _render(["metric", title], rows, fmt)
    if not metrics:
        metrics = ["top1_judge" if any(s["n_judged"] for s in summaries) else "top1_rule"]
    parts = []
    for metric in metrics:
        header, rows = step_table(summaries, metric)
        parts.append(f"{METRICS[metric][0]}\n\n" + _render(header, rows, fmt))
    columns = [f"{s['model']} " + ("base" if s["step"] is None else f"step {s['step']}") for s in summaries]
    detail_rows = [[METRICS[n][0], *(format_value(n, s[n]) for s in summaries)]
                   for n in names if any(s[n] is not None for s in summaries)]
    parts.append("all figures\n\n" + _render(["metric", *columns], detail_rows, fmt))
    return "\n\n".join(parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_dataclass_arguments(parser, MetricsConfig)


def run(args) -> int:
    config = cli.dataclass_from_args(MetricsConfig, args)
    if not config.results:
        raise ConfigError("results", "give at least one file or folder")
    from diagnosis_zero import rarearena

    files = results_paths(config.results)
    if config.layout == "rarearena":
        print(rarearena.render_rarearena_layout(files, config.format))
        return 0
    print(render(summarize_files(files), config.format, config.metric))
    if config.format != "json" and (note := rarearena.protocol_note(load_results(files))):
        print("\n" + note)  # per-item judge figures must not be read as RareArena's
    return 0
