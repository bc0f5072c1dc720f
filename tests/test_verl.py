"""verl 0.9.1 integration, proven in verl's own environment (.venv-verl, by scripts/setup_verl_env.sh).

verl pins transformers<5.11, so it cannot share .venv; these tests drive .venv-verl/bin/python in
subprocesses: the recipes' overrides compose and validate against verl's real config schema, and
verl's naive reward manager, in Ray workers, scores a real batch from our parquet with our reward.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from diagnosis_zero.reward import compute_score

REPO = Path(__file__).resolve().parent.parent
VERL_VENV = REPO / ".venv-verl"
RECIPES = REPO / "recipes" / "verl"
GPUS = {"1.5b": 4, "3b": 4, "7b": 8}
# One response per row of the prepared test split below, in file order.
RESPONSES = [
    # correct
    "<think>Angiokeratomas, acroparesthesia and proteinuria.</think>\n<answer>Fabry disease</answer>",
    # wrong, well formatted
    "<think>Absent radial pulses in a young woman.</think>\n<answer>Giant cell arteritis</answer>",
    # malformed: no tags at all
    "The diagnosis is Wilson disease",
    # a different subtype of the reference
    "<think>Cafe-au-lait spots and neurofibromas.</think>\n<answer>Neurofibromatosis type 2</answer>",
    # correct, then another language appended after the answer (what the 7B model did)
    "<think>Lymphadenopathy.</think>\n<answer>Unicentric Castleman disease</answer> 诊断是卡斯尔曼病。",
    # correct surface variant: accent and possessive
    "<think>Oral and genital ulcers, uveitis.</think>\n<answer>Behçet's disease</answer>",
]


def verl_python() -> Path:
    """Return .venv-verl's Python, failing with the command that creates it."""
    python = VERL_VENV / "bin" / "python"
    assert python.exists(), f"{VERL_VENV} is missing: run scripts/setup_verl_env.sh (it takes about 2 minutes)"
    return python


def verl_env(**extra: str) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("REWARD_PATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHON=str(verl_python()), **extra)
    return env


@pytest.fixture(scope="module")
def installed_package() -> Path:
    """diagnosis_zero as installed in .venv-verl, checked to be the same code as src/."""
    found = subprocess.run(
        [verl_python(), "-c", "import diagnosis_zero, os; print(os.path.dirname(diagnosis_zero.__file__))"],
        capture_output=True, text=True, env=verl_env())
    assert found.returncode == 0, f"diagnosis_zero is not installed in .venv-verl: run scripts/setup_verl_env.sh\n{found.stderr}"
    package = Path(found.stdout.strip())
    source = REPO / "src" / "diagnosis_zero"
    stale = [path.name for path in sorted(source.glob("*.py"))
             if not (package / path.name).is_file() or (package / path.name).read_bytes() != path.read_bytes()]
    assert not stale, f".venv-verl has an old copy of {stale}: run scripts/setup_verl_env.sh"
    return package


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory, qwen_tokenizer_dir) -> Path:
    """Our parquet from `diagnosis-zero prepare`, prompts capped at 1024 tokens as in the original."""
    output = tmp_path_factory.mktemp("rare_arena")
    subprocess.run([sys.executable, "-m", "diagnosis_zero", "prepare",
                    "--input", str(REPO / "tests/fixtures/rarearena/rdc.jsonl"), "--output-dir", str(output),
                    "--split-ratio", "0.5", "--max-prompt-tokens", "1024", "--tokenizer", str(qwen_tokenizer_dir),
                    "--no-progress"], check=True, capture_output=True)
    assert pq.read_metadata(output / "test.parquet").num_rows == len(RESPONSES)
    return output


