"""Run the GPU code paths end to end on whatever accelerator is present, offline, and time them.

For each Qwen2.5 shape (0.5B, 1.5B and, where memory allows, 7B; `diagnosis_zero.shapes`), a model is
random-initialised from the real architecture with the bundled Qwen2.5 tokenizer, so nothing is
downloaded. Then:

- a few GRPO steps through `train.plan_run` + `train.train` (what `diagnosis-zero train` runs) with the
  Qwen recipe's settings (bf16 autocast, gradient checkpointing, 8 prompts x 16 generations, reference
  model for the KL term, validation) at reduced lengths, for full fine-tuning and LoRA: generation and
  training tokens/s, step time split into generation / reference log-probs / update, peak GPU memory, MFU;
- `evaluate`'s HF backend (`evaluate.HFGenerator`): tokens/s at batch 64, greedy;
- per recipe (1.5B/3B/7B), the time of 1,500 steps at 1024/1024 tokens on 8 such GPUs with TRL + vLLM
  colocate and with verl, from these measurements plus the stated assumptions (`shapes.step_seconds`).

Prints one table and writes the figures as JSON. Estimated at about 5 minutes on one H100/H200 (not yet
measured: no GPU was at hand when it was written); `--budget` skips the remaining runs past 420 s.

    python benchmarks/bench_gpu.py [--output bench_gpu.json] [--shapes 0.5b,1.5b,7b] [--steps 3]
    python benchmarks/bench_gpu.py --tiny      # the same code on a tiny shape on the CPU (~1-2 min idle)

Timing hooks (a pinned shim on trl==1.16.0 method names, read-only wrappers that time and count, checked at
start so a TRL upgrade fails loudly instead of reporting zeros): `GRPOTrainer._generate` (rollouts),
`GRPOTrainer._get_per_token_logps_and_entropies` outside autograd (reference / old log-probs),
`GRPOTrainer._calculate_rewards`, `GRPOTrainer.training_step` and the optimizer step (the whole step).
The update is the step minus the other three.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import gc
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from diagnosis_zero import shapes  # noqa: E402
from diagnosis_zero.io import write_text_atomic  # noqa: E402

RECIPE = "qwen2.5-1.5b-instruct"  # the three Qwen recipes differ only in the model
EXTRAPOLATED = ("1.5b", "3b", "7b")
VLLM_SPEEDUP = 4.0  # assumed vLLM (CUDA graphs, paged KV) decode speed-up over HF generate at this batch
TIMED = collections.defaultdict(lambda: collections.defaultdict(float))  # step -> phase -> seconds
COUNTS = collections.defaultdict(lambda: collections.defaultdict(int))   # step -> prompt/completion tokens
CURRENT_STEP = [0]


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(phase: str, method, *, only_without_grad: bool = False, count_tokens: bool = False):
    """Wrap `method` to add its wall time (GPU synchronised) to TIMED[step][phase]."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        import torch

        if only_without_grad and torch.is_grad_enabled():
            return method(self, *args, **kwargs)
        global_step = getattr(getattr(self, "state", None), "global_step", None)  # the optimizer has none
        step = global_step + 1 if global_step is not None else CURRENT_STEP[0]
        CURRENT_STEP[0] = step
        _sync()
        began = time.perf_counter()
        result = method(self, *args, **kwargs)
        _sync()
        TIMED[step][phase] += time.perf_counter() - began
        if count_tokens:  # _generate returns (prompt_ids, completion_ids, ...)
            COUNTS[step]["prompt"] += sum(len(ids) for ids in result[0])
            COUNTS[step]["completion"] += sum(len(ids) for ids in result[1])
        return result

    return wrapper


