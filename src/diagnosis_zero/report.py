"""`diagnosis-zero report`: plots, tables, a health panel and one self-contained HTML page for runs.

Reads each run's `metrics.jsonl` (docs/formats.md) and, with `--results`, the evaluated or judged
per-case files (files, or folders of step-N files). Tables take their numbers from the per-case
files when given, else from the validation series in `metrics.jsonl`. Incomplete data never fails
the report: corrupt lines are skipped and listed with their line numbers, and missing or
in-progress pieces are listed as such. A `--results` path that does not exist is an error (exit 2),
as in `metrics` and `browse`.

A run is finished when its last checkpoint's `trainer_state.json` reached its `max_steps` (`train`
ends every run with a `checkpoint-N` and saves no model at the top level), or when an HF Trainer
end-of-run file is at its top level (other trainers' runs).

Output (`--output-dir DIR`): `report.html` (plots as base64 PNG, tables, health; no external URLs),
`report.md`, `plots/*.png` and `plots/*.svg`, `tables/*.md` and `tables/*.csv`, and
`plot_data.json` (exactly the series drawn, raw and smoothed, for scripts and tests). Figures are
drawn in report_figures.py, tables built in report_tables.py.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from diagnosis_zero import cli
from diagnosis_zero.errors import ConfigError, DiagnosisZeroError
from diagnosis_zero.io import find_results, read_jsonl, write_text_atomic
from diagnosis_zero.report_figures import ALL_FIGURES, FIGURES, plot_figures, save_figure, series, smooth
from diagnosis_zero.report_tables import (
    ResultStep,
    Table,
    pick_steps,
    table_csv,
    table_html,
    table_markdown,
    tables_from_metrics,
    tables_from_results,
)

__all__ = ["FIGURES", "Problems", "ReportConfig", "ResultStep", "Run", "Table", "build_report", "load_run",
           "model_size", "pick_steps", "plot_figures", "series", "smooth", "tables_from_metrics",
           "tables_from_results"]

logger = logging.getLogger(__name__)

# Files whose presence at a run's top level means training finished (HF Trainer's end-of-run
# outputs; `train` itself ends with a checkpoint-N, read by `_finished_checkpoint`).
FINISHED_MARKERS = ("train_results.json", "all_results.json", "model.safetensors",
                    "model.safetensors.index.json", "adapter_model.safetensors")

_SIZE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)([bm])(?![a-z0-9])", re.IGNORECASE)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class Run:
    path: Path
    label: str
    rows: list[dict] = field(default_factory=list)
    finished: bool = False
    size: float = math.inf  # parameters, for ordering; inf when unknown

    @property
    def last_step(self) -> int | None:
        return self.rows[-1]["step"] if self.rows else None


@dataclass
class Problems:
    """What is missing, in progress or corrupt; every item is shown in the report."""
    corrupt: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    in_progress: list[str] = field(default_factory=list)


@dataclass
class ReportConfig:
    runs: list[str] | None = field(default=None, metadata={
        "metavar": "OUTPUT_DIR", "help": "training output dirs, each with a metrics.jsonl"})
    results: list[str] | None = field(default=None, metadata={
        "metavar": "PATH", "help": "results folders (step-N.jsonl, step-N.judged.jsonl) or files; tables use "
                                   "these when given, else the validation series in metrics.jsonl"})
    output_dir: str = field(default="report", metadata={"aliases": ["--output"], "help": "output folder"})
    label: list[str] | None = field(default=None, metadata={
        "repeatable": True, "metavar": "PATH=LABEL",
        "help": "label for a run or results dir; unlabelled ones are named by model size (e.g. 1.5B), else by folder"})
    steps: str | None = field(default=None, metadata={
        "help": "comma-separated steps for the tables' columns; none given: up to 5 evenly spaced"})
    smoothing: float = field(default=0.02, metadata={
        "help": "centred moving-average window as a fraction of each series' length (0 = none)"})
    health: list[str] | None = field(default=None, metadata={
        "repeatable": True, "metavar": "NAME=VALUE",
        "help": "override a health threshold (see docs/report.md), e.g. --health kl_max=0.5"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_dataclass_arguments(parser, ReportConfig)


def run(args) -> int:
    from diagnosis_zero.health import parse_threshold_overrides

    config = cli.dataclass_from_args(ReportConfig, args)
    runs, results = config.runs or [], config.results or []
    if not runs and not results:
        raise ConfigError("runs", "give at least one --runs OUTPUT_DIR or --results PATH")
    steps = None
    if config.steps:
        try:
            steps = [int(s) for s in config.steps.split(",") if s.strip()]
        except ValueError:
            raise ConfigError("steps", f"expected comma-separated integers, got {config.steps!r}") from None
    if not 0 <= config.smoothing < 1:
        raise ConfigError("smoothing", "must be in [0, 1)")
    labels = {}
    for item in config.label or []:
        path, sep, label = item.rpartition("=")
        if not sep or not path or not label:
            raise ConfigError("label", f"expected PATH=LABEL, got {item!r}")
        labels[str(Path(path).resolve())] = label
    thresholds = parse_threshold_overrides(config.health)
    for path in results:
        find_results(path)  # a missing path fails here, before anything is written
    started = time.perf_counter()
    out = build_report(runs, results, config.output_dir, labels=labels, steps=steps,
                       smoothing=config.smoothing, thresholds=thresholds)
    print(f"report: {out / 'report.html'} ({time.perf_counter() - started:.1f} s)")
    return 0


# ---------------------------------------------------------------------------------------- loading

def model_size(name: str) -> tuple[str, float] | None:
    """Return ("1.5B", 1.5e9) for a model or dir name like "Qwen2.5-1.5B-Instruct", else None."""
    for match in _SIZE.finditer(name):
        number, unit = match.group(1), match.group(2).upper()
        return f"{number}{unit}", float(number) * (1e9 if unit == "B" else 1e6)
    return None


def _saved_model_name(path: Path) -> str:
    """The base model's name from a finished run's saved config (full model or LoRA adapter), or ""."""
    for name, key in (("adapter_config.json", "base_model_name_or_path"), ("config.json", "_name_or_path")):
        try:
            return str(json.loads((path / name).read_text(encoding="utf-8")).get(key) or "")
        except (OSError, ValueError, AttributeError):
            continue
    return ""


def load_run(path: str | Path, problems: Problems, label: str | None = None) -> Run | None:
    """Read one training output dir; corrupt lines are recorded in `problems` and skipped."""
    path = Path(path)
    metrics_path = path / "metrics.jsonl"
    size = model_size(path.name) or model_size(path.parent.name) or model_size(_saved_model_name(path))
    run_ = Run(path=path, label=label or (size[0] if size else path.name), size=size[1] if size else math.inf)
    if not metrics_path.is_file():
        problems.missing.append(f"{metrics_path}: no metrics.jsonl (run not started, or not a run dir)")
        return None
    lines = read_jsonl(metrics_path, skip_bad=True)
    by_step: dict[int, dict] = {}
    for line_no, row in lines.rows:
        step = row.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            problems.corrupt.append(f"{metrics_path}:{line_no}: field 'step': missing or not an integer (line skipped)")
            continue
        by_step[step] = row  # a resumed run's rewrite of a step wins
    problems.corrupt += [f"{e} (line skipped)" for e in lines.bad_lines]
    if lines.torn_tail is not None:
        problems.in_progress.append(f"{lines.torn_tail} (partial last line skipped; still being written?)")
    run_.rows = [by_step[s] for s in sorted(by_step)]
    run_.finished = _finished(path)
    if not run_.finished:
        age = time.time() - metrics_path.stat().st_mtime
        logged = "no steps logged yet" if run_.last_step is None else f"last logged step {run_.last_step}"
        problems.in_progress.append(
            f"{path}: in progress or stopped ({logged}, metrics.jsonl updated {age / 60:.0f} min ago; "
            "no checkpoint at max_steps)")
    return run_


def _finished(path: Path) -> bool:
    """True when a run reached its end: see the module docstring."""
    if any((path / marker).exists() for marker in FINISHED_MARKERS):
        return True
    checkpoints = [(int(m.group(1)), child) for child in path.glob("checkpoint-*")
                   if (m := _CHECKPOINT.match(child.name)) and child.is_dir()]
    if not checkpoints:
        return False
    try:
        state = json.loads((max(checkpoints)[1] / "trainer_state.json").read_text(encoding="utf-8"))
        step, max_steps = state["global_step"], state["max_steps"]
    except (OSError, ValueError, KeyError, TypeError):
        return False  # a checkpoint still being written, or not a Trainer checkpoint
    return isinstance(step, int) and isinstance(max_steps, int) and 0 < max_steps <= step


def _unique_labels(items) -> None:
    """Tell apart runs that share a label (same model size): add the dir name, or its parent too."""
    for suffix in (lambda p: p.name, lambda p: f"{p.parent.name}/{p.name}"):
        counts: dict[str, int] = {}
        for item in items:
            counts[item.label] = counts.get(item.label, 0) + 1
        for item in items:
            if counts[item.label] > 1:
                item.label = f"{item.label.split(' (')[0]} ({suffix(item.path)})"


def _result_files(path: Path, problems: Problems) -> dict[int, dict[bool, Path]]:
    """Map step -> {judged?: file} for a results dir or a single results file (step -1: from its lines)."""
    found: dict[int, dict[bool, Path]] = {}
    for file in find_results(path):
        found.setdefault(-1 if file.step is None else file.step, {})[file.judged] = file.path
    if not found:
        problems.missing.append(f"{path}: no step-N.jsonl results files")
    return found


def _read_results(file: Path, problems: Problems) -> list[dict] | None:
    """Read one results file via metrics.load_results; a corrupt file is listed and skipped."""
    from diagnosis_zero.metrics import load_results

    try:
        torn_tail = read_jsonl(file).torn_tail
        records = load_results([file])
    except DiagnosisZeroError as exc:
        problems.corrupt.append(f"{exc} (file skipped)")
        return None
    if torn_tail is not None:  # a file still being written
        problems.in_progress.append(f"{torn_tail} (partial last line skipped; still being written?)")
    return records


def load_result_steps(paths, problems: Problems, labels: dict[str, str]) -> dict[str, dict[int, ResultStep]]:
    """Summarise each results dir's steps (judged file preferred): {label: {step: ResultStep}}."""
    from diagnosis_zero.metrics import summarize

    groups = []
    for raw_path in paths:
        path = Path(raw_path)
        steps = {}
        label = labels.get(str(path.resolve()))
        size = None
        for step, files in sorted(_result_files(path, problems).items()):
            evaluated = _read_results(files[False], problems) if False in files else None
            judged = _read_results(files[True], problems) if True in files else None
            if judged is not None and evaluated is not None and len(judged) < len(evaluated):
                problems.in_progress.append(
                    f"{files[True]}: judge incomplete ({len(judged)} of {len(evaluated)} records); "
                    "using rule scores for this step")
                judged = None
            elif True not in files and evaluated is not None:
                problems.missing.append(
                    f"{files[False].with_name(files[False].name[:-6] + '.judged.jsonl')}: no judge file; "
                    "top-1 for this step is the rule score")
            records = judged if judged is not None else evaluated
            if not records:
                continue
            if step < 0:
                step = int(records[0].get("step") or 0)
            size = size or model_size(str(records[0].get("model") or ""))
            summary = summarize(records)
            if summary.get("judge_errors"):
                problems.missing.append(f"{files[True]}: {summary['judge_errors']} judge errors "
                                        "(left out of the judge's figures)")
            steps[step] = ResultStep(label="", step=step, path=files[judged is not None],
                                     judged=judged is not None, summary=summary, num_cases=len(records))
        if steps:
            name = path.name if path.is_dir() else path.parent.name
            label = label or (size[0] if size else name)
            groups.append(Run(path=path, label=label, size=size[1] if size else math.inf, rows=[steps]))
        counts = {s.num_cases for s in steps.values()}
        if len(counts) > 1:
            problems.in_progress.append(
                f"{path}: steps have different case counts ({', '.join(f'step {s.step}: {s.num_cases}' for s in steps.values())}); "
                "an evaluation may still be running")
    groups.sort(key=lambda g: (g.size, g.label))
    _unique_labels(groups)
    out = {}
    for group in groups:
        for step in group.rows[0].values():
            step.label = group.label
        out[group.label] = group.rows[0]
    return out


