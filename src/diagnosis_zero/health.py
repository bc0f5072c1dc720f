"""Training-health flags: the known signs of a GRPO run going wrong, read from `metrics.jsonl` rows.

Used by `report` (the health panel) and by `train` (live warnings, via `new_flags`). Every check
smooths its series with a trailing mean over `window` logged values, so one noisy step does not
raise a flag, and names the first step of that window where the raw series crossed the threshold,
and, once the condition has cleared, the last step where it held ("at steps 40-55", in the past
tense; a flag still holding reads "from step 40", in the present).

The signs come from the original study and from R1-Zero-style practice: groups whose rewards all
tie give GRPO no advantage to learn from; entropy and response length collapse before a run
degenerates; the 1.5B model silently stopped writing `<think>`; the 7B model's mixed-language
rate spiked to 10.6% at step 1000; a KL that runs away means the policy left its reference.

`reasoning_dropped` watches the think-present rate (`think_rate`), the series training logs for
every step. It is not the "think dropped" measure (an answer without a think block,
`metrics.think_dropped`, `val_think_dropped_rate`), which `report` tabulates.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from diagnosis_zero.errors import ConfigError


@dataclass
class HealthThresholds:
    window: int = field(default=5, metadata={
        "help": "logged values in the trailing mean each check smooths over; a check needs this many values"})
    zero_std_max: float = field(default=0.9, metadata={
        "help": "no learning signal: smoothed `frac_reward_zero_std` (fraction of prompt groups whose "
                "rewards all tie) at or above this"})
    entropy_ratio: float = field(default=0.25, metadata={
        "help": "entropy collapse: smoothed `entropy` below this fraction of its smoothed peak"})
    length_ratio: float = field(default=0.5, metadata={
        "help": "response length collapsing: smoothed `completion_length_mean` below this fraction of "
                "its smoothed peak (the original 1.5B run fell from ~300 to ~125 tokens)"})
    clipped_ratio_max: float = field(default=0.5, metadata={
        "help": "response length pinned at the cap: smoothed `clipped_ratio` (fraction of completions cut "
                "at max_completion_length) at or above this"})
    think_rate_drop: float = field(default=0.3, metadata={
        "help": "reasoning dropped: smoothed `think_rate` fell by at least this much (absolute, 0-1) "
                "below its smoothed peak"})
    mixed_language_max: float = field(default=0.05, metadata={
        "help": "mixed-language spike: smoothed `mixed_language_rate` at or above this (0-1; the original "
                "7B run reached 0.106 at step 1000)"})
    kl_max: float = field(default=1.0, metadata={
        "help": "KL blow-up: smoothed `kl` (per-token KL to the reference model, nats) at or above this"})


@dataclass(frozen=True)
class HealthFlag:
    name: str      # which sign, e.g. "entropy_collapse"
    step: int      # the step where it began
    series: str    # the metrics.jsonl key that shows it
    message: str   # one readable sentence with the values and the threshold (past tense once ended)
    end_step: int | None = None  # the last step where it held, once it has ended; None: still holding

    @property
    def steps(self) -> str:
        """"at steps 40-55" for a sign that ended, "from step 40" for one that still holds."""
        if self.end_step is None:
            return f"from step {self.step}"
        return f"at step {self.step}" if self.end_step == self.step else f"at steps {self.step}-{self.end_step}"

    def __str__(self) -> str:
        return f"{self.name} {self.steps} ({self.series}): {self.message}"


# flag name -> metrics.jsonl series it reads; validation series too, since the original study
# saw dropped reasoning and mixed language in its validation outputs.
FLAG_SERIES: dict[str, tuple[str, ...]] = {
    "no_learning_signal": ("frac_reward_zero_std",),
    "entropy_collapse": ("entropy",),
    "length_collapse": ("completion_length_mean", "val_completion_length_mean"),
    "length_at_cap": ("clipped_ratio",),
    "reasoning_dropped": ("think_rate", "val_think_rate"),
    "mixed_language_spike": ("mixed_language_rate", "val_mixed_language_rate"),
    "kl_blowup": ("kl",),
}


def parse_threshold_overrides(items: list[str] | None, base: HealthThresholds | None = None) -> HealthThresholds:
    """Return thresholds with `NAME=VALUE` overrides applied (CLI `--health NAME=VALUE`)."""
    thresholds = base or HealthThresholds()
    fields = {f.name: f for f in dataclasses.fields(HealthThresholds)}
    changes = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in fields:
            raise ConfigError("health", f"expected NAME=VALUE with NAME one of {', '.join(fields)}; got {item!r}")
        kind = int if fields[name].type in (int, "int") else float
        try:
            changes[name] = kind(text)
        except ValueError:
            raise ConfigError(f"health.{name}", f"expected a number, got {text!r}") from None
    if changes.get("window", thresholds.window) < 1:
        raise ConfigError("health.window", "must be at least 1")
    return dataclasses.replace(thresholds, **changes)


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = sorted(
        (int(row["step"]), float(row[key])) for row in rows
        if isinstance(row.get("step"), (int, float)) and isinstance(row.get(key), (int, float))
        and not isinstance(row.get(key), bool) and math.isfinite(row[key]))
    return [s for s, _ in points], [v for _, v in points]


def _episode(steps, values, window, crossed) -> tuple[int, float, float, int | None] | None:
    """Find where `crossed(mean, peak)` first holds for a trailing mean, and where that stopped.

    Returns (start step, smoothed value, smoothed peak so far, end step), the start step being the
    first step in that window whose raw value already crossed, and the end step the last step whose
    window still held before the condition cleared (None while it holds at the last logged step;
    if it recurs later, the span runs to its last holding step). None if it never happens.
    """
    total = 0.0
    peak = -math.inf
    hit = None
    last_held = None
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        if i < window - 1:
            continue
        mean = total / window
        peak = max(peak, mean)
        holds = crossed(mean, peak)
        if holds and hit is None:
            start = next((j for j in range(i - window + 1, i + 1) if crossed(values[j], peak)), i)
            hit = (steps[start], mean, peak)
        if holds:
            last_held = i
    if hit is None:
        return None
    ended = last_held < len(values) - 1
    return (*hit, steps[last_held] if ended else None)


def check_health(rows: list[dict], thresholds: HealthThresholds | None = None) -> list[HealthFlag]:
    """Return the health flags raised by a run's metrics rows, each with the steps over which it held.

    A flag whose condition has cleared by the last logged step has `end_step` set and speaks in
    the past tense; one still holding speaks in the present.
    """
    t = thresholds or HealthThresholds()
    w = max(1, int(t.window))
    # name -> (crossed(mean, peak), describe(series, mean, peak, ended))
    checks = {
        "no_learning_signal": (lambda m, p: m >= t.zero_std_max, lambda s, m, p, e: (
            f"{s} averaged {m:.2f} over {w} logged steps (threshold {t.zero_std_max:g}): most prompt groups "
            f"{'had' if e else 'have'} identical rewards, so GRPO {'had' if e else 'has'} no advantage to "
            "learn from")),
        "entropy_collapse": (lambda m, p: p > 0 and m < t.entropy_ratio * p, lambda s, m, p, e: (
            f"{s} fell to {m:.3g}, {m / p:.0%} of its peak {p:.3g} (threshold {t.entropy_ratio:.0%}): "
            f"the policy {'was becoming' if e else 'is becoming'} deterministic")),
        "length_collapse": (lambda m, p: p > 0 and m < t.length_ratio * p, lambda s, m, p, e: (
            f"{s} fell to {m:.0f} tokens, {m / p:.0%} of its peak {p:.0f} (threshold {t.length_ratio:.0%}): "
            f"responses {'were' if e else 'are'} collapsing")),
        "length_at_cap": (lambda m, p: m >= t.clipped_ratio_max, lambda s, m, p, e: (
            f"{s} averaged {m:.2f} (threshold {t.clipped_ratio_max:g}): responses {'were' if e else 'are'} "
            "pinned at max_completion_length")),
        "reasoning_dropped": (lambda m, p: m <= p - t.think_rate_drop, lambda s, m, p, e: (
            f"{s} fell to {m:.2f} from its peak {p:.2f} (drop threshold {t.think_rate_drop:g}): "
            f"the model {'stopped' if e else 'stops'} writing <think>")),
        "mixed_language_spike": (lambda m, p: m >= t.mixed_language_max, lambda s, m, p, e: (
            f"{s} averaged {m:.3f} (threshold {t.mixed_language_max:g}): responses "
            f"{'mixed' if e else 'mix'} in another language")),
        "kl_blowup": (lambda m, p: m >= t.kl_max, lambda s, m, p, e: (
            f"{s} averaged {m:.3g} (threshold {t.kl_max:g}): the policy {'was' if e else 'is'} running away "
            "from its reference")),
    }
    flags = []
    for name, (crossed, describe) in checks.items():
        for key in FLAG_SERIES[name]:
            steps, values = _series(rows, key)
            hit = _episode(steps, values, w, crossed)
            if hit is not None:
                step, mean, peak, end = hit
                message = describe(key, mean, peak, end is not None)
                if end is not None:
                    message += f"; it cleared after step {end}"
                flags.append(HealthFlag(name, step, key, message, end))
    return sorted(flags, key=lambda f: (f.step, f.name, f.series))


def new_flags(rows: list[dict], raised: set[tuple[str, str]],
              thresholds: HealthThresholds | None = None) -> list[HealthFlag]:
    """Return the flags on the rows so far that are not yet in `raised`, and add them to it.

    The live form for `train`: call it after each logged step and warn about what it returns.
    """
    fresh = [f for f in check_health(rows, thresholds) if (f.name, f.series) not in raised]
    raised.update((f.name, f.series) for f in fresh)
    return fresh
