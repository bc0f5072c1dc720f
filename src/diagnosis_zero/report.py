"""`diagnosis-zero report`: plots, tables, a health panel and one self-contained HTML page for runs.

Reads each run's `metrics.jsonl` (docs/formats.md) and, with `--results`, the evaluated or judged
per-case files. Tables take their numbers from the per-case files when given, else from the
validation series in `metrics.jsonl`. Incomplete data never fails the report: corrupt lines are
skipped and listed with their line numbers, and missing or in-progress pieces are listed as such.

Output (`--output DIR`): `report.html` (plots as base64 PNG, tables, health; no external URLs),
`report.md`, `plots/*.png` and `plots/*.svg`, `tables/*.md` and `tables/*.csv`, and
`plot_data.json` (exactly the series drawn, raw and smoothed, for scripts and tests).
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from diagnosis_zero.errors import ConfigError, DiagnosisZeroError, InputFileError
from diagnosis_zero.io import atomic_path, iter_jsonl, write_text_atomic

logger = logging.getLogger(__name__)

# Files whose presence in an output dir means training finished (HF Trainer's end-of-run outputs).
FINISHED_MARKERS = ("train_results.json", "all_results.json", "model.safetensors",
                    "model.safetensors.index.json", "adapter_model.safetensors")

# figure -> list of (metrics.jsonl key, axes title, y label); one axes per key.
FIGURES: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "val_score": ("Validation score vs step", [
        ("val_score", "Validation score (greedy, test split)", "mean rule reward")]),
    "response_length": ("Mean response length vs step", [
        ("completion_length_mean", "Mean response length (training rollouts)", "tokens")]),
    "rates": ("Reward and output-format rates vs step", [
        ("reward_mean", "Reward", "mean total reward"),
        ("format_rate", "Format rate", "fraction of completions"),
        ("think_rate", "Think-present rate", "fraction of completions"),
        ("mixed_language_rate", "Mixed-language rate", "fraction of completions")]),
    "kl_entropy": ("KL and entropy vs step", [
        ("kl", "KL to the reference model", "nats per token"),
        ("entropy", "Entropy", "nats per token")]),
}

_SIZE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)([bm])(?![a-z0-9])", re.IGNORECASE)
_STEP_FILE = re.compile(r"^step-(\d+)(\.judged)?\.jsonl$")


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
class ResultStep:
    label: str
    step: int
    path: Path
    judged: bool
    summary: dict
    num_cases: int


@dataclass
class Table:
    name: str                 # file stem under tables/
    title: str
    columns: list[str]
    kinds: list[str]          # per column: "text", "int", "pct" (fraction shown as %), "pp" (gain)
    rows: list[list] = field(default_factory=list)
    note: str = ""


@dataclass
class Problems:
    """What is missing, in progress or corrupt; every item is shown in the report."""
    corrupt: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    in_progress: list[str] = field(default_factory=list)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", nargs="+", default=[], metavar="OUTPUT_DIR",
                        help="training output dirs, each with a metrics.jsonl")
    parser.add_argument("--results", nargs="+", default=[], metavar="PATH",
                        help="results dirs (step-N.jsonl, step-N.judged.jsonl) or files; tables use these "
                             "when given, else the validation series in metrics.jsonl")
    parser.add_argument("--output", default="report", help="output dir (default: report/)")
    parser.add_argument("--label", action="append", default=[], metavar="PATH=LABEL",
                        help="label for a run or results dir (default: its model size, e.g. 1.5B, else its name)")
    parser.add_argument("--steps", default=None,
                        help="comma-separated steps for the tables' columns (default: up to 5 evenly spaced)")
    parser.add_argument("--smoothing", type=float, default=0.02,
                        help="centred moving-average window as a fraction of each series' length (0 = none)")
    parser.add_argument("--health", action="append", default=[], metavar="NAME=VALUE",
                        help="override a health threshold (see docs/report.md), e.g. --health kl_max=0.5")


def run(args) -> int:
    from diagnosis_zero.health import parse_threshold_overrides

    if not args.runs and not args.results:
        raise ConfigError("runs", "give at least one --runs OUTPUT_DIR or --results PATH")
    steps = None
    if args.steps:
        try:
            steps = [int(s) for s in args.steps.split(",") if s.strip()]
        except ValueError:
            raise ConfigError("steps", f"expected comma-separated integers, got {args.steps!r}") from None
    if not 0 <= args.smoothing < 1:
        raise ConfigError("smoothing", "must be in [0, 1)")
    labels = {}
    for item in args.label:
        path, sep, label = item.rpartition("=")
        if not sep or not path or not label:
            raise ConfigError("label", f"expected PATH=LABEL, got {item!r}")
        labels[str(Path(path).resolve())] = label
    thresholds = parse_threshold_overrides(args.health)
    started = time.perf_counter()
    out = build_report(args.runs, args.results, args.output, labels=labels, steps=steps,
                       smoothing=args.smoothing, thresholds=thresholds)
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
    errors: list[InputFileError] = []
    by_step: dict[int, dict] = {}
    for line_no, row in iter_jsonl(metrics_path, skip_invalid=True, errors=errors):
        step = row.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            errors.append(InputFileError(metrics_path, line_no, "step", "missing or not an integer"))
            continue
        by_step[step] = row  # a resumed run's rewrite of a step wins
    problems.corrupt += [f"{e} (line skipped)" for e in errors]
    run_.rows = [by_step[s] for s in sorted(by_step)]
    run_.finished = any((path / marker).exists() for marker in FINISHED_MARKERS)
    if not run_.finished:
        age = time.time() - metrics_path.stat().st_mtime
        logged = "no steps logged yet" if run_.last_step is None else f"last logged step {run_.last_step}"
        problems.in_progress.append(
            f"{path}: in progress or stopped ({logged}, metrics.jsonl updated {age / 60:.0f} min ago; "
            "no final model saved)")
    return run_


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
    """Map step -> {judged?: file} for a results dir or a single results file."""
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    found: dict[int, dict[bool, Path]] = {}
    for file in files:
        match = _STEP_FILE.match(file.name)
        if match:
            found.setdefault(int(match.group(1)), {})[bool(match.group(2))] = file
        elif path.is_file():
            found.setdefault(-1, {})[file.name.endswith(".judged.jsonl")] = file
    if not files or not found:
        problems.missing.append(f"{path}: no step-N.jsonl results files")
    return found


def _read_results(file: Path, problems: Problems) -> list[dict] | None:
    """Read one results file via metrics.load_results; a corrupt file is listed and skipped."""
    from diagnosis_zero.metrics import load_results

    errors: list[InputFileError] = []
    for _ in iter_jsonl(file, skip_invalid=True, errors=errors):
        pass
    try:
        records = load_results([file])
    except DiagnosisZeroError as exc:
        problems.corrupt.append(f"{exc} (file skipped)")
        return None
    # load_results tolerates only a torn last line: the file is still being written.
    problems.in_progress += [f"{e} (partial last line skipped; still being written?)" for e in errors]
    return records


def load_result_steps(paths, problems: Problems, labels: dict[str, str]) -> dict[str, dict[int, ResultStep]]:
    """Summarise each results dir's steps (judged file preferred): {label: {step: ResultStep}}."""
    from diagnosis_zero.metrics import summarize

    groups = []
    for raw_path in paths:
        path = Path(raw_path)
        if not path.exists():
            problems.missing.append(f"{path}: results path not found")
            continue
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