# ----------------------------------------------------------------------------------------- output

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem} h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0} th,td{border:1px solid #ccc;padding:.25rem .6rem}
th{background:#f3f3f3} td.pct,td.pp,td.int{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#555;font-size:.9em} .empty{color:#888;font-style:italic}
img{max-width:100%;border:1px solid #eee;margin:.5rem 0}
.flag{background:#fff4e5;border-left:4px solid #e67e22;padding:.4rem .8rem;margin:.3rem 0}
.ok{background:#eafaf1;border-left:4px solid #27ae60;padding:.4rem .8rem}
.problem{font-family:ui-monospace,monospace;font-size:.85em}
"""


def _problem_banner(problems: Problems) -> str:
    counts = [(len(problems.missing), "missing"), (len(problems.in_progress), "in progress"),
              (len(problems.corrupt), "corrupt")]
    if not any(n for n, _ in counts):
        return ""
    text = ", ".join(f"{n} {kind}" for n, kind in counts if n)
    return f"<p class='flag'>Incomplete data: {text}. <a href='#missing'>See the list</a>.</p>"


def render_html(runs: list[Run], results_used: bool, tables: list[Table], pngs: dict[str, bytes],
                flags: dict[str, list], problems: Problems) -> str:
    esc = html.escape
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width,initial-scale=1'>",
             f"<title>Diagnosis-Zero report</title><style>{_CSS}</style></head><body>",
             "<h1>Diagnosis-Zero report</h1>",
             f"<p class='note'>Generated {esc(time.strftime('%Y-%m-%d %H:%M'))}. Tables from "
             f"{'per-case results files' if results_used else 'metrics.jsonl validation series'}.</p>",
             _problem_banner(problems),
             "<h2>Runs</h2><table><thead><tr><th>model</th><th>run dir</th><th>logged steps</th>"
             "<th>last step</th><th>status</th></tr></thead><tbody>"]
    for r in runs:
        status = "finished" if r.finished else "in progress or stopped"
        parts.append(f"<tr><td>{esc(r.label)}</td><td>{esc(str(r.path))}</td><td class='int'>{len(r.rows)}</td>"
                     f"<td class='int'>{esc(str(r.last_step))}</td><td>{status}</td></tr>")
    if not runs:
        parts.append("<tr><td colspan='5' class='empty'>no runs</td></tr>")
    parts.append("</tbody></table>")
    parts.append("<h2>Training health</h2>")
    for label, run_flags in flags.items():
        if not run_flags:
            parts.append(f"<div class='ok'><b>{esc(label)}</b>: no health flags</div>")
        for f in run_flags:
            parts.append(f"<div class='flag'><b>{esc(label)}</b> — <b>{esc(f.name)}</b> {esc(f.steps)} "
                         f"(<code>{esc(f.series)}</code>): {esc(f.message)}</div>")
    if not flags:
        parts.append("<p class='empty'>no runs to check</p>")
    if pngs:
        parts.append("<h2>Plots</h2>")
        for name, png in pngs.items():
            data = base64.b64encode(png).decode("ascii")
            parts.append(f"<img alt='{esc(ALL_FIGURES[name][0])}' src='data:image/png;base64,{data}'>")
    parts.append("<h2>Tables</h2>")
    parts += [table_html(t) for t in tables]
    parts.append("<h2 id='missing'>Missing, in progress and corrupt</h2>")
    items = ([("missing", p) for p in problems.missing] + [("in progress", p) for p in problems.in_progress]
             + [("corrupt", p) for p in problems.corrupt])
    if items:
        parts.append("<ul>" + "".join(f"<li><b>{kind}</b>: <span class='problem'>{esc(text)}</span></li>"
                                      for kind, text in items) + "</ul>")
    else:
        parts.append("<p class='ok'>nothing missing</p>")
    parts.append("</body></html>\n")
    return "".join(parts)


def render_markdown(runs: list[Run], tables: list[Table], flags: dict[str, list], problems: Problems,
                    plot_names: list[str]) -> str:
    lines = ["# Diagnosis-Zero report", "", "## Runs", "", "| model | run dir | logged steps | last step | status |",
             "| --- | --- | ---: | ---: | --- |"]
    lines += [f"| {r.label} | {r.path} | {len(r.rows)} | {r.last_step} | "
              f"{'finished' if r.finished else 'in progress or stopped'} |" for r in runs]
    lines += ["", "## Training health", ""]
    for label, run_flags in flags.items():
        # "<think>" in a message would be read as an HTML tag by Markdown renderers
        lines += ([f"- **{label}**: {str(f).replace('<', '&lt;')}" for f in run_flags]
                  or [f"- **{label}**: no health flags"])
    lines += ["", "## Plots", ""] + [f"![{ALL_FIGURES[n][0]}](plots/{n}.png)" for n in plot_names]
    lines += ["", "## Tables", ""] + [table_markdown(t) for t in tables]
    lines += ["## Missing, in progress and corrupt", ""]
    lines += ([f"- missing: {p}" for p in problems.missing] + [f"- in progress: {p}" for p in problems.in_progress]
              + [f"- corrupt: {p}" for p in problems.corrupt]) or ["- nothing missing"]
    return "\n".join(lines) + "\n"


def build_report(run_dirs, results_paths, output, *, labels: dict[str, str] | None = None,
                 steps: list[int] | None = None, smoothing: float = 0.02, thresholds=None) -> Path:
    """Write the whole report under `output`; return the output dir."""
    from diagnosis_zero.health import check_health

    labels = labels or {}
    output = Path(output)
    problems = Problems()
    runs = [r for d in run_dirs
            if (r := load_run(d, problems, labels.get(str(Path(d).resolve())))) is not None]
    runs.sort(key=lambda r: (r.size, r.label))
    _unique_labels(runs)
    results = load_result_steps(results_paths, problems, labels) if results_paths else {}
    tables = tables_from_results(results, steps) if results else tables_from_metrics(runs, steps)
    flags = {r.label: check_health(r.rows, thresholds) for r in runs}

    pngs = {}
    plot_data = {}
    if runs:
        figures, plot_data = plot_figures(runs, smoothing)
        for name, fig in figures.items():
            pngs[name] = save_figure(fig, output / "plots" / name)
    for table in tables:
        write_text_atomic(output / "tables" / f"{table.name}.md", table_markdown(table))
        write_text_atomic(output / "tables" / f"{table.name}.csv", table_csv(table))
    write_text_atomic(output / "plot_data.json", json.dumps(plot_data) + "\n")
    write_text_atomic(output / "report.md", render_markdown(runs, tables, flags, problems, list(pngs)))
    write_text_atomic(output / "report.html", render_html(runs, bool(results), tables, pngs, flags, problems))
    for item in problems.missing + problems.in_progress + problems.corrupt:
        logger.warning("%s", item)
    return output
