"""benchmarks/bench_gpu.py --tiny runs the GPU benchmark's code path (random-init Qwen2.5-architecture model,
bundled Qwen2.5 tokenizer, GRPO through `diagnosis-zero train`'s code for full fine-tuning and LoRA, the
evaluate HF backend, the extrapolation) on the CPU, so the path cannot rot; and the Qwen2.5 shapes and the
cost model behind docs/train.md's table are checked against real models and the docs."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diagnosis_zero import shapes

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-gpu") / "figures.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--tiny", "--output", str(out)],
                          env=ENV, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text()), proc.stdout


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_tiny_grpo_runs_full_and_lora_with_the_recipe_settings(tiny_report):
    report, _ = tiny_report
    assert report["device"]["type"] == "cpu" and report["device"]["bf16_peak_tflops"] is None
    assert set(report["versions"]) == {"torch", "transformers", "trl", "peft", "accelerate"}
    settings = report["settings"]
    runs = {r["mode"]: r for r in report["train"]}
    assert set(runs) == {"full", "lora"}
    for mode, r in runs.items():
        assert r["status"] == "ok" and r["shape"] == "tiny" and r["parameters"] == shapes.parameter_count(shapes.TINY)
        assert r["gradient_checkpointing"] is True and r["steps"] == 2 and r["steps_measured"] == [2]
        for key in ("generation_s", "logprobs_s", "update_s", "step_s", "generation_tokens_per_s",
                    "training_tokens_per_s", "decode_step_s", "prompt_tokens", "wall_s"):
            assert positive(r[key]), (mode, key, r[key])
        # The phases are parts of the step; beta 0.001 means a reference forward pass (logprobs_s > 0).
        assert r["generation_s"] + r["logprobs_s"] + r["rewards_s"] + r["update_s"] == pytest.approx(r["step_s"])
        sequences = settings["prompts"] * settings["generations"]
        assert 0 < r["completion_tokens"] <= sequences * settings["completion_tokens"]
        assert r["peak_memory_gb"] is None and r["mfu_update"] is None and r["mfu_step"] is None  # no GPU
        assert r["reward_mean"] is not None and r["val_score"] is not None  # metrics and validation ran
    assert runs["full"]["dtype"] == "float32"  # fp32 master weights for full fine-tuning
    assert runs["lora"]["dtype"] in ("bfloat16", "float32")  # bf16 base where the CPU has native bf16


def test_tiny_evaluate_and_extrapolation(tiny_report):
    report, stdout = tiny_report
    [evaluation] = report["evaluate"]
    assert evaluation["batch"] == report["settings"]["eval_batch"]
    assert positive(evaluation["tokens_per_s"]) and positive(evaluation["seconds"])
    assert 0 < evaluation["generated_tokens"] <= evaluation["batch"] * evaluation["max_new_tokens"]
    rows = report["extrapolation"]["rows"]
    assert [(r["recipe"], r["setup"].split(" ")[0]) for r in rows] == [
        (f"qwen2.5-{size}-instruct", setup) for size in ("1.5b", "3b", "7b") for setup in ("TRL", "verl")]
    for r in rows:
        assert r["source"] == "assumed"  # no GPU: nothing measured replaces the assumptions
        assert positive(r["step_s"]) and r["hours"] == pytest.approx(r["step_s"] * 1500 / 3600)
    assumptions = "\n".join(report["extrapolation"]["assumptions"])
    assert "vLLM decode speed-up over HF generate" in assumptions and "DP efficiency" in assumptions
    assert "MFU upd" in stdout and "extrapolated: 1,500 steps" in stdout and "assumptions:" in stdout


def test_shapes_have_the_published_sizes():
    # Qwen2.5 model cards: 0.49B, 1.54B, 3.09B, 7.61B parameters.
    published = {"0.5b": 0.49e9, "1.5b": 1.54e9, "3b": 3.09e9, "7b": 7.61e9}
    for size, count in published.items():
        assert shapes.parameter_count(shapes.QWEN25[size]) == pytest.approx(count, rel=0.01)  # rounded
    assert shapes.matmul_parameters(shapes.QWEN25["7b"]) < shapes.parameter_count(shapes.QWEN25["7b"])


def test_parameter_count_matches_a_real_model(qwen_tokenizer_dir):
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    for shape in (shapes.TINY, shapes.dataclasses.replace(shapes.TINY, tie_word_embeddings=False)):
        model = Qwen2ForCausalLM(shapes.qwen2_config(shape, tokenizer))
        assert model.num_parameters() == shapes.parameter_count(shape)


def test_gpu_names_map_to_their_peaks():
    assert shapes.gpu_spec("NVIDIA H100 80GB HBM3").bf16_flops == 989e12
    assert shapes.gpu_spec("NVIDIA H200").name == "H200"
    assert shapes.gpu_spec("NVIDIA H100 PCIe").bf16_flops == 756e12
    assert shapes.gpu_spec("NVIDIA A100-SXM4-80GB").bf16_flops == 312e12
    assert shapes.gpu_spec("Tesla T4") is None


def test_cost_model_scales_and_docs_show_its_table():
    trl = shapes.SETUPS["trl"]
    small = shapes.step_seconds(shapes.QWEN25["1.5b"], trl)
    large = shapes.step_seconds(shapes.QWEN25["7b"], trl)
    assert large["update_s"] > 4 * small["update_s"] and large["step_s"] > small["step_s"]
    halved = shapes.step_seconds(shapes.QWEN25["7b"], trl, train_mfu=trl.train_mfu / 2)
    assert halved["update_s"] == pytest.approx(2 * large["update_s"])
    measured = shapes.step_seconds(shapes.QWEN25["7b"], trl, decode_step_s=0.02)
    assert measured["generation_s"] > 1024 * 0.02
    assert (ROOT / "docs" / "train.md").read_text().count(shapes.format_cost_table()) == 1
