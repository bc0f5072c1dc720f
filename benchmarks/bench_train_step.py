"""Time GRPO steps of the demo recipe through `diagnosis-zero train` against a plain TRL script.

Both run in their own process with identical settings (the demo recipe's GRPOConfig, model, LoRA,
data and reward functions); the plain script is TRL's GRPOTrainer with nothing of ours around it:
no metrics.jsonl, no completion samples, no health checks, no Ctrl-C handling. Validation is off
in both (it is extra work, not per-step overhead). Rounds alternate the two so that machine load
hits both alike, and the best round counts. Prints seconds per step, tokens per second and the
overhead ratio (target <= 1.05). A third run, TRL as is, shows what `train`'s one CPU fix to TRL (the
fused LM head scoring only completion rows, as on CUDA) is worth.

    python benchmarks/bench_train_step.py [--steps 6] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# The demo recipe minus validation and checkpoints; the same overrides feed both runs.
OVERRIDES = {"validation_steps": "0", "report_to": "none", "save_steps": "100000"}


def ours(out: Path, steps: int) -> list[tuple[int, float, float]]:
    """Run `diagnosis-zero train`; return (step, seconds since start, tokens seen) per logged step."""
    argv = [sys.executable, "-m", "diagnosis_zero", "train", "--output-dir", str(out), "--max-steps", str(steps)]
    for name, value in OVERRIDES.items():
        argv += [f"--{name.replace('_', '-')}", value]
    proc = subprocess.run(argv, env=ENV, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"diagnosis-zero train failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["time"], r["num_tokens"]) for r in rows if r["step"] >= 1]


def baseline(out: Path, steps: int, fixed_head: bool = True) -> list[tuple[int, float, float]]:
    argv = [sys.executable, __file__, "--plain", str(out), "--steps", str(steps)]
    proc = subprocess.run(argv + ([] if fixed_head else ["--trl-as-is"]), env=ENV, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"plain TRL script failed:\n{proc.stderr[-3000:]}")
    return [tuple(row) for row in json.loads((out / "times.json").read_text())]


def plain_trl(out: Path, steps: int, fixed_head: bool) -> None:
    """The baseline: TRL's GRPOTrainer with the demo's settings, and nothing else (with `fixed_head`,
    plus the CPU LM-head fix that `train` applies, so that the ratio measures only our layer)."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from diagnosis_zero import models, reward, train, train_cpu

    # Only to read the same settings: the demo recipe's GRPOConfig values, model and data.
    plan = train.plan_run(None, {**OVERRIDES, "output_dir": str(out), "max_steps": str(steps)})
    recipe = plan.recipe
    model_path = models.resolve_model(recipe.model)
    tokenizer = models.load_tokenizer(model_path)
    rows = train.load_split(train.prepared_data_dir(recipe), "train", tokenizer, recipe)
    funcs, weights = reward.make_trl_reward_funcs(plan.reward_config)
    prefix = recipe.assistant_prefix

    def with_prefix(func):
        def scored(prompts=None, completions=(), **columns):
            return func(prompts=prompts, completions=[prefix + c for c in completions], **columns)

        scored.__name__ = func.__name__
        return scored

    args = plan.args  # the GRPOConfig that `diagnosis-zero train` builds from the recipe, as is
    assert isinstance(args, GRPOConfig)
    args.reward_weights = weights
    args.model_init_kwargs = {"dtype": train._dtype(recipe, args, plan.device, __import__("torch")),
                              **(args.model_init_kwargs or {})}
    if fixed_head:  # the one TRL setting `train` changes on a CPU: score only completion rows
        train_cpu.score_completions_only()
    started = time.monotonic()
    times = []

    class Clock(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "num_tokens" in logs:
                times.append((state.global_step, time.monotonic() - started, logs["num_tokens"]))

    trainer = GRPOTrainer(
        model=model_path, reward_funcs=[with_prefix(f) for f in funcs], args=args,
        train_dataset=Dataset.from_list(rows), processing_class=tokenizer, callbacks=[Clock()],
        peft_config=LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
                               target_modules="all-linear", task_type="CAUSAL_LM"))
    started = time.monotonic()
    trainer.train()
    (out / "times.json").write_text(json.dumps(times))


def per_step(times: list[tuple[int, float, float]]) -> tuple[float, float]:
    """Median seconds per step and tokens per second, leaving out the first step (warm-up)."""
    durations = [b[1] - a[1] for a, b in zip(times, times[1:], strict=False)]
    tokens = [b[2] - a[2] for a, b in zip(times, times[1:], strict=False)]
    seconds = statistics.median(durations)
    return seconds, sum(tokens) / sum(durations)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--plain", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--trl-as-is", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        plain_trl(Path(args.plain), args.steps, fixed_head=not args.trl_as_is)
        return 0
    runners = {"diagnosis-zero train": ours, "plain TRL GRPOTrainer": baseline,
               "TRL, CPU LM head as is": lambda out, steps: baseline(out, steps, fixed_head=False)}
    results: dict[str, list] = {name: [] for name in runners}
    tokens_seen: dict[str, list] = {name: [] for name in results}
    with tempfile.TemporaryDirectory() as tmp:
        for round_no in range(args.rounds):
            for index, (name, runner) in enumerate(runners.items()):
                out = Path(tmp) / f"run{index}-{round_no}"
                times = runner(out, args.steps)
                seconds, tokens_per_s = per_step(times)
                results[name].append((seconds, tokens_per_s))
                tokens_seen[name].append([tokens for _, _, tokens in times])
                print(f"round {round_no + 1} {name:24} {seconds:6.2f} s/step  {tokens_per_s:7.1f} tokens/s",
                      flush=True)
    same = all(len({json.dumps(seen[r]) for seen in tokens_seen.values()}) == 1 for r in range(args.rounds))
    # Best of the rounds: on a shared machine, load only ever adds time.
    summary = {name: min(runs) for name, runs in results.items()}
    print(f"\ndemo recipe, {args.steps} steps, best of {args.rounds} rounds (median s/step over steps 2..N):")
    for name, (seconds, tokens_per_s) in summary.items():
        print(f"  {name:24} {seconds:6.2f} s/step  {tokens_per_s:7.1f} tokens/s")
    ratio = summary["diagnosis-zero train"][0] / summary["plain TRL GRPOTrainer"][0]
    print(f"  overhead ratio (ours / plain TRL): {ratio:.3f}  (target <= 1.05)")
    speedup = summary["TRL, CPU LM head as is"][0] / summary["diagnosis-zero train"][0]
    print(f"  speed-up of the CPU LM-head fix (TRL as is / ours): {speedup:.2f}x")
    # Same seed, data order and settings: every run should sample the very same completions.
    print(f"  identical token counts per step in all: {'yes' if same else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
