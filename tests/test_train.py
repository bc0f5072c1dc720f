"""`diagnosis-zero train` on real components: a tiny random Qwen2 with the SmolLM2 tokenizer, real HPO
demo parquet, TRL's GRPOTrainer. Two steps change the weights and write metrics and a checkpoint; resume
continues after a clean stop, after kill -9 and after Ctrl-C; bad configuration fails before any model
loads; and the real demo recipe runs end to end."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from diagnosis_zero import cli, train
from diagnosis_zero.errors import ConfigError

# Small and fast: 2 prompts x 4 generations, 16 new tokens, full fine-tuning of the tiny model.
TINY = ["--max-completion-length", "16", "--num-generations", "4", "--prompts-per-step", "2",
        "--per-device-train-batch-size", "8", "--use-peft", "false", "--demo-cases", "40",
        "--validation-max-cases", "4", "--validation-steps", "2", "--completions-log-steps", "1",
        "--completions-log-count", "8", "--report-to", "none", "--learning-rate", "1e-2",
        "--temperature", "1.5"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def steps(run_dir: Path) -> list[int]:
    return [row["step"] for row in rows(run_dir / "metrics.jsonl")]


def train_main(model_dir, out, *extra):
    return cli.main(["train", "--model", str(model_dir), "--output-dir", str(out), *TINY, *extra])


@pytest.fixture(scope="module")
def two_steps(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "two-steps"
    assert train_main(tiny_model_dir, out, "--max-steps", "2") == 0
    return out


def test_two_steps_change_weights_and_write_metrics_and_checkpoint(two_steps, tiny_model_dir):
    assert steps(two_steps) == [0, 1, 2]
    metrics = rows(two_steps / "metrics.jsonl")
    assert {"val_score", "val_accuracy", "val_format_rate", "val_think_rate", "val_mixed_language_rate",
            "val_completion_length_mean"} <= set(metrics[0])
    for row in metrics[1:]:
        for key in ("reward_mean", "reward_std", "rewards/accuracy", "rewards/format", "rewards/language",
                    "accuracy", "format_rate", "think_rate", "mixed_language_rate", "completion_length_mean",
                    "clipped_ratio", "frac_reward_zero_std", "entropy", "learning_rate", "loss", "grad_norm",
                    "epoch", "time"):
            assert key in row, key
        assert row["completion_length_mean"] <= 16
    assert "val_score" in metrics[2]  # validation_steps 2
    checkpoint = two_steps / "checkpoint-2"
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "trainer_state.json").is_file()
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(checkpoint / "model.safetensors")
    changed = [name for name in before if name in after and (before[name] != after[name]).any()]
    assert len(changed) > len(before) // 2
    samples = rows(two_steps / "completions.jsonl")
    assert {s["step"] for s in samples} == {1, 2}
    assert all(s["completion"].startswith("<think>") for s in samples)  # the demo's prefilled turn


def test_resume_continues_without_duplicate_steps(two_steps, tiny_model_dir, tmp_path):
    out = tmp_path / "resumed"
    import shutil

    shutil.copytree(two_steps, out)
    assert train_main(tiny_model_dir, out, "--max-steps", "3", "--resume") == 0
    assert steps(out) == [0, 1, 2, 3]
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    # Same data order and RNG state: step 3 samples exactly what an uninterrupted run samples.
    straight = tmp_path / "straight"
    assert train_main(tiny_model_dir, straight, "--max-steps", "3") == 0
    resumed_samples = [s for s in rows(out / "completions.jsonl") if s["step"] == 3]
    straight_samples = [s for s in rows(straight / "completions.jsonl") if s["step"] == 3]
    assert [s["id"] for s in resumed_samples] == [s["id"] for s in straight_samples]
    assert [s["completion"] for s in resumed_samples] == [s["completion"] for s in straight_samples]


def wait_for(predicate, proc, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("timed out")


def start(model_dir, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "diagnosis_zero", "train", "--model", str(model_dir),
                             "--output-dir", str(out), *TINY, *extra],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_resume_after_kill_9(tiny_model_dir, tmp_path):
    out = tmp_path / "killed"
    proc = start(tiny_model_dir, out, "--max-steps", "20", "--save-steps", "2")
    # Kill once checkpoint-2 is complete and step 3 is logged: step 3 is past the checkpoint.
    wait_for(lambda: (out / "checkpoint-2" / "trainer_state.json").is_file()
             and (out / "metrics.jsonl").is_file() and 3 in steps(out), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    logged = steps(out)
    assert 3 in logged
    assert train_main(tiny_model_dir, out, "--max-steps", "4", "--save-steps", "2", "--resume") == 0
    assert steps(out) == [0, 1, 2, 3, 4]  # step 3 redone once, no duplicate line
    samples = rows(out / "completions.jsonl")
    assert sorted({s["step"] for s in samples}) == [1, 2, 3, 4]
    assert len(samples) == 4 * 8


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tiny_model_dir, tmp_path):
    out = tmp_path / "interrupted"
    proc = start(tiny_model_dir, out, "--max-steps", "50", "--save-steps", "100")
    wait_for(lambda: (out / "metrics.jsonl").is_file() and 1 in steps(out), proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    last = steps(out)[-1]
    assert (out / f"checkpoint-{last}" / "trainer_state.json").is_file()
    assert "interrupted (resume with --resume)" in stdout
    assert train_main(tiny_model_dir, out, "--max-steps", str(last + 1), "--resume") == 0
    assert steps(out)[-2:] == [last, last + 1]


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if anything loads model weights."""
    from transformers import modeling_utils

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the configuration was checked")

    monkeypatch.setattr(modeling_utils.PreTrainedModel, "from_pretrained", classmethod(refuse))