# ----------------------------------------------------------------------------------------- series

def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Return (steps, values) of one metrics key, skipping rows where it is missing or not finite."""
    steps, values = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            steps.append(row["step"])
            values.append(float(value))
    return steps, values


def smooth(values: list[float], fraction: float) -> list[float]:
    """Centred moving average over `fraction` of the series' length (shrinking at the ends)."""
    import numpy as np

    half = int(len(values) * fraction) // 2
    if half < 1:
        return list(values)
    padded = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(len(values))
    lo = np.maximum(idx - half, 0)
    hi = np.minimum(idx + half + 1, len(values))
    return ((padded[hi] - padded[lo]) / (hi - lo)).tolist()


def plot_figures(runs: list[Run], smoothing: float = 0.02):
    """Draw every figure; return ({name: Figure}, plot data {name: {key: {label: series}}})."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    colors = matplotlib.colormaps["tab10"].colors
    figures, plot_data = {}, {}
    for name, (title, panels) in FIGURES.items():
        cols = 2 if len(panels) > 1 else 1
        nrows = math.ceil(len(panels) / cols)
        fig = Figure(figsize=(6.4 * cols, 3.9 * nrows + 0.5), layout="constrained")
        axes = fig.subplots(nrows, cols, squeeze=False).ravel()
        if len(panels) > 1:
            fig.suptitle(title, fontsize=14, fontweight="bold")
        plot_data[name] = {}
        for ax, (key, panel_title, ylabel) in zip(axes, panels, strict=False):
            drawn = plot_data[name][key] = {}
            for i, run_ in enumerate(runs):
                steps, values = series(run_.rows, key)
                if not steps:
                    continue
                color = colors[i % len(colors)]
                smoothed = smooth(values, smoothing)
                raw_line, = ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8, label="_nolegend_")
                raw_line.set_gid(f"raw:{run_.label}")
                line, = ax.plot(steps, smoothed, color=color, linewidth=1.8, label=run_.label)
                line.set_gid(f"smoothed:{run_.label}")
                if len(steps) <= 60:  # sparse series (validation): show where the points are
                    line.set_marker("o")
                    line.set_markersize(3.5)
                drawn[run_.label] = {"step": steps, "value": values, "smoothed": smoothed}
            ax.set_title(panel_title if len(panels) > 1 else f"{title}\n{panel_title}",
                         fontsize=None if len(panels) > 1 else 12)
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
            if drawn:
                ax.legend(title="model", fontsize="small")
            else:
                ax.text(0.5, 0.5, f"no '{key}' in metrics.jsonl", ha="center", va="center",
                        transform=ax.transAxes, color="gray")
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        figures[name] = fig
    return figures, plot_data


# ----------------------------------------------------------------------------------------- tables

def pick_steps(available: set[int], wanted: list[int] | None, most: int = 5) -> list[int]:
    """Return the table's step columns: `wanted`, or all available if few, else evenly spaced ones."""
    if wanted:
        return list(wanted)
    ordered = sorted(available)
    if len(ordered) <= most + 1:
        return ordered
    first, last = ordered[0], ordered[-1]
    targets = [first + (last - first) * k / (most - 1) for k in range(most)]
    return sorted({min(ordered, key=lambda s, t=t: (abs(s - t), s)) for t in targets})


