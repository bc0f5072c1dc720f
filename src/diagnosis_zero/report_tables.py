"""Tables of `diagnosis-zero report`: the original study's layouts, as Markdown, CSV and HTML.

From per-case results files (`--results`) when given, else from the validation series of
`metrics.jsonl`: top-1 accuracy by model and step with the gain, the mixed-language rate, accuracy
inside vs outside mixed-language cases, and the format-failure and think-dropped rates.
"""

from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diagnosis_zero.report import Run

# The one definition (metrics.think_dropped), as the tables' notes state it.
THINK_DROPPED = "Think dropped: an answer but no think block (the reasoning was dropped)."


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
    failures = Table("format_and_think", "Format-failure and think-dropped rates",
                     ["model", "step", "format failure", "think dropped"], ["text", "int", "pct", "pct"],
                     note=f"Format failure: no valid answer block. {THINK_DROPPED}")
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
                                  summary.get("think_dropped_rate")])
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
    failures = Table("format_and_think", "Format-failure and think-dropped rates",
                     ["model", "step", "format failure", "think dropped"], ["text", "int", "pct", "pct"],
                     note=f"metrics.jsonl 1 - val_format_rate and val_think_dropped_rate. {THINK_DROPPED} "
                          "Pass --results for it when the run's validation did not log it.")
    for label, steps in val.items():
        accs = [steps.get(s, {}).get("val_accuracy") for s in cols]
        top1.rows.append([label, *accs, _gain(accs), "metrics.jsonl (rule)"])
        mixed.rows.append([label, *[steps.get(s, {}).get("val_mixed_language_rate") for s in cols]])
        for s in cols:
            if s in steps:
                failures.rows.append([label, s, _complement(steps[s].get("val_format_rate")),
                                      steps[s].get("val_think_dropped_rate")])
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
