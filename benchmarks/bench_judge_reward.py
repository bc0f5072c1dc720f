"""Judge reward speed: GRPO steps of 8 prompts x 16 completions against a local judge at 50 and 500 ms.

Runs the fake judge (tests/judge_server.py) in its own process on 127.0.0.1 and scores one epoch of
steps with `JudgeReward` (concurrency 32, a fresh SQLite cache), then the same steps again: the
second epoch. The completions repeat as GRPO groups do: per prompt, a few distinct answers drawn
with skewed frequencies, some correct (the rules match them), some malformed or lists (no call), the
rest wrong names, Orphanet parents and synonyms (the judge). For each latency it prints seconds per
step, judge calls per step after the prefilter and de-duplication, the second epoch's cache hit rate
and seconds per step, and the ratios against the targets (<= 0.5 s at 50 ms, <= 3 s at 500 ms,
<= 0.1 s from the cache; a ratio <= 1 meets the target), then one step against a judge that is down
and one against a judge that never answers, against the step deadline. The baseline measured in the same run is the
rule reward alone on the same steps, and the floor is ceil(calls / concurrency) x latency.

    .venv/bin/python benchmarks/bench_judge_reward.py [--steps 4] [--concurrency 32] [--latencies 0.05 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from diagnosis_zero import reward
from diagnosis_zero.judge_reward import JudgeReward, JudgeRewardConfig

ROOT = Path(__file__).resolve().parents[1]
HIERARCHY = ROOT / ".." / "shared" / "data" / "orphanet_hypernym.json"
TARGETS = {0.05: 0.5, 0.5: 3.0}  # latency -> seconds per step
CACHED_TARGET = 0.1
PROMPTS, GENERATIONS = 8, 16


def completion(answer: str) -> str:
    return f"<think>The findings point to one disease.</think>\n<answer>{answer}</answer>"


def make_steps(steps: int, seed: int = 0) -> list[tuple[list[str], list[dict]]]:
    """Return `steps` batches of (completions, ground truths): 8 cases x 16 completions each."""
    rng = random.Random(seed)
    hierarchy = reward.load_hierarchy(HIERARCHY) if HIERARCHY.is_file() else None
    if hierarchy is not None:
        codes = [code for code, entity in hierarchy.entities.items() if hierarchy.parents(code)]
    else:
        codes = [str(i) for i in range(1000)]
    rng.shuffle(codes)
    batches = []
    for step in range(steps):
        completions, truths = [], []
        for prompt in range(PROMPTS):
            code = codes[step * PROMPTS + prompt]
            name = hierarchy.name(code) if hierarchy else f"Reference disease {code}"
            parents = hierarchy.parents(code) if hierarchy else []
            pool = [  # (answer, weight): what a policy's 16 samples for one case look like
                (completion(name), 5),  # the rules match it
                (completion(f"Wrong disease {rng.randrange(40)} syndrome"), 4),
                (completion(f"Other disease {rng.randrange(40)}"), 2),
                (completion(parents[0] if parents else f"Broad group {code}"), 2),
                (completion(f"{name} (eponym {code})"), 1),
                ("no tags: " + name, 1),  # malformed: no call
                (completion(f"{name}; Wrong disease 1 syndrome"), 1),  # two diagnoses: no call
            ]
            answers, weights = zip(*pool, strict=True)
            completions += rng.choices(answers, weights=weights, k=GENERATIONS)
            truths += [{"ground_truth": {"diagnosis": [name], "orpha_id": code}}] * GENERATIONS
        batches.append((completions, truths))
    return batches


async def run_epochs(judge: JudgeReward, batches) -> list[list[tuple[float, float, object]]]:
    """Return, per epoch (2), per step: (wall seconds, CPU seconds of this process, StepStats)."""
    epochs = []
    for _ in range(2):
        steps = []
        for completions, truths in batches:
            start, cpu = time.perf_counter(), time.process_time()
            _, stats = await judge.score(completions, truths)
            steps.append((time.perf_counter() - start, time.process_time() - cpu, stats))
        epochs.append(steps)
    return epochs


def rule_only_seconds(batches) -> float:
    """Return the median seconds per step of the rule reward alone (fresh batches: no batch cache)."""
    times = []
    for completions, truths in batches:
        start = time.perf_counter()
        reward.score_batch([c + " " for c in completions], reward.PRESETS["clinical"], reward_model=truths)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(latency: float, args, batches) -> dict:
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "judge_server.py"), "--latency", str(latency)],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline().split()[1])
        with tempfile.TemporaryDirectory() as tmp:
            config = JudgeRewardConfig(base_url=f"http://127.0.0.1:{port}/v1", judge_model="fake-judge",
                                       cache=str(Path(tmp) / "cache.sqlite"), concurrency=args.concurrency,
                                       orphanet=str(HIERARCHY) if HIERARCHY.is_file() else None)
            judge = JudgeReward(config)
            warm = make_steps(1, seed=999)  # client, connections and SQLite opened outside the measurement

            async def measure():
                await run_epochs(judge, warm)
                return await run_epochs(judge, batches)

            first, second = asyncio.run(measure())
    finally:
        server.terminate()
        server.wait()
    calls = [stats.calls for _, _, stats in first]
    return {
        "latency": latency,
        "step_s": statistics.median(t for t, _, _ in first),
        "cpu_s": statistics.median(c for _, c, _ in first),
        "calls": statistics.mean(calls),
        "routed": statistics.mean(stats.routed for _, _, stats in first),
        "fallbacks": sum(stats.fallbacks for _, _, stats in first + second),
        "floor_s": statistics.mean(math.ceil(c / args.concurrency) * latency for c in calls),
        "cached_step_s": statistics.median(t for t, _, _ in second),
        "p50": statistics.median(s.metrics().get("judge_latency_p50", 0.0) for _, _, s in first),
        "p95": statistics.median(s.metrics().get("judge_latency_p95", 0.0) for _, _, s in first),
        "hit_rate": sum(s.cache_hits for _, _, s in second) / max(1, sum(s.pairs for _, _, s in second)),
    }


def bench_faults(args, batch) -> None:
    """Print how long a step takes when the judge is down or hangs, against its deadline."""
    hanging = subprocess.Popen([sys.executable, str(ROOT / "tests" / "judge_server.py"), "--latency", "600"],
                               stdout=subprocess.PIPE, text=True)
    try:
        hanging_url = f"http://127.0.0.1:{int(hanging.stdout.readline().split()[1])}/v1"
        with tempfile.TemporaryDirectory() as tmp:
            for what, url in (("down (connection refused)", "http://127.0.0.1:9/v1"), ("hanging", hanging_url)):
                config = JudgeRewardConfig(base_url=url, judge_model="fake-judge", deadline=args.deadline,
                                           cache=str(Path(tmp) / f"{len(what)}.sqlite"), concurrency=args.concurrency)
                judge = JudgeReward(config)
                start = time.perf_counter()
                _, stats = asyncio.run(judge.score(*batch))
                seconds = time.perf_counter() - start
                print(f"judge {what}: step of {len(batch[0])} completions in {seconds:.2f} s, "
                      f"fallback rate {stats.metrics()['judge_fallback_rate']:.2f}; "
                      f"ratio to the {args.deadline} s deadline: {seconds / args.deadline:.2f}")
    finally:
        hanging.kill()
        hanging.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="steps per epoch")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latencies", type=float, nargs="+", default=[0.05, 0.5])
    parser.add_argument("--deadline", type=float, default=2.0, help="step deadline for the down/hanging judge")
    args = parser.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-not-a-real-key")
    batches = make_steps(args.steps)
    rule_s = rule_only_seconds(batches)
    print(f"{args.steps} steps of {PROMPTS} prompts x {GENERATIONS} completions, concurrency {args.concurrency}; "
          f"rule reward alone: {rule_s * 1000:.1f} ms/step (baseline)")
    for latency in args.latencies:
        row = bench(latency, args, batches)
        target = TARGETS.get(latency)
        print(f"judge at {latency * 1000:.0f} ms: {row['step_s']:.3f} s/step "
              f"({row['routed']:.0f} of {PROMPTS * GENERATIONS} completions to the judge, "
              f"{row['calls']:.1f} calls/step after de-duplication; floor {row['floor_s']:.3f} s, "
              f"{row['step_s'] / rule_s:.0f}x the rule reward)"
              + (f"; ratio to the {target} s target: {row['step_s'] / target:.2f}" if target else ""))
        print(f"  CPU in this process: {row['cpu_s']:.3f} s/step; judge latency p50 {row['p50']:.3f} s, "
              f"p95 {row['p95']:.3f} s (request sent to verdict, queueing included)")
        print(f"  second epoch: cache hit rate {row['hit_rate']:.2f}, {row['cached_step_s'] * 1000:.1f} ms/step; "
              f"ratio to the {CACHED_TARGET} s target: {row['cached_step_s'] / CACHED_TARGET:.2f}; "
              f"fallbacks: {row['fallbacks']}")
    bench_faults(args, batches[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