def install_timers() -> None:
    """Wrap TRL 1.16's GRPOTrainer methods and accelerate's optimizer step with timers (see the docstring)."""
    from accelerate.optimizer import AcceleratedOptimizer
    from trl import GRPOTrainer

    for name in ("_generate", "_get_per_token_logps_and_entropies", "_calculate_rewards", "training_step"):
        if not callable(getattr(GRPOTrainer, name, None)):
            raise SystemExit(f"trl {__import__('trl').__version__}: GRPOTrainer.{name} is gone; update the "
                             "timing shim in benchmarks/bench_gpu.py")
    GRPOTrainer._generate = _timed("generation", GRPOTrainer._generate, count_tokens=True)
    GRPOTrainer._get_per_token_logps_and_entropies = _timed(
        "logprobs", GRPOTrainer._get_per_token_logps_and_entropies, only_without_grad=True)
    GRPOTrainer._calculate_rewards = _timed("rewards", GRPOTrainer._calculate_rewards)
    GRPOTrainer.training_step = _timed("step", GRPOTrainer.training_step)
    AcceleratedOptimizer.step = _timed("step", AcceleratedOptimizer.step)


# ---------------------------------------------------------------- models and data

def save_random_model(shape: shapes.QwenShape, out: Path, device: str) -> Path:
    """Save a random-init bf16 Qwen2 of `shape` with the bundled Qwen2.5 tokenizer to `out`."""
    import torch
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    from diagnosis_zero import models

    tokenizer = AutoTokenizer.from_pretrained(models.bundled_tokenizer_dir("qwen2.5-tokenizer"))
    config = shapes.qwen2_config(shape, tokenizer)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):  # initialising 7B parameters on the CPU takes minutes
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    stop = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    model.generation_config.eos_token_id = stop  # as the real Instruct models' generation_config
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    del model
    _free()
    return out


def prepare_data(out: Path, template: str) -> Path:
    """Write 200 HPO demo cases with `template` (the original study's prompt: r1-zero) to `out`."""
    from diagnosis_zero import data

    data.prepare_hpo(out, num_cases=200, seed=0, template=template, progress=False)
    return out


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _peak_memory_gb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None


def fits(shape: shapes.QwenShape, mode: str, memory_gb: float | None) -> str | None:
    """Return why `mode` cannot fit in `memory_gb`, or None: full fine-tuning holds fp32 weights,
    gradients and two AdamW moments plus an fp32 reference model (20 bytes/parameter), LoRA a bf16 base."""
    if memory_gb is None:
        return None
    per_param = 20 if mode == "full" else 2
    need = shapes.parameter_count(shape) * per_param / 1e9 * 1.15  # + activations, logits, allocator slack
    if need > memory_gb:
        return f"needs ~{need:.0f} GB (> {memory_gb:.0f} GB): use ZeRO-3 over several GPUs"
    return None


# ---------------------------------------------------------------- GRPO steps

def grpo_steps(model_dir: Path, data_dir: Path, out: Path, mode: str, settings: dict) -> dict:
    """Run `settings["steps"]` GRPO steps through `diagnosis-zero train`'s code; return the timings."""
    import torch

    from diagnosis_zero import train

    overrides = {
        "model": str(model_dir), "data": str(data_dir), "output_dir": str(out),
        "max_steps": str(settings["steps"]), "use_vllm": "false", "use_peft": "true" if mode == "lora" else "false",
        "max_completion_length": str(settings["completion_tokens"]),
        "prompts_per_step": str(settings["prompts"]), "num_generations": str(settings["generations"]),
        "per_device_train_batch_size": str(settings["micro_batch"]),  # the recipe's 8 on a GPU
        # validation at step 0 and after the last step exercises the greedy HF path; it is not timed
        "validation_steps": str(settings["steps"]), "validation_max_cases": str(settings["validation_cases"]),
        "validation_max_tokens": "16", "validation_batch_size": "8",
        "save_steps": "100000", "save_only_model": "true", "report_to": "none", "logging_steps": "1",
    }
    TIMED.clear()
    COUNTS.clear()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    plan = train.plan_run(RECIPE, overrides)
    summary = train.train(plan)
    wall = time.perf_counter() - began
    peak = _peak_memory_gb()
    _free()
    if summary["global_step"] != settings["steps"]:
        raise SystemExit(f"{model_dir.name} {mode}: {summary['global_step']} of {settings['steps']} steps ran")
    rows = [row for row in summary["rows"] if row["step"] >= 1]
    measured = [step for step in sorted(TIMED) if step > 1] or sorted(TIMED)  # step 1 warms up
    phase = {name: statistics.median(TIMED[s][name] for s in measured)
             for name in ("generation", "logprobs", "rewards", "step")}
    tokens = {name: statistics.median(COUNTS[s][name] for s in measured) for name in ("prompt", "completion")}
    update = max(phase["step"] - phase["generation"] - phase["logprobs"] - phase["rewards"], 1e-9)
    return {
        "mode": mode, "dtype": str(plan.args.model_init_kwargs["dtype"]).replace("torch.", "")
        if plan.args.model_init_kwargs else None, "bf16": plan.args.bf16,
        "gradient_checkpointing": plan.args.gradient_checkpointing, "steps": settings["steps"],
        "steps_measured": measured, "wall_s": wall,
        "generation_s": phase["generation"], "logprobs_s": phase["logprobs"], "rewards_s": phase["rewards"],
        "update_s": update, "step_s": phase["step"],
        "prompt_tokens": tokens["prompt"], "completion_tokens": tokens["completion"],
        "generation_tokens_per_s": tokens["completion"] / phase["generation"],
        "training_tokens_per_s": (tokens["prompt"] + tokens["completion"]) / update,
        "decode_step_s": phase["generation"] / settings["completion_tokens"],
        "peak_memory_gb": peak, "reward_mean": rows[-1].get("reward_mean"), "loss": rows[-1].get("loss"),
        "val_score": next((row["val_score"] for row in reversed(summary["rows"]) if "val_score" in row), None),
    }