def _gain(values: list) -> float | None:
    return values[-1] - values[0] if values and values[0] is not None and values[-1] is not None else None


def tables_from_results(results: dict[str, dict[int, ResultStep]], wanted: list[int] | None) -> list[Table]:
    """The four tables from summarised per-case files."""
    cols = pick_steps({s for steps in results.values() for s in steps}, wanted)
    step_cols = [f"step {s}" for s in cols]
    top1 = Table("top1_accuracy", "Top-1 accuracy by model and step", ["model", *step_cols, "gain", "source"],
                 ["text", *["pct"] * len(cols), "pp", "text"],
                 note="Judge top-1 (score 2: exact match or synonym) where a judged file exists, else the rule "
                      "match; gain = last step - first step, in percentage points.")
    mixed = Table("mixed_language_rate", "Mixed-language rate by model and step", ["model", *step_cols],
                  ["text", *["pct"] * len(cols)])
    inside = Table("accuracy_by_mixed_language", "Accuracy inside vs outside mixed-language cases",
                   ["model", "step", "cases", "mixed-language cases", "accuracy (mixed)", "accuracy (not mixed)",
                    "accuracy (all)"], ["text", "int", "int", "int", "pct", "pct", "pct"],
                   note="Top-1 by the judge (score 2) for judged steps, else by the rule. The original study saw "
                        "about 29% in mixed-language cases against 14% overall.")
    failures = Table("format_and_think", "Format-failure and dropped-think rates",
                     ["model", "step", "format failure", "dropped think"], ["text", "int", "pct", "pct"],
                     note="Format failure: no valid answer block. Dropped think: no think block.")
    for label, steps in results.items():
        top1_row, mixed_row, sources = [], [], set()
        for s in cols:
            result = steps.get(s)
            if result is None:
                top1_row.append(None)
                mixed_row.append(None)
                continue
            top1_row.append(_top1(result))
            sources.add("judge" if result.judged else "rule")
            mixed_row.append(result.summary.get("mixed_language_rate"))
        top1.rows.append([label, *top1_row, _gain(top1_row), "+".join(sorted(sources)) or "-"])
        mixed.rows.append([label, *mixed_row])
        for s in cols:
            result = steps.get(s)
            if result is None:
                continue
            summary = result.summary
            prefix = "judge_" if result.judged else ""
            num_mixed = round((summary.get("mixed_language_rate") or 0.0) * result.num_cases)
            inside.rows.append([label, s, result.num_cases, num_mixed, summary.get(f"{prefix}acc_mixed"),
                                summary.get(f"{prefix}acc_not_mixed"), _top1(result)])
            failures.rows.append([label, s, _complement(summary.get("format_rate")),
                                  _complement(summary.get("think_rate"))])
    return [top1, mixed, inside, failures]


