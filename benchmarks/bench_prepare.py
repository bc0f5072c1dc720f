"""Time `diagnosis-zero prepare` on a RareArena-sized synthetic file, with and without the token filter.

RareArena has 72,661 cases (RDS 49,760 without test results + RDC 22,901 with them). The synthetic
file has the same count, field names and roughly the same text lengths (case reports of about
2,000 characters, test results of about 500). Each figure is compared with a naive baseline
measured in the same run: a per-record loop (json.loads -> row dict -> pyarrow.Table.from_pylist)
and, for the filter, one `apply_chat_template(tokenize=True)` call per record, as verl's
dataset filter does. Prompts are counted by the tokenizer's own Rust batch encoder (the tiktoken
twin of the Qwen2.5 tokenizer that used to sit here was measured unnecessary for the target, and
deleted). Targets: >= 5,000 records/s without the filter, >= 1,000 with it.

    .venv/bin/python benchmarks/bench_prepare.py [--records 72661] [--baseline-records 3000]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diagnosis_zero import data, prompt_tokens  # noqa: E402

VOCABULARY = (
    "patient presented with progressive weakness fatigue fever weight loss abdominal pain history of the "
    "and a in was were on at for examination revealed mild moderate severe bilateral left right lower upper "
    "limb muscle serum level elevated decreased normal laboratory findings showed biopsy imaging magnetic "
    "resonance computed tomography lesion nodule mass enlarged liver spleen kidney heart lung brain spinal "
    "cord nerve conduction study creatine kinase hemoglobin platelet count white blood cell antibody "
    "negative positive titre mg/dL mmol/L U/L year-old man woman boy girl months weeks days admitted "
    "hospital treatment therapy responded improved worsened family consanguineous parents siblings "
    "genetic testing revealed heterozygous homozygous variant gene mutation echocardiography ejection "
    "fraction electrocardiogram rhythm sinus tachycardia hypertension diabetes seizures developmental delay"
)
WORDS = VOCABULARY.split()


def synthetic_records(n: int, seed: int = 0):
    """Yield RareArena-like records: 68.5% RDS-like (no test_results), the rest RDC-like."""
    rng = random.Random(seed)
    n_rds = round(n * 49_760 / 72_661)
    for i in range(n):
        report_words = max(20, int(rng.lognormvariate(5.8, 0.45)))  # median ~330 words ~ 2,000 chars
        record = {"_id": f"PMC{1_000_000 + i}_1", "Orpha_id": str(rng.randint(1, 5_000)),
                  "case_report": " ".join(rng.choices(WORDS, k=report_words)) + ".",
                  "diagnosis": f"Disease {rng.randint(1, 5_000)}", "Orpha_name": f"Orphanet disease {i % 4_597}",
                  "age": [[rng.randint(1, 80), "year"]], "gender": rng.choice("MF"), "pub_date": "2020-01-01"}
        if i >= n_rds:
            record["test_results"] = " ".join(rng.choices(WORDS, k=max(5, int(rng.lognormvariate(4.4, 0.5))))) + "."
        yield record


def naive_prepare(path: Path, output_dir: Path, limit: int | None, tokenizer=None, max_tokens: int = 1024) -> int:
    """The baseline: a per-record loop with row dicts, and per-record chat templating when filtering."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if limit is not None and len(rows) >= limit:
                break
            record = json.loads(line)
            case = (record["case_report"] + " " + (record.get("test_results") or "")).strip()
            prompt = [{"role": "user", "content": data.R1_ZERO_TEMPLATE.replace("{case}", case)}]
            if tokenizer is not None:
                ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                    return_dict=False)
                if len(ids) > max_tokens:
                    continue
            names = list(dict.fromkeys([record["diagnosis"], record["Orpha_name"]]))
            rows.append({"data_source": "rare_arena", "prompt": prompt, "ability": "medical",
                         "reward_model": {"style": "rule", "ground_truth": {"diagnosis": names,
                                                                          "orpha_id": str(record["Orpha_id"])}},
                         "extra_info": {"split": "train", "index": len(rows), "id": record["_id"]}})
    pq.write_table(pa.Table.from_pylist(rows), output_dir / "naive.parquet")
    return len(rows)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=72_661)
    parser.add_argument("--baseline-records", type=int, default=3_000,
                        help="records for the slow per-record tokenizer baseline (its rate is what counts)")
    parser.add_argument("--generic-records", type=int, default=20_000,
                        help="prompts for the token-counting-only figure")
    parser.add_argument("--tokenizer", default="bundled:qwen2.5-tokenizer")
    parser.add_argument("--max-prompt-tokens", type=int, default=1024)
    args = parser.parse_args()

    from diagnosis_zero.models import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = tmp / "synthetic_rarearena.jsonl"
        _, seconds = timed(lambda: source.write_text(
            "".join(json.dumps(r) + "\n" for r in synthetic_records(args.records)), encoding="utf-8"))
        size_mb = source.stat().st_size / 1e6
        print(f"synthetic file: {args.records} records, {size_mb:.0f} MB (generated in {seconds:.1f} s)")

        figures = {}
        n, seconds = timed(lambda: naive_prepare(source, tmp, None))
        figures["baseline, no filter"] = args.records / seconds
        summary, seconds = timed(lambda: data.prepare_rarearena(source, tmp / "plain", progress=False))
        figures["prepare, no filter"] = summary.records_read / seconds

        n, seconds = timed(lambda: naive_prepare(source, tmp, args.baseline_records, tokenizer,
                                                  args.max_prompt_tokens))
        figures["baseline, token filter"] = args.baseline_records / seconds
        summary, seconds = timed(lambda: data.prepare_rarearena(
            source, tmp / "filtered", max_prompt_tokens=args.max_prompt_tokens, tokenizer=tokenizer,
            progress=False))
        figures["prepare, token filter"] = summary.records_read / seconds

        records = itertools.islice(synthetic_records(args.records), args.generic_records)
        texts = [data.case_text(record) for record in records]
        prompts = [data.R1_ZERO_TEMPLATE.replace("{case}", text) for text in texts]
        _, seconds = timed(lambda: prompt_tokens.prompt_token_counts(prompts, tokenizer))
        counting = len(prompts) / seconds

    print(f"token filter: dropped {summary.dropped['too_long']} of {summary.records_read} prompts "
          f"over {args.max_prompt_tokens} tokens ({args.tokenizer})")
    for name, rate in figures.items():
        print(f"{name:<24} {rate:>10,.0f} records/s")
    print(f"token counting alone: {counting:,.0f} prompts/s ({len(prompts)} prompts, the tokenizer's Rust batch "
          f"encoder)")
    plain = figures["prepare, no filter"] / figures["baseline, no filter"]
    filtered = figures["prepare, token filter"] / figures["baseline, token filter"]
    print(f"ratio vs baseline: no filter {plain:.1f}x, token filter {filtered:.1f}x")
    ok = figures["prepare, no filter"] >= 5_000 and figures["prepare, token filter"] >= 1_000
    print(f"targets (>= 5,000 records/s without filter, >= 1,000 with): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