def dry_run(size: str, tmp_path: Path, *overrides: str, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run a recipe with DRY_RUN=1; return the process and where its composed config was written."""
    config_json = tmp_path / f"config-{size}.json"
    process = subprocess.run(["bash", str(RECIPES / f"run_qwen2.5-{size}.sh"), *overrides],
                             capture_output=True, text=True, timeout=300,
                             env=verl_env(DRY_RUN="1", CONFIG_JSON=str(config_json), **env))
    return process, config_json


def run_probe(script: str, config_json: Path, responses: list[str], tmp_path: Path) -> dict:
    """Run tests/<script> in .venv-verl on the composed config and `responses`; return its JSON report."""
    responses_json = tmp_path / "responses.json"
    responses_json.write_text(json.dumps(responses))
    report_json = tmp_path / "report.json"
    probe = subprocess.run([verl_python(), str(REPO / "tests" / script), str(config_json), str(responses_json),
                            str(report_json)], capture_output=True, text=True, env=verl_env(), timeout=600)
    assert probe.returncode == 0, probe.stderr[-5000:]
    return json.loads(report_json.read_text())


@pytest.mark.parametrize("size", sorted(GPUS))
def test_recipe_overrides_compose_and_validate_in_verl(size, tmp_path, installed_package, prepared_dir,
                                                       tiny_model_dir):
    process, config_json = dry_run(size, tmp_path, MODEL_PATH=str(tiny_model_dir), DATA_DIR=str(prepared_dir),
                                   OUTPUT_DIR=str(tmp_path / "run"))
    assert process.returncode == 0, process.stderr[-3000:]
    for check in ("hydra composition", "validate_config", "actor_rollout_ref.actor -> dataclass",
                  "actor_rollout_ref.rollout -> dataclass", "actor_rollout_ref.model -> dataclass",
                  "micro-batches divide the per-GPU batches", "reward manager 'naive' -> NaiveRewardManager"):
        assert f"ok: {check}" in process.stderr
    config = json.loads(config_json.read_text())
    actor = config["actor_rollout_ref"]["actor"]
    rollout = config["actor_rollout_ref"]["rollout"]

    assert config["reward"]["custom_reward_function"] == {
        "path": str(installed_package / "reward.py"), "name": "compute_score"}
    assert config["reward"]["reward_manager"]["name"] == "naive"
    assert config["custom_reward_function"]["path"] is None  # the legacy keys main_ppo ignores stay unset
    assert config["data"]["train_files"] == str(prepared_dir / "train.parquet")
    assert config["data"]["val_files"] == str(prepared_dir / "test.parquet")
    assert config["actor_rollout_ref"]["model"]["path"] == str(tiny_model_dir)
    assert config["actor_rollout_ref"]["model"]["enable_gradient_checkpointing"] is True
    assert config["algorithm"]["adv_estimator"] == "grpo"
    assert config["algorithm"]["use_kl_in_reward"] is False
    assert config["data"]["train_batch_size"] == 8
    assert (config["data"]["max_prompt_length"], config["data"]["max_response_length"]) == (1024, 1024)
    assert rollout["n"] == 16
    assert actor["ppo_mini_batch_size"] == 8 and actor["ppo_epochs"] == 1
    assert {key: actor["optim"][key] for key in ("lr", "weight_decay", "clip_grad", "lr_scheduler_type",
                                                  "lr_warmup_steps_ratio")} == {
        "lr": 3e-7, "weight_decay": 0.01, "clip_grad": 1.0, "lr_scheduler_type": "constant",
        "lr_warmup_steps_ratio": 0.0}
    assert (actor["use_kl_loss"], actor["kl_loss_coef"], actor["kl_loss_type"]) == (True, 0.001, "low_var_kl")
    assert actor["entropy_coeff"] == 0.001
    assert actor["clip_ratio"] == actor["clip_ratio_low"] == actor["clip_ratio_high"] == 0.2
    assert actor["fsdp_config"]["param_offload"] and actor["fsdp_config"]["optimizer_offload"]
    assert (rollout["temperature"], rollout["top_p"], rollout["do_sample"]) == (1.0, 1.0, True)
    assert rollout["val_kwargs"]["do_sample"] is False and rollout["val_kwargs"]["n"] == 1
    assert (rollout["name"], rollout["tensor_model_parallel_size"], rollout["gpu_memory_utilization"]) == (
        "vllm", 1, 0.6)
    trainer = config["trainer"]
    assert (trainer["val_before_train"], trainer["test_freq"], trainer["save_freq"], trainer["total_epochs"]) == (
        True, 10, 50, 5)
    assert trainer["n_gpus_per_node"] == GPUS[size]
    assert trainer["default_local_dir"] == str(tmp_path / "run" / "checkpoints")


@pytest.mark.parametrize(("override", "message"), [
    # verl 0.1's key, gone from 0.9.1's schema: Hydra rejects it rather than ignore it.
    ("actor_rollout_ref.actor.grad_offload=True", "Could not override 'actor_rollout_ref.actor.grad_offload'"),
    # a value verl's own validation refuses
    ("actor_rollout_ref.actor.ppo_mini_batch_size=16", "must be >= actor.ppo_mini_batch_size (16)"),
    # 8 prompts x 16 responses on 4 GPUs is 32 a GPU, which micro-batches of 5 do not divide
    ("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=5", "does not divide the 32 responses each GPU gets"),
])
def test_dry_run_rejects_what_verl_would_reject(override, message, tmp_path, installed_package, prepared_dir):
    process, _ = dry_run("1.5b", tmp_path, override, DATA_DIR=str(prepared_dir))
    assert process.returncode != 0
    assert message in process.stderr


def test_launch_without_prepared_data_names_the_missing_file(tmp_path, installed_package):
    process = subprocess.run(["bash", str(RECIPES / "run_qwen2.5-1.5b.sh")], capture_output=True, text=True,
                             env=verl_env(DATA_DIR=str(tmp_path / "nowhere")), timeout=120)
    assert process.returncode == 2
    assert f"{tmp_path / 'nowhere' / 'train.parquet'} not found" in process.stderr


def test_verl_naive_reward_manager_scores_our_parquet_with_our_reward(tmp_path, installed_package, prepared_dir,
                                                                      tiny_model_dir, qwen_tokenizer_dir):
    process, config_json = dry_run(
        "1.5b", tmp_path, f"actor_rollout_ref.model.tokenizer_path={qwen_tokenizer_dir}", "reward.num_workers=2",
        MODEL_PATH=str(tiny_model_dir), DATA_DIR=str(prepared_dir))
    assert process.returncode == 0, process.stderr[-3000:]
    report = run_probe("verl_reward_probe.py", config_json, RESPONSES, tmp_path)

    # verl passed the decoded response only (no prompt), and our compute_score, run here in the
    # main environment on the same parquet rows, gives exactly what verl recorded.
    assert report["solution_strs"] == RESPONSES
    rows = pq.read_table(prepared_dir / "test.parquet").to_pandas()  # lists come back as numpy arrays
    expected = [compute_score(data_source=row.data_source, solution_str=text,
                              ground_truth=row.reward_model["ground_truth"], extra_info=row.extra_info)
                for row, text in zip(rows.itertuples(), RESPONSES, strict=True)]
    assert [item["reward_extra_info"] for item in report["per_item"]] == expected
    assert [item["reward_score"] for item in report["per_item"]] == [result["score"] for result in expected]

    # The batch path puts each score on the last response token and keeps every key as a column.
    for scores, length, result in zip(report["rm_scores"], report["valid_response_lengths"], expected, strict=True):
        assert [i for i, value in enumerate(scores) if value] in ([length - 1], [])
        assert sum(scores) == pytest.approx(result["score"], abs=1e-6)
    assert report["reward_extra_keys"] == list(expected[0])
    assert report["non_tensor_batch"] == {key: [result[key] for result in expected] for key in expected[0]}

    correct, wrong, malformed, subtype, mixed, variant = expected
    assert correct["acc"] == 1 and correct["format"] == 1
    assert wrong["acc"] == 0 and wrong["format"] == 1 and wrong["pred"] == "Giant cell arteritis"
    assert malformed["format"] == 0 and malformed["pred"] == ""
    assert subtype["acc"] == 0
    assert mixed["mixed_language"] == 1 and mixed["score"] < correct["score"]
    assert variant["acc"] == 1

    # `acc` is verl's core validation metric; every other key lands in the auxiliary metrics.
    metrics = report["val_metrics"]
    assert metrics["val-core/rare_arena/acc/mean@1"] == pytest.approx(sum(r["acc"] for r in expected) / 6)
    for key in ("score", "format", "think_present", "mixed_language", "reward"):
        assert f"val-aux/rare_arena/{key}/mean@1" in metrics
    assert metrics["val-aux/rare_arena/mixed_language/mean@1"] == pytest.approx(1 / 6)

    # `+reward.custom_reward_function.reward_kwargs.preset=original` reaches compute_score.
    original = [compute_score(data_source=row.data_source, solution_str=text,
                              ground_truth=row.reward_model["ground_truth"], extra_info={"index": i}, preset="original")
                for i, (row, text) in enumerate(zip(rows.itertuples(), RESPONSES, strict=True))]
    assert report["original_preset"] == original
    assert [result["score"] for result in original[:3]] == [1.0, 0.1, 0.0]

    assert report["threads_agree"], "compute_score gave different results from 8 threads than serially"
    assert not report["legacy_keys_load_a_reward"], "verl 0.9.1 now reads the legacy custom_reward_function keys"
