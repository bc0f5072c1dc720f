import dataclasses
import random

import pytest

from diagnosis_zero.errors import ConfigError
from diagnosis_zero.health import (
    FLAG_SERIES,
    HealthFlag,
    HealthThresholds,
    check_health,
    new_flags,
    parse_threshold_overrides,
)

STEPS = 120
ONSET = 60


def healthy_rows(seed: int = 0) -> list[dict]:
    """A run that learns: noisy but stable metrics, validation every 10 steps."""
    rng = random.Random(seed)
    rows = []
    for step in range(STEPS):
        row = {
            "step": step,
            "reward_mean": 0.15 + 0.1 * step / STEPS + rng.uniform(-0.03, 0.03),
            "frac_reward_zero_std": 0.4 + rng.uniform(-0.2, 0.2),
            "entropy": 1.0 - 0.4 * step / STEPS + rng.uniform(-0.05, 0.05),
            "completion_length_mean": 300 - 60 * step / STEPS + rng.uniform(-30, 30),
            "clipped_ratio": 0.05 + rng.uniform(-0.03, 0.03),
            "think_rate": 0.9 + rng.uniform(-0.08, 0.08),
            "mixed_language_rate": rng.choice([0.0, 0.0, 0.0, 0.0078, 0.0156]),
            "kl": 0.05 * step / STEPS + rng.uniform(0, 0.005),
        }
        if step % 10 == 0:
            row.update(val_think_rate=0.88 + rng.uniform(-0.04, 0.04),
                       val_mixed_language_rate=rng.choice([0.0, 0.002, 0.004]),
                       val_completion_length_mean=290 + rng.uniform(-20, 20))
        rows.append(row)
    return rows


def broken(key: str, after) -> list[dict]:
    """The healthy run with `key` replaced by `after(step, old)` from step ONSET on."""
    rows = healthy_rows()
    for row in rows:
        if row["step"] >= ONSET and key in row:
            row[key] = after(row["step"], row[key])
    return rows


def test_healthy_run_raises_no_flag():
    for seed in range(5):
        assert check_health(healthy_rows(seed)) == []


FAILURES = {
    # name: (series, how it breaks)
    "no_learning_signal": ("frac_reward_zero_std", lambda s, v: 0.97),
    "entropy_collapse": ("entropy", lambda s, v: 0.05),
    "length_collapse": ("completion_length_mean", lambda s, v: 60.0),
    "length_at_cap": ("clipped_ratio", lambda s, v: 0.85),
    "reasoning_dropped": ("think_rate", lambda s, v: 0.2),
    "mixed_language_spike": ("mixed_language_rate", lambda s, v: 0.106),
    "kl_blowup": ("kl", lambda s, v: 5.0 * (s - ONSET + 1)),
}


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_each_failure_raises_its_flag_at_the_onset(name):
    series, after = FAILURES[name]
    flags = check_health(broken(series, after))
    assert [(f.name, f.series) for f in flags] == [(name, series)]
    assert flags[0].step == ONSET
    assert series in flags[0].message


def test_gradual_decline_flags_where_the_raw_series_first_crossed():
    # think rate decays linearly from 0.9 at ONSET to 0.0 forty steps later: the flag begins at the
    # first step whose raw value is at least 0.3 below the smoothed peak, before the smoothed crossing.
    rows = broken("think_rate", lambda s, v: max(0.0, 0.9 - 0.9 * (s - ONSET) / 40))
    [flag] = check_health(rows)
    assert flag.name == "reasoning_dropped"
    peak = max(sum(r["think_rate"] for r in rows[i - 4:i + 1]) / 5 for i in range(4, len(rows)))
    first_raw = next(r["step"] for r in rows if r["think_rate"] <= peak - 0.3)
    assert ONSET < flag.step <= first_raw + 5


def test_validation_series_are_checked_too():
    rows = broken("val_mixed_language_rate", lambda s, v: 0.106)
    [flag] = check_health(rows)
    assert (flag.name, flag.series, flag.step) == ("mixed_language_spike", "val_mixed_language_rate", ONSET)


def test_single_noisy_step_is_smoothed_away():
    rows = healthy_rows()
    rows[70]["kl"] = 3.0  # one outlier: mean over 5 steps = ~0.63 < 1.0
    rows[80]["frac_reward_zero_std"] = 1.0
    assert check_health(rows) == []


def test_thresholds_can_be_changed():
    rows = broken("mixed_language_rate", lambda s, v: 0.03)
    assert check_health(rows) == []
    lower = HealthThresholds(mixed_language_max=0.02)
    assert [f.name for f in check_health(rows, lower)] == ["mixed_language_spike"]
    overrides = parse_threshold_overrides(["mixed_language_max=0.02", "window=3"])
    assert (overrides.mixed_language_max, overrides.window) == (0.02, 3)
    assert isinstance(overrides.window, int)


def test_every_threshold_has_help():
    for f in dataclasses.fields(HealthThresholds):
        assert f.metadata.get("help"), f.name
    assert set(FLAG_SERIES) == set(FAILURES)


@pytest.mark.parametrize("item", ["nope=1", "window", "kl_max=big", "window=0"])
def test_bad_override_is_a_config_error(item):
    with pytest.raises(ConfigError) as exc:
        parse_threshold_overrides([item])
    assert "health" in str(exc.value)


def test_missing_values_and_short_runs_are_tolerated():
    assert check_health([]) == []
    assert check_health([{"step": 0, "entropy": 1.0}, {"step": 1}, {"epoch": 0.1}]) == []
    rows = [{"step": s, "kl": 9.0} for s in range(4)]  # fewer values than the window
    assert check_health(rows) == []
    rows.append({"step": 4, "kl": float("nan")})
    assert check_health(rows) == []


def test_new_flags_reports_each_flag_once_while_training():
    rows = broken("entropy", lambda s, v: 0.05)
    raised: set = set()
    seen = []
    for i in range(1, len(rows) + 1):
        seen += new_flags(rows[:i], raised)
    assert [f.name for f in seen] == ["entropy_collapse"]
    assert seen[0].step == ONSET
    assert ("entropy_collapse", "entropy") in raised


def test_flag_reads_as_one_line():
    flag = HealthFlag("kl_blowup", 12, "kl", "kl averaged 3 (threshold 1)")
    assert str(flag) == "kl_blowup from step 12 (kl): kl averaged 3 (threshold 1)"


def test_a_flag_that_ended_gives_its_steps_in_the_past_tense():
    # entropy collapses from ONSET for 20 steps, then recovers to its healthy level
    rows = broken("entropy", lambda s, v: 0.05 if s < ONSET + 20 else v)
    [flag] = check_health(rows)
    assert (flag.name, flag.step) == ("entropy_collapse", ONSET)
    # the trailing mean over 5 steps still holds for a few steps after the raw recovery at ONSET + 20
    assert ONSET + 19 <= flag.end_step < ONSET + 24
    assert str(flag).startswith(f"entropy_collapse at steps {ONSET}-{flag.end_step} (entropy): entropy fell to")
    assert "the policy was becoming deterministic" in flag.message
    assert f"it cleared after step {flag.end_step}" in flag.message
    # while it still holds (the rows so far end inside the collapse), it speaks in the present
    [live] = check_health(rows[:ONSET + 10])
    assert live.end_step is None and str(live).startswith(f"entropy_collapse from step {ONSET} (entropy)")
    assert "the policy is becoming deterministic" in live.message
