"""Figures of `diagnosis-zero report`: training series vs step, raw and smoothed, as Matplotlib figures.

Each figure draws, per run, the raw series faintly behind its centred moving average; the series
come from `metrics.jsonl` (docs/formats.md), and `plot_data` holds exactly what was drawn.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diagnosis_zero.report import Run

from diagnosis_zero.io import atomic_path

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
# Drawn only when some run logged one of its keys (runs trained with `tools:`; docs/formats.md).
OPTIONAL_FIGURES: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "tool_use": ("Tool use vs step", [
        ("tool_use_rate", "Completions that called a tool", "fraction of completions"),
        ("tool_calls_per_completion", "Tool calls per completion", "calls"),
        ("tool_error_rate", "Tool error rate", "failed results / calls"),
        ("accuracy_with_tools", "Accuracy of completions that used a tool", "fraction of completions"),
        ("accuracy_without_tools", "Accuracy of completions that did not", "fraction of completions")]),
}
ALL_FIGURES = {**FIGURES, **OPTIONAL_FIGURES}


def figures_for(runs: list[Run]) -> dict[str, tuple[str, list[tuple[str, str, str]]]]:
    """Return the figures to draw: every standard one, plus each optional one some run has data for."""
    chosen = dict(FIGURES)
    for name, (title, panels) in OPTIONAL_FIGURES.items():
        if any(series(run_.rows, key)[0] for run_ in runs for key, _, _ in panels):
            chosen[name] = (title, panels)
    return chosen


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
    for name, (title, panels) in figures_for(runs).items():
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


def save_figure(fig, path: Path) -> bytes:
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