def assert_config_error(capsys, argv, field):
    assert cli.main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"field '{field}'" in err, err
    return err


def test_bad_configuration_fails_before_model_loading(no_model_loading, tiny_model_dir, tmp_path, capsys):
    model = ["--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "out")]
    err = assert_config_error(capsys, [*model, "--learning-rat", "1e-5"], "learning_rat")
    assert "did you mean 'learning_rate'" in err
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("model: bundled:smollm2-135m-instruct\nnum_generation: 4\n")
    err = assert_config_error(capsys, [*model, "--recipe", str(recipe)], "num_generation")
    assert str(recipe) in err
    assert_config_error(capsys, [*model, "--num-generations", "3", "--prompts-per-step", "null",
                                 "--per-device-train-batch-size", "8"], "num_generations")
    assert_config_error(capsys, [*model, "--data", str(tmp_path / "no-such-data")], "data")
    assert_config_error(capsys, ["--model", str(tmp_path / "no-such-model"), "--output-dir", str(tmp_path)],
                        "model")
    assert_config_error(capsys, [*model, "--resume"], "resume")
    assert_config_error(capsys, [*model, "--lora-r", "0"], "lora_r")
    assert_config_error(capsys, [*model, "--reward-preset", "lenient"], "reward_preset")
    assert_config_error(capsys, [*model, "--reward-levels", "{wrong_reward: 0.2, bogus: 1}"],
                        "reward_levels.bogus")
    assert not (tmp_path / "out").exists()


def test_previous_run_needs_resume(no_model_loading, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 0}\n')
    err = assert_config_error(capsys, ["--model", str(tiny_model_dir), "--output-dir", str(out)], "output_dir")
    assert "--resume" in err


def test_incomplete_checkpoint_is_skipped(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    (tmp_path / "checkpoint-4").mkdir()  # killed while saving: no trainer_state.json yet
    (tmp_path / "checkpoint-x").mkdir()
    assert train.last_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert train.last_checkpoint(tmp_path / "missing") is None


def test_truncate_log_drops_steps_after_the_checkpoint_and_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "rew')
    assert [r["step"] for r in train.truncate_log(path, 2)] == [0, 1, 2]
    assert path.read_text() == '{"step": 0}\n{"step": 1}\n{"step": 2}\n'
    assert train.truncate_log(tmp_path / "absent.jsonl", 2) == []


def test_metrics_row_uses_the_contract_names_and_drops_nan():
    logs = {"reward": 0.5, "reward_std": 0.1, "rewards/accuracy/mean": 0.2, "rewards/accuracy/std": 0.3,
            "completions/mean_length": 40.0, "completions/clipped_ratio": 0.25, "kl": float("nan"),
            "entropy": 2.0, "learning_rate": 1e-5, "epoch": 0.5, "note": "text"}
    row = train.metrics_row(logs, 7, 12.34567)
    assert row == {"step": 7, "reward_mean": 0.5, "reward_std": 0.1, "rewards/accuracy": 0.2,
                   "rewards/accuracy_std": 0.3, "completion_length_mean": 40.0, "clipped_ratio": 0.25,
                   "entropy": 2.0, "learning_rate": 1e-5, "epoch": 0.5, "time": 12.346}


def test_reward_sees_the_prefilled_prefix():
    from diagnosis_zero import reward

    config = reward.PRESETS["clinical"]
    seen = []
    funcs, weights = train.make_reward_funcs(config, "<think>", lambda prompts, completions, columns: seen.append(completions))
    assert [f.__name__ for f in funcs] == ["accuracy", "format", "language"]
    truth = {"ground_truth": {"diagnosis": ["Gaucher disease"], "orpha_id": "355"}}
    completions = [" Enlarged spleen, bone pain.</think> <answer>Gaucher disease</answer>",
                   [{"role": "assistant", "content": " no idea</think> <answer>Migraine</answer>"}]]
    columns = {"reward_model": [truth, truth], "extra_info": [{}, {}]}
    totals = [sum(w * f(prompts=None, completions=completions, **columns)[i] for f, w in zip(funcs, weights, strict=True))
              for i in range(2)]
    expected = [reward.compute_score("hpo_demo", "<think>" + text, truth["ground_truth"])["score"]
                for text in (completions[0], completions[1][0]["content"])]
    assert totals == pytest.approx(expected) and totals[0] == pytest.approx(1.0)
    assert seen[0][0].startswith("<think> Enlarged") and seen[0][1][0]["content"].startswith("<think> no idea")


def test_plan_applies_cpu_settings_without_loading(no_model_loading, tiny_model_dir, tmp_path):
    import torch

    plan = train.plan_run(None, {"model": str(tiny_model_dir), "output_dir": str(tmp_path / "o"),
                                 "bf16": "true"})
    native_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    # bf16 autocast stays where the CPU has native bf16 (the demo's speed relies on it), else it goes
    assert plan.device == "cpu" and plan.args.use_cpu and plan.args.bf16 is native_bf16
    plan = train.plan_run(None, {"model": str(tiny_model_dir), "output_dir": str(tmp_path / "o"), "fp16": "true",
                                 "bf16": "false"})
    assert not plan.args.fp16 and not plan.args.bf16  # fp16 never runs on a CPU; bf16 never unasked
    assert plan.args.logging_steps == 1 and plan.args.report_to == ["tensorboard"]
    with pytest.raises(ConfigError, match="use_vllm"):
        train.plan_run(None, {"model": str(tiny_model_dir), "output_dir": str(tmp_path / "o"), "use_vllm": "true"})


def test_demo_recipe_end_to_end(smollm2_dir, tmp_path):
    """The README's main command, `diagnosis-zero train`, with only fewer steps and shorter completions."""
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "diagnosis_zero", "train", "--output-dir", str(out),
                           "--max-steps", "2", "--max-completion-length", "12", "--validation-max-cases", "4"],
                          env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert steps(out) == [0, 1, 2]
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()  # LoRA
    assert list((out / "runs").rglob("events.out.tfevents.*"))  # TensorBoard by default
    for text in ("reward_mean", "format_rate", "accuracy", "validation score", "metrics", "checkpoint"):
        assert text in proc.stdout
