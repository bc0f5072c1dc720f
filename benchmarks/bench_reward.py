"""Reward throughput: the clinical method against the seed method, on the same synthetic completions.

    python benchmarks/bench_reward.py            # 100,000 completions
    python benchmarks/bench_reward.py --n 20000  # quicker

Completions look like a GRPO batch: a <think> paragraph then an <answer>, with correct names and
their surface variants, wrong names, other subtypes, acronyms, lists, malformed tags and other
languages appended. Each method scores the same list in the same process; the script prints
completions/s for each and the ratio clinical/seed (target: >= 1.0), then the two pathological
inputs of the issue (50,000 unclosed <answer> tags, a 1 MB completion), timed, and how the time
grows with 8x the input for each adversarial pattern (linear ~8, quadratic ~64). With RareArena's
orphanet_hypernym.json (--hierarchy, default ../shared/data) it also times Orphanet partial credit.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from diagnosis_zero import reward  # noqa: E402

DISEASES = [
    "Gaucher disease type 1", "Fabry disease", "Wilson disease", "Marfan syndrome", "Behçet disease",
    "Neurofibromatosis type 1", "Neurofibromatosis type 2", "Amyotrophic lateral sclerosis",
    "Diffuse large B-cell lymphoma", "Thrombotic thrombocytopenic purpura", "Paroxysmal nocturnal hemoglobinuria",
    "Hemophagocytic lymphohistiocytosis", "Multiple endocrine neoplasia type 2A", "Multiple endocrine neoplasia type 2B",
    "Classic Hodgkin lymphoma", "Sjögren syndrome", "Guillain-Barré syndrome", "Huntington disease",
    "Niemann-Pick disease type C", "Pompe disease", "Duchenne muscular dystrophy", "Cystic fibrosis",
    "Tuberous sclerosis complex", "Familial Mediterranean fever", "Takayasu arteritis", "Kawasaki disease",
    "Erdheim-Chester disease", "Castleman disease", "IgG4-related disease", "Whipple disease",
    "Adult-onset Still disease", "Granulomatosis with polyangiitis", "Eosinophilic granulomatosis with polyangiitis",
    "Langerhans cell histiocytosis", "Autoimmune hepatitis", "Primary biliary cholangitis",
    "Primary sclerosing cholangitis", "Hereditary hemorrhagic telangiectasia", "Ehlers-Danlos syndrome type IV",
    "Osteogenesis imperfecta type III", "Acute intermittent porphyria", "Pheochromocytoma",
    "Hypokalemic periodic paralysis", "Myasthenia gravis", "Lambert-Eaton myasthenic syndrome",
    "Neuromyelitis optica", "Creutzfeldt-Jakob disease", "Progressive supranuclear palsy",
    "Multiple system atrophy", "Spinal muscular atrophy type 1", "Friedreich ataxia", "Kearns-Sayre syndrome",
    "Leber hereditary optic neuropathy", "Alport syndrome", "Goodpasture syndrome", "Bartter syndrome",
    "Gitelman syndrome", "Liddle syndrome", "Addison disease", "Cushing disease", "Acromegaly",
    "Congenital adrenal hyperplasia", "Hemophilia A", "Von Willebrand disease", "Glanzmann thrombasthenia",
    "Aplastic anemia", "Fanconi anemia", "Diamond-Blackfan anemia", "Sickle cell anemia", "Beta-thalassemia",
    "Chronic myeloid leukemia", "Acute promyelocytic leukemia", "Waldenström macroglobulinemia",
    "Mycosis fungoides", "Kaposi sarcoma", "Mesothelioma", "Pseudomyxoma peritonei",
]
VARIANTS = [
    lambda n: n,
    lambda n: n.lower(),
    lambda n: f"Diagnosis: {n}",
    lambda n: f"The most likely diagnosis is {n}.",
    lambda n: n.replace("disease", "Disease").replace("emia", "aemia"),
    lambda n: n.replace(" type 1", " type I").replace(" type 2", " type II"),
    lambda n: f"**{n}**",
]
THINK = [
    "The patient is a {age}-year-old {sex} presenting with {a} and {b}.",
    "Laboratory tests showed {c}, and imaging revealed {d}.",
    "Given the combination of {a}, {c} and {d}, a rare systemic disorder is likely.",
    "Common causes such as infection and malignancy were considered but do not explain {b}.",
    "The family history and the course over {age} months support an inherited condition.",
    "Differential diagnosis includes several storage and inflammatory disorders.",
]
FINDINGS = ["fever", "hepatosplenomegaly", "thrombocytopenia", "bone pain", "proteinuria", "ataxia", "rash",
            "elevated ferritin", "low complement", "a mass in the mediastinum", "bilateral hilar lymphadenopathy",
            "café-au-lait macules", "β2-microglobulin of 5 mg/L", "temperature of 39 °C", "ptosis", "seizures"]
ODD_TAILS = ["\n答案是这个疾病。", "\nこれは診断です。", " Por lo tanto, el diagnóstico es claro y la paciente mejoró.",
             "\n\nLet me know if you need more help."]


def synthesize(n: int, seed: int) -> list[tuple[str, dict]]:
    """Return n (completion, ground truth) pairs shaped like a GRPO batch."""
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        truth_name = rng.choice(DISEASES)
        truth = {"diagnosis": [truth_name] + ([truth_name.lower()] if rng.random() < 0.3 else []),
                 "orpha_id": str(rng.randint(1, 600000))}
        fill = {"age": rng.randint(1, 80), "sex": rng.choice(["man", "woman", "boy", "girl"]),
                "a": rng.choice(FINDINGS), "b": rng.choice(FINDINGS), "c": rng.choice(FINDINGS),
                "d": rng.choice(FINDINGS)}
        think = " ".join(rng.choice(THINK).format(**fill) for _ in range(rng.randint(2, 10)))
        roll = rng.random()
        if roll < 0.25:  # right, in one of its surface forms
            answer = rng.choice(VARIANTS)(truth_name)
        elif roll < 0.75:  # wrong
            answer = rng.choice(VARIANTS)(rng.choice(DISEASES))
        elif roll < 0.80:  # a list
            answer = "; ".join(rng.sample(DISEASES, 3))
        elif roll < 0.85:  # an acronym
            answer = rng.choice(["DLBCL", "TTP", "PNH", "HLH", "NF1", "MEN2A", "ALS", "CML"])
        else:
            answer = rng.choice(VARIANTS)(rng.choice(DISEASES))
        shape = rng.random()
        if shape < 0.80:
            completion = f"<think>\n{think}\n</think>\n<answer>\n{answer}\n</answer>"
        elif shape < 0.86:
            completion = f"<answer>{answer}</answer>"
        elif shape < 0.90:
            completion = f"<think>{think}</think><answer>{answer}"
        elif shape < 0.93:
            completion = f"<think>{think}</think><answer>{answer}</answer><answer>{truth_name}</answer>"
        else:
            completion = f"<think>\n{think}\n</think>\n<answer>{answer}</answer>{rng.choice(ODD_TAILS)}"
        cases.append((completion, truth))
    return cases


def throughput(cases: list[tuple[str, dict]], **kwargs) -> tuple[float, float]:
    """Return (completions/s, mean score) of compute_score over `cases` with a cold cache."""
    reward._normalize.cache_clear()
    reward._answer_info.cache_clear()
    gc.collect()
    start = time.perf_counter()
    total = 0.0
    for completion, truth in cases:
        total += reward.compute_score(data_source="rare_arena", solution_str=completion, ground_truth=truth,
                                      extra_info=None, **kwargs)["score"]
    elapsed = time.perf_counter() - start
    return len(cases) / elapsed, total / len(cases)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="number of synthetic completions")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the synthetic completions")
    parser.add_argument("--repeats", type=int, default=2, help="rounds per method; the best round counts")
    parser.add_argument("--hierarchy", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared"
                        / "data" / "orphanet_hypernym.json", help="orphanet_hypernym.json for the partial-credit run")
    args = parser.parse_args()
    cases = synthesize(args.n, args.seed)
    reward.is_mixed_language("El paciente tiene fiebre y dolor.")  # load py3langid outside the timing
    print(f"{len(cases):,} synthetic completions, mean length {sum(len(c) for c, _ in cases) / len(cases):.0f} chars")

    runs = [("seed     (preset original: seed matcher, lenient format, no language penalty)", {"preset": "original"}),
            ("clinical (preset clinical: strict format, language penalty)", {"preset": "clinical"}),
            ("seed     (clinical preset, method=seed)", {"preset": "clinical", "method": "seed"})]
    # Best of `--repeats` rounds, the order reversed each round, so that warm-up and the load of a
    # shared machine do not favour either method.
    rates: dict[str, float] = {}
    means: dict[str, float] = {}
    for round_index in range(args.repeats):
        for label, kwargs in (runs if round_index % 2 == 0 else runs[::-1]):
            rate, means[label] = throughput(cases, **kwargs)
            rates[label] = max(rate, rates.get(label, 0.0))
    for label, _ in runs:
        print(f"{label:<82} {rates[label]:>9,.0f} completions/s   mean score {means[label]:.3f}")
    seed_rate, clinical_rate, seed_same_rate = (rates[label] for label, _ in runs)
    print(f"ratio clinical/seed (presets):           {clinical_rate / seed_rate:.2f}   (target >= 1.0)")
    print(f"ratio clinical/seed (same format rules): {clinical_rate / seed_same_rate:.2f}   (target >= 1.0)")
    if args.hierarchy.is_file():  # Orphanet partial credit: one cached parent lookup per case
        reward.load_hierarchy(args.hierarchy)  # parsed once per process, outside the timing
        partial_rate = max(throughput(cases, preset="clinical", hierarchy=str(args.hierarchy))[0]
                           for _ in range(args.repeats))
        print(f"clinical + Orphanet partial credit {partial_rate:>12,.0f} completions/s; "
              f"ratio partial/seed: {partial_rate / seed_rate:.2f}   (target >= 1.0)")

    # The matchers alone, on the extracted answers (the part of the work where the methods differ).
    pairs = [(reward.extract_answer(completion), truth["diagnosis"]) for completion, truth in cases]
    matcher_rates = {}
    for round_index in range(args.repeats):
        for method in (("seed", "clinical") if round_index % 2 == 0 else ("clinical", "seed")):
            reward._normalize.cache_clear()
            reward._answer_info.cache_clear()
            start = time.perf_counter()
            for answer, references in pairs:
                reward.match_diagnosis(answer, references, method=method)
            rate = len(pairs) / (time.perf_counter() - start)
            matcher_rates[method] = max(rate, matcher_rates.get(method, 0.0))
    for method, rate in matcher_rates.items():
        print(f"match_diagnosis(method={method!r}) alone {rate:>12,.0f} answers/s")
    print(f"ratio clinical/seed (matchers alone):    {matcher_rates['clinical'] / matcher_rates['seed']:.2f}")

    truth = {"diagnosis": ["Gaucher disease"]}
    for label, text in [("50,000 unclosed <answer> tags", "<answer>" * 50_000),
                        ("1 MB completion", "<think>" + "The patient has fever and rash. " * 32_000
                         + "</think><answer>Gaucher disease</answer>")]:
        for preset in ("clinical", "original"):
            start = time.perf_counter()
            reward.compute_score(data_source="x", solution_str=text, ground_truth=truth, preset=preset)
            print(f"{label:<32} {preset:<9} {time.perf_counter() - start:.4f} s   (target well under 0.1 s)")
    print_growth()
    return 0


GROWTH_PATTERNS = {  # what drives the parser, the matcher and the language check, repeated
    "unclosed answer tags": "<answer>", "nested think and answer": "<think><answer>x</think>",
    "foreign function words": "el y la de que et les der und ", "accented letters": "é à ü ñ ",
    "list separators": "1. a; b or c / d\n", "punctuation runs": "....,,,;;;!!! ",
    "acronyms and parens": "DLBCL (NF1) MEN2A ((( ", "CJK": "日本語の診断", "lead-ins": "final likely ",
    "parenthetical": "Gaucher disease (type II) ", "NOS": "lymphoma NOS, ", "negation": "not ruled out ",
}


def _best_time(function, text: str, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        reward._normalize.cache_clear()
        reward._answer_info.cache_clear()
        start = time.perf_counter()
        function(text)
        best = min(best, time.perf_counter() - start)
    return best


def print_growth() -> None:
    """Print time(8x input) / time(1x input) per adversarial pattern: ~8 is linear, ~64 quadratic."""
    truth = {"diagnosis": ["Gaucher disease type 1"]}
    print("growth of the time for 8x the input (linear ~8, quadratic ~64; target < 20):")
    worst = 0.0
    for name, unit in GROWTH_PATTERNS.items():
        small = unit * max(1, 16_000 // len(unit))
        ratios = []
        for preset in ("clinical", "original"):
            for wrap in ("{}", "<think>r</think><answer>{}</answer>"):
                def score(text, preset=preset):
                    reward.compute_score(data_source="x", solution_str=text, ground_truth=truth, preset=preset)
                t_small = _best_time(score, wrap.format(small))
                ratios.append(_best_time(score, wrap.format(small * 8)) / max(t_small, 1e-4))
        answer = unit * max(1, 1_200 // len(unit))  # the matcher reads answers up to 10,000 characters
        match = lambda text: reward.match_diagnosis(text, ["Gaucher disease type 1"])  # noqa: E731
        ratios.append(_best_time(match, answer * 8) / max(_best_time(match, answer), 1e-4))
        worst = max(worst, *ratios)
        print(f"  {name:<26} " + " ".join(f"{r:5.1f}" for r in ratios))
    print(f"worst growth ratio: {worst:.1f}   (target < 20)")


if __name__ == "__main__":
    sys.exit(main())