def _top1(result: ResultStep) -> float | None:
    key = "top1_judge" if result.judged else "top1_rule"
    return result.summary.get(key)


def _complement(rate):
    return None if rate is None else 1.0 - rate


def tables_from_metrics(runs: list[Run], wanted: list[int] | None) -> list[Table]:
    """The tables from the validation series in metrics.jsonl (rule-scored; no per-case split)."""
    val = {r.label: {row["step"]: row for row in r.rows if "val_accuracy" in row or "val_score" in row}
           for r in runs}
    cols = pick_steps({s for steps in val.values() for s in steps}, wanted)
    step_cols = [f"step {s}" for s in cols]
    top1 = Table("top1_accuracy", "Top-1 accuracy by model and step", ["model", *step_cols, "gain", "source"],
                 ["text", *["pct"] * len(cols), "pp", "text"],
                 note="Rule match on greedy validation (metrics.jsonl val_accuracy); pass --results with judged "
                      "files for the judge's top-1. Gain = last step - first step, in percentage points.")
    mixed = Table("mixed_language_rate", "Mixed-language rate by model and step", ["model", *step_cols],
                  ["text", *["pct"] * len(cols)], note="metrics.jsonl val_mixed_language_rate.")
    inside = Table("accuracy_by_mixed_language", "Accuracy inside vs outside mixed-language cases",
                   ["model", "step", "cases", "mixed-language cases", "accuracy (mixed)", "accuracy (not mixed)",
                    "accuracy (all)"], ["text", "int", "int", "int", "pct", "pct", "pct"],
                   note="Needs per-case files: pass --results (metrics.jsonl has no per-case split).")
    failures = Table("format_and_think", "Format-failure and dropped-think rates",
                     ["model", "step", "format failure", "dropped think"], ["text", "int", "pct", "pct"],
                     note="metrics.jsonl 1 - val_format_rate and 1 - val_think_rate.")
    for label, steps in val.items():
        accs = [steps.get(s, {}).get("val_accuracy") for s in cols]
        top1.rows.append([label, *accs, _gain(accs), "metrics.jsonl (rule)"])
        mixed.rows.append([label, *[steps.get(s, {}).get("val_mixed_language_rate") for s in cols]])
        for s in cols:
            if s in steps:
                failures.rows.append([label, s, _complement(steps[s].get("val_format_rate")),
                                      _complement(steps[s].get("val_think_rate"))])
    return [top1, mixed, inside, failures]


