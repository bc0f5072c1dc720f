"""`diagnosis-zero train` under `torchrun --nproc_per_node 2`: real DDP over gloo on the CPU, with the tiny
random Qwen2 and real HPO demo parquet. Two processes train 2 steps, then a resume runs step 3. Only the
main process writes metrics.jsonl, completions.jsonl and the summary; the checkpoint holds both ranks' RNG
states; validation splits the cases over the processes and gathers them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# 2 prompts x 4 generations a step over 2 processes: 4 completions per process, one micro-batch each.
TINY = ["--max-completion-length", "16", "--num-generations", "4", "--prompts-per-step", "2",
        "--per-device-train-batch-size", "4", "--use-peft", "false", "--demo-cases", "40",
        "--validation-max-cases", "4", "--validation-steps", "2", "--completions-log-steps", "1",
        "--completions-log-count", "8", "--report-to", "none", "--learning-rate", "1e-2",
        "--temperature", "1.5"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
       "OMP_NUM_THREADS": "1"}


def torchrun(model_dir: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "diagnosis_zero", "train", "--model", str(model_dir), "--output-dir", str(out), *TINY, *extra]
    proc = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_one_summary(stdout: str, last_step: int) -> None:
    assert stdout.count("training done") == 1, stdout
    assert "no step finished" not in stdout
    assert f"training done: {last_step} steps on cpu" in stdout
    for key in ("reward_mean", "format_rate", "accuracy"):
        assert sum(line.split()[:1] == [key] for line in stdout.splitlines()) == 1, stdout
    assert "validation score: step 0" in stdout


@pytest.fixture(scope="module")
def two_process_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    first = torchrun(tiny_model_dir, out, "--max-steps", "2")
    return out, first


def test_two_processes_train_log_once_and_checkpoint_both_ranks(two_process_run):
    out, proc = two_process_run
    assert_one_summary(proc.stdout, 2)
    metrics = rows(out / "metrics.jsonl")
    assert [row["step"] for row in metrics] == [0, 1, 2]  # one line per step, written by rank 0 only
    for row in metrics[1:]:
        assert {"reward_mean", "format_rate", "accuracy", "loss", "grad_norm"} <= set(row)
    # Validation gathered from both processes: every one of the 4 cases is scored at steps 0 and 2.
    assert "val_score" in metrics[0] and "val_score" in metrics[2]
    samples = rows(out / "completions.jsonl")
    assert sorted({s["step"] for s in samples}) == [1, 2]
    # TRL split each step's 8 completions over 2 processes: rank 0 samples its own 4; rank 1 writes none.
    assert all(sum(s["step"] == step for s in samples) == 4 for step in (1, 2))
    checkpoint = out / "checkpoint-2"
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 2


def test_two_processes_resume(two_process_run, tiny_model_dir, tmp_path):
    import shutil

    source, _ = two_process_run
    out = tmp_path / "resumed"
    shutil.copytree(source, out)
    proc = torchrun(tiny_model_dir, out, "--max-steps", "3", "--resume")
    assert_one_summary(proc.stdout, 3)
    assert [row["step"] for row in rows(out / "metrics.jsonl")] == [0, 1, 2, 3]
    assert sorted({s["step"] for s in rows(out / "completions.jsonl")}) == [1, 2, 3]
    checkpoint = out / "checkpoint-3"
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 3
