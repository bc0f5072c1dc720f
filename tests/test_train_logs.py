"""What a real (tiny) `train` run leaves for the readers: TensorBoard logs metrics.jsonl's own names,
and `report` reads the finished run as finished (it ends with checkpoint-N only)."""

import json
import math
import shutil

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from diagnosis_zero import cli, train
from diagnosis_zero.report import Problems, load_run

# One step of 2 prompts x 4 generations, 8 new tokens, validated on 2 cases before and after it.
TINY = ["--max-completion-length", "8", "--num-generations", "4", "--prompts-per-step", "2",
        "--per-device-train-batch-size", "8", "--use-peft", "false", "--demo-cases", "20",
        "--validation-max-cases", "2", "--validation-steps", "1", "--completions-log-steps", "0",
        "--report-to", "tensorboard", "--max-steps", "1"]


@pytest.fixture(scope="module")
def one_step(tiny_model_dir, tmp_path_factory, monkeypatch_module):
    out = tmp_path_factory.mktemp("run") / "one-step"
    monkeypatch_module.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    assert cli.main(["train", "--model", str(tiny_model_dir), "--output-dir", str(out), *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    [events] = list((run_dir / "runs").rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events.parent))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_tensorboard_logs_the_metrics_jsonl_names(one_step):
    rows = [json.loads(line) for line in (one_step / "metrics.jsonl").read_text().splitlines()]
    [row] = [r for r in rows if r["step"] == 1]
    assert {"reward_mean", "completion_length_mean", "clipped_ratio", "rewards/accuracy", "val_score"} <= set(row)
    logged = scalars(one_step)
    for key, value in row.items():
        if key in ("step", "time"):
            continue
        tag = f"train/{key}"
        assert tag in logged, tag
        # `epoch` comes again with the end-of-run summary, also at step 1
        assert value in [pytest.approx(v, rel=1e-6, abs=1e-7) for step, v in logged[tag] if step == 1], key
    # TRL's own spellings of the renamed series are nowhere in TensorBoard
    for trl_key in (*train.METRIC_NAMES, "rewards/accuracy/mean", "rewards/accuracy/std"):
        assert f"train/{trl_key}" not in logged
    # what TensorBoard has beyond metrics.jsonl: the end-of-run summary and non-finite values only
    extra = {tag[len("train/"):] for tag in logged} - set(row)
    assert all(key in train.SUMMARY_KEYS or not math.isfinite(logged[f"train/{key}"][0][1]) for key in extra), extra


def test_a_finished_run_reads_as_finished_and_a_stopped_one_does_not(one_step, tmp_path):
    assert not (one_step / "model.safetensors").exists() and (one_step / "checkpoint-1").is_dir()
    problems = Problems()
    assert load_run(one_step, problems).finished
    assert not problems.in_progress
    stopped = tmp_path / "stopped"  # the same run stopped (Ctrl-C) at step 1 of 5
    shutil.copytree(one_step, stopped)
    state_path = stopped / "checkpoint-1" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state_path.write_text(json.dumps({**state, "max_steps": 5}))
    assert not load_run(stopped, problems).finished
    assert [p for p in problems.in_progress if "stopped: in progress or stopped (last logged step 1" in p]