def format_cell(value, kind: str) -> str:
    if value is None:
        return "–"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "pp":
        return f"{100 * value:+.1f}"
    return str(value)


def table_markdown(table: Table) -> str:
    lines = [f"### {table.title}", "", "| " + " | ".join(table.columns) + " |",
             "| " + " | ".join("---" if k == "text" else "---:" for k in table.kinds) + " |"]
    lines += ["| " + " | ".join(format_cell(v, k) for v, k in zip(row, table.kinds, strict=True)) + " |"
              for row in table.rows]
    if not table.rows:
        lines.append("| " + " | ".join(["(no data)", *[""] * (len(table.columns) - 1)]) + " |")
    if table.note:
        lines += ["", table.note]
    return "\n".join(lines) + "\n"


def table_csv(table: Table) -> str:
    """CSV with percentages as numbers (no % sign) and the unit in the header."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([f"{c} (%)" if k == "pct" else f"{c} (pp)" if k == "pp" else c
                     for c, k in zip(table.columns, table.kinds, strict=True)])
    for row in table.rows:
        writer.writerow(["" if v is None else round(100 * v, 4) if k in ("pct", "pp") else v
                         for v, k in zip(row, table.kinds, strict=True)])
    return buffer.getvalue()


def table_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f'<td class="{k}">{html.escape(format_cell(v, k))}</td>'
                         for v, k in zip(row, table.kinds, strict=True)) + "</tr>"
        for row in table.rows) or f'<tr><td colspan="{len(table.columns)}" class="empty">no data</td></tr>'
    note = f'<p class="note">{html.escape(table.note)}</p>' if table.note else ""
    return f"<h3>{html.escape(table.title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"


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


def _save_figure(fig, path: Path) -> bytes:
    """Save as PNG and SVG (atomically); return the PNG bytes for embedding."""
    buffer = io.BytesIO()
    # No Software metadata: keeps files reproducible and free of URLs.
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    png = buffer.getvalue()
    with atomic_path(path.with_suffix(".png")) as tmp:
        tmp.write_bytes(png)
    with atomic_path(path.with_suffix(".svg")) as tmp:
        fig.savefig(tmp, format="svg", metadata={"Creator": None, "Date": None})
    return png


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
            parts.append(f"<div class='flag'><b>{esc(label)}</b> — <b>{esc(f.name)}</b> from step {f.step} "
                         f"(<code>{esc(f.series)}</code>): {esc(f.message)}</div>")
    if not flags:
        parts.append("<p class='empty'>no runs to check</p>")
    if pngs:
        parts.append("<h2>Plots</h2>")
        for name, png in pngs.items():
            data = base64.b64encode(png).decode("ascii")
            parts.append(f"<img alt='{esc(FIGURES[name][0])}' src='data:image/png;base64,{data}'>")
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
    lines += ["", "## Plots", ""] + [f"![{FIGURES[n][0]}](plots/{n}.png)" for n in plot_names]
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
            pngs[name] = _save_figure(fig, output / "plots" / name)
    for table in tables:
        write_text_atomic(output / "tables" / f"{table.name}.md", table_markdown(table))
        write_text_atomic(output / "tables" / f"{table.name}.csv", table_csv(table))
    write_text_atomic(output / "plot_data.json", json.dumps(plot_data) + "\n")
    write_text_atomic(output / "report.md", render_markdown(runs, tables, flags, problems, list(pngs)))
    write_text_atomic(output / "report.html", render_html(runs, bool(results), tables, pngs, flags, problems))
    for item in problems.missing + problems.in_progress + problems.corrupt:
        logger.warning("%s", item)
    return output
