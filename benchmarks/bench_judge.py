"""Judge throughput: 2,000 cases against a local OpenAI-compatible judge answering in 50 ms.

Runs the fake judge (tests/judge_server.py) in its own process on 127.0.0.1, then, with the chosen
protocol (default `rarearena`: one RareArena request per case; `item`: one per diagnosis):
1. concurrency 1 on a small sample: the baseline, extrapolated to 2,000 cases;
2. concurrency 32 on 2,000 distinct cases, cold cache (target: >= 200 cases/s);
3. the same 2,000 cases again, every answer from the SQLite cache (target: < 2 s).
Prints cases/s for each and the ratios against the baseline.

    .venv/bin/python benchmarks/bench_judge.py [--items 2000] [--concurrency 32] [--latency 0.05] [--protocol item]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from diagnosis_zero.judge import JudgeConfig, judge_file

ROOT = Path(__file__).resolve().parents[1]


def write_cases(path: Path, count: int, offset: int = 0) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(offset, offset + count):
            name = f"Hereditary disease number {i}"
            fh.write(json.dumps({"id": f"case-{i}", "sample": 0, "prediction": name,
                                 "completion": f"<think>...</think><answer>{name}</answer>",
                                 "references": [f"Reference disease {i % 97}"], "orpha_id": str(i)}) + "\n")
    return path


def timed_judge(work: Path, name: str, cases: Path, base_url: str, concurrency: int, cache: Path, protocol: str):
    orphanet = [str(ROOT / ".." / "shared" / "data" / "orphanet_hypernym.json")] if protocol != "rarearena" else None
    config = JudgeConfig(input=str(cases), output=str(work / f"{name}.judged.jsonl"), judge_model="fake-judge",
                         base_url=base_url, protocol=protocol, concurrency=concurrency, cache=str(cache),
                         orphanet=orphanet)
    start = time.perf_counter()
    stats = judge_file(config)
    return time.perf_counter() - start, stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the judge takes per answer")
    parser.add_argument("--baseline-items", type=int, default=40, help="cases judged at concurrency 1")
    parser.add_argument("--protocol", default="rarearena", choices=("rarearena", "rarearena-updated", "item"))
    args = parser.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-not-a-real-key")
    os.environ.setdefault("TQDM_DISABLE", "1")

    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "judge_server.py"), "--latency", str(args.latency)],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline().split()[1])
        base_url = f"http://127.0.0.1:{port}/v1"
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            cases = write_cases(work / "cases.jsonl", args.items)
            baseline_cases = write_cases(work / "baseline.jsonl", args.baseline_items, offset=10 * args.items)
            t1, s1 = timed_judge(work, "baseline", baseline_cases, base_url, 1, work / "baseline.sqlite", args.protocol)
            cold, s_cold = timed_judge(work, "cold", cases, base_url, args.concurrency, work / "cache.sqlite",
                                       args.protocol)
            warm, s_warm = timed_judge(work, "warm", cases, base_url, args.concurrency, work / "cache.sqlite",
                                       args.protocol)
    finally:
        server.terminate()
        server.wait()

    assert s1.sent == args.baseline_items and s_cold.sent == args.items, "every cold item must reach the judge"
    assert s_warm.sent == 0 and s_warm.cached == args.items, "the second run must come from the cache"
    assert s_cold.errors == s_warm.errors == 0
    rate1 = args.baseline_items / t1
    rate_cold, rate_warm = args.items / cold, args.items / warm
    print(f"judge latency {1000 * args.latency:.0f} ms, {args.items} cases, protocol {args.protocol}")
    print(f"baseline  concurrency 1:  {rate1:8.1f} cases/s  ({args.baseline_items} cases in {t1:.2f} s; "
          f"{args.items} extrapolated: {args.items / rate1:.1f} s)")
    print(f"cold      concurrency {args.concurrency}: {rate_cold:8.1f} cases/s  ({cold:.2f} s)   target >= 200 cases/s")
    print(f"cached    second run:     {rate_warm:8.1f} cases/s  ({warm:.2f} s)   target < 2 s")
    print(f"ratio cold / concurrency-1: {rate_cold / rate1:.1f}x")
    print(f"ratio cached / cold:        {rate_warm / rate_cold:.1f}x")
    ok = rate_cold >= 200 and warm < 2.0
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