def add_mfu(result: dict, shape: shapes.QwenShape, gpu: shapes.GpuSpec | None) -> None:
    """Add model-FLOPs utilisation: update = 6N x tokens / time; step = all passes / step time."""
    result["mfu_update"] = result["mfu_step"] = None
    if gpu is None:
        return
    n = shapes.matmul_parameters(shape)
    tokens = result["prompt_tokens"] + result["completion_tokens"]
    result["mfu_update"] = 6 * n * tokens / result["update_s"] / gpu.bf16_flops
    forwards = 2 * n * (result["completion_tokens"] + (tokens if result["logprobs_s"] > 0 else 0))
    result["mfu_step"] = (6 * n * tokens + forwards) / result["step_s"] / gpu.bf16_flops


def evaluate_speed(model_dir: Path, data_dir: Path, settings: dict) -> dict:
    """Time `evaluate`'s HF backend on `batch` prompts, greedy: tokens/s."""
    from diagnosis_zero import data, evaluate

    batch = settings["eval_batch"]
    prompts = [case["prompt"] for case in data.load_cases(data_dir / "train.parquet")][:batch]
    config = evaluate.GenerationConfig(backend="hf", batch_size=batch, max_new_tokens=settings["completion_tokens"])
    generator = evaluate.HFGenerator(str(model_dir), config)
    try:
        config.max_new_tokens = 2
        generator.generate(prompts[:2])  # warm-up: kernels, allocator
        config.max_new_tokens = settings["completion_tokens"]
        _sync()
        began = time.perf_counter()
        completions = generator.generate(prompts)
        _sync()
        seconds = time.perf_counter() - began
    finally:
        generator.close()
        _free()
    generated = sum(length for samples in completions for _, length in samples)
    return {"batch": len(prompts), "max_new_tokens": settings["completion_tokens"], "seconds": seconds,
            "generated_tokens": generated, "tokens_per_s": generated / seconds}


# ---------------------------------------------------------------- extrapolation

def extrapolate(train_results: list[dict], gpu: shapes.GpuSpec | None) -> list[dict]:
    """Return per recipe and setup the seconds per step and hours for 1,500 steps at 1024/1024 on 8 GPUs.

    Measured figures replace assumptions where this run has them: the decode step time (HF generate at
    batch 8x16, divided by VLLM_SPEEDUP) and the full fine-tuning update MFU of the same shape (or of the
    largest measured shape). Without a known GPU the setups' assumed figures are used as they are.
    """
    import dataclasses

    full = {r["shape"]: r for r in train_results if r.get("status") == "ok" and r["mode"] == "full"}
    any_mode = {r["shape"]: r for r in train_results if r.get("status") == "ok"}
    rows = []
    for size in EXTRAPOLATED:
        shape = shapes.QWEN25[size]
        for key in ("trl", "verl"):
            setup = shapes.SETUPS[key]
            kwargs, source = {}, "assumed"
            if gpu is not None:
                setup = dataclasses.replace(setup, gpu=next(k for k, v in shapes.GPUS.items() if v is gpu))
                mfu_from = full.get(size) or (max(full.values(), key=lambda r: r["parameters"]) if full else None)
                if mfu_from is not None and mfu_from.get("mfu_update"):
                    kwargs["train_mfu"] = mfu_from["mfu_update"]
                    source = f"MFU measured on {mfu_from['shape']}"
                if size in any_mode:
                    kwargs["decode_step_s"] = any_mode[size]["decode_step_s"] / VLLM_SPEEDUP
                    source += f", decode measured on {size} / {VLLM_SPEEDUP:g}"
            cost = shapes.step_seconds(shape, setup, **kwargs)
            rows.append({"recipe": f"qwen2.5-{size}-instruct", "setup": setup.name.replace("H100", setup.gpu)
                         if gpu is not None else setup.name, "source": source, **cost})
    return rows


# ---------------------------------------------------------------- main

def run(args) -> dict:
    import torch

    from diagnosis_zero import models

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.tiny:
        raise SystemExit("no CUDA device: run with --tiny (the same code on a tiny shape on the CPU)")
    gpu_name = torch.cuda.get_device_name() if device == "cuda" else None
    gpu = shapes.gpu_spec(gpu_name) if gpu_name else None
    memory_gb = torch.cuda.get_device_properties(0).total_memory / 1e9 if device == "cuda" else None
    if args.tiny:
        # A 152k vocabulary makes even a tiny model's logits the cost on a CPU: few, short sequences.
        targets = {"tiny": shapes.TINY}
        settings = {"steps": 2, "prompts": 2, "generations": 2, "completion_tokens": 8, "eval_batch": 8, "micro_batch": 4,
                    "validation_cases": 2, "template": "{case}\nWhat is the diagnosis?"}
    else:
        targets = {size: shapes.QWEN25[size] for size in args.shapes.split(",")}
        settings = {"steps": args.steps, "prompts": 8, "generations": 16, "validation_cases": 8, "micro_batch": 8,
                    "completion_tokens": args.completion_tokens, "eval_batch": 64, "template": "r1-zero"}
    models.bundled_tokenizer_dir("qwen2.5-tokenizer")
    install_timers()
    started = time.perf_counter()
    report = {"device": {"type": device, "name": gpu_name or "cpu", "memory_gb": memory_gb,
                         "bf16_peak_tflops": gpu.bf16_flops / 1e12 if gpu else None},
              "versions": _versions(), "recipe": RECIPE, "settings": settings, "train": [], "evaluate": []}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        work = Path(tmp)
        data_dir = prepare_data(work / "data", settings["template"])
        for size, shape in targets.items():
            spent = time.perf_counter() - started > args.budget
            model_dir = None if spent else save_random_model(shape, work / f"model-{size}", device)
            for mode in args.modes.split(","):
                entry = {"shape": size, "model": shape.name, "parameters": shapes.parameter_count(shape),
                         "mode": mode}
                reason = fits(shape, mode, memory_gb)
                if reason is None and (spent or time.perf_counter() - started > args.budget):
                    reason = f"time budget of {args.budget:.0f} s spent"
                if reason:
                    report["train"].append({**entry, "status": "skipped", "reason": reason})
                    continue
                logging.getLogger(__name__).info("GRPO: %s %s", size, mode)
                result = grpo_steps(model_dir, data_dir, work / f"run-{size}-{mode}", mode, settings)
                add_mfu(result, shape, gpu)
                report["train"].append({**entry, "status": "ok", **result})
            if model_dir is None:
                continue
            report["evaluate"].append({"shape": size, **evaluate_speed(model_dir, data_dir, settings)})
            for path in sorted(model_dir.iterdir()):  # 15 GB for 7B: free the disk before the next shape
                path.unlink()
    report["extrapolation"] = {"assumptions": [*shapes.describe_assumptions(),
                                               f"vLLM decode speed-up over HF generate: {VLLM_SPEEDUP:g}x"],
                               "rows": extrapolate(report["train"], gpu)}
    report["elapsed_s"] = time.perf_counter() - started
    return report


def _versions() -> dict:
    import importlib.metadata

    return {name: importlib.metadata.version(name) for name in ("torch", "transformers", "trl", "peft", "accelerate")}


def _num(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_report(report: dict) -> str:
    """Return the summary table: one line per GRPO run, per evaluate run, per extrapolated recipe."""
    device = report["device"]
    lines = [f"device: {device['name']}" + (f", {device['memory_gb']:.0f} GB, bf16 peak "
                                            f"{_num(device['bf16_peak_tflops'], '.0f')} TFLOP/s"
                                            if device["memory_gb"] else ""),
             f"GRPO ({report['recipe']}: {report['settings']['prompts']} prompts x "
             f"{report['settings']['generations']} generations, {report['settings']['completion_tokens']} new tokens)",
             f"  {'shape':6} {'mode':5} {'step s':>7} {'gen s':>7} {'logp s':>7} {'upd s':>7} {'gen tok/s':>10} "
             f"{'train tok/s':>11} {'peak GB':>8} {'MFU upd':>8} {'MFU step':>8}"]
    for r in report["train"]:
        if r["status"] != "ok":
            lines.append(f"  {r['shape']:6} {r['mode']:5} skipped: {r['reason']}")
            continue
        lines.append(f"  {r['shape']:6} {r['mode']:5} {r['step_s']:7.2f} {r['generation_s']:7.2f} "
                     f"{r['logprobs_s']:7.2f} {r['update_s']:7.2f} {r['generation_tokens_per_s']:10.0f} "
                     f"{r['training_tokens_per_s']:11.0f} {_num(r['peak_memory_gb'], '8.1f'):>8} "
                     f"{_num(r['mfu_update'], '8.3f'):>8} {_num(r['mfu_step'], '8.3f'):>8}")
    lines.append("evaluate, HF backend, greedy")
    for r in report["evaluate"]:
        lines.append(f"  {r['shape']:6} batch {r['batch']}, {r['max_new_tokens']} new tokens: "
                     f"{r['tokens_per_s']:.0f} tokens/s ({r['seconds']:.1f} s)")
    lines.append("extrapolated: 1,500 steps, 8 prompts x 16 generations, 1024/1024 tokens, 8 GPUs")
    for r in report["extrapolation"]["rows"]:
        lines.append(f"  {r['recipe']:22} {r['setup']:34} {r['step_s']:6.1f} s/step {r['hours']:6.1f} h  "
                     f"({r['source']})")
    lines.append("assumptions:")
    lines += [f"  {line}" for line in report["extrapolation"]["assumptions"]]
    lines.append(f"elapsed: {report['elapsed_s']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny shape on the CPU (or GPU): the suite's check")
    parser.add_argument("--shapes", default="0.5b,1.5b,7b", help="Qwen2.5 sizes (0.5b, 1.5b, 3b, 7b)")
    parser.add_argument("--modes", default="full,lora", help="full and/or lora")
    parser.add_argument("--steps", type=int, default=3, help="GRPO steps per run (the first is warm-up)")
    parser.add_argument("--completion-tokens", type=int, default=256, help="new tokens per completion")
    parser.add_argument("--budget", type=float, default=420, help="skip the remaining GRPO runs after N s")
    parser.add_argument("--output", default="bench_gpu.json", help="JSON file of the figures")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with contextlib.redirect_stdout(sys.stderr):  # train's own summaries; the table is ours
        report = run(args)
    report["max_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    write_text_atomic(args.output, json.dumps(report, indent=1) + "\n")
    print(format_report(report))
    print(f"figures: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
