"""The reward: seed exactness, clinical matching rules, format, scoring, top-k, lexicon, verl/TRL adapters."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from diagnosis_zero import reward
from diagnosis_zero.errors import ConfigError, InputFileError
from diagnosis_zero.reward import (
    PRESETS,
    RewardConfig,
    compute_score,
    extract_answer,
    load_lexicon,
    make_trl_reward_funcs,
    match_diagnosis,
    normalize_diagnosis,
    parse_completion,
    parse_ranked_list,
    similarity,
)

REPO = Path(__file__).resolve().parents[1]
REWARD_FILE = REPO / "src" / "diagnosis_zero" / "reward.py"
PRODUCT1 = REPO / "tests" / "fixtures" / "orphanet" / "en_product1.xml"
SCORE_KEYS = {"score", "acc", "format", "pred", "think_present", "mixed_language", "rank"}


def r1(answer: str, think: str = "The findings point to a lysosomal storage disorder.") -> str:
    """A clean R1-Zero completion."""
    return f"<think>{think}</think>\n<answer>{answer}</answer>"


# ---------------------------------------------------------------------------------------------
# seed: the original study's matcher, reproduced exactly
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction, reference, expected, passes", [
    ("behcet disease", "behçet disease", 0.81, True),
    ("neuro-behçet disease", "behçet disease", 0.79, False),
    ("Gaucher disease type 2", "Gaucher disease type 1", 0.88, True),   # the flaw, kept on purpose
    ("Neurofibromatosis type 2", "Neurofibromatosis type 1", 0.87, True),
    ("Multiple endocrine neoplasia type 2B", "Multiple endocrine neoplasia type 2A", 0.91, True),
    ("non-Hodgkin lymphoma", "Hodgkin lymphoma", 0.84, True),
    ("  MARFAN Syndrome ", "marfan syndrome", 1.0, True),
    ("DLBCL", "Diffuse large B-cell lymphoma", 0.24, False),
    ("Lou Gehrig disease", "Amyotrophic lateral sclerosis", 0.14, False),
])
def test_seed_similarity_values(prediction, reference, expected, passes):
    assert similarity(prediction, [reference], method="seed") == pytest.approx(expected, abs=0.005)
    assert match_diagnosis(prediction, [reference], method="seed") is passes


def test_seed_similarity_is_the_original_formula():
    import difflib
    import re

    pred, gold = "neuro-behçet disease", "behçet disease"
    words_p, words_g = set(re.findall(r"\w+", pred)), set(re.findall(r"\w+", gold))
    expected = 0.8 * difflib.SequenceMatcher(None, pred, gold).ratio() + 0.2 * len(words_p & words_g) / len(
        words_p | words_g)
    assert reward.seed_similarity(pred, gold) == expected


def test_seed_takes_the_best_reference():
    assert match_diagnosis("gaucher disease", ["Fabry disease", "Gaucher disease"], method="seed")
    assert not match_diagnosis("wilson disease", ["Fabry disease", "Gaucher disease"], method="seed")


def test_original_preset_levels_and_lenient_format():
    truth = {"diagnosis": ["Gaucher disease type 1"], "orpha_id": "77259"}
    # no <think> needed, wrong subtype passes (the original flaw), text after </answer> is free
    assert compute_score("rare_arena", "<answer> Gaucher disease type 2 </answer> 日本語", truth,
                         preset="original")["score"] == 1.0
    assert compute_score("rare_arena", "<answer>Fabry disease</answer>", truth, preset="original")["score"] == 0.1
    assert compute_score("rare_arena", "Gaucher disease type 1", truth, preset="original")["score"] == 0.0
    result = compute_score("rare_arena", "<answer>Fabry disease</answer>", truth, preset="original")
    assert result["format"] == 1 and result["pred"] == "fabry disease"


@pytest.mark.parametrize("completion", [
    "<answer></answer>",
    "<answer> </answer>",
    "<think>r</think><answer>\n\t </answer>",
    # the original reads the FIRST block only: a later, correct block changes nothing
    "<answer> </answer><answer>Gaucher disease type 1</answer>",
])
def test_original_preset_pays_wrong_reward_for_an_empty_first_answer_block(completion):
    truth = {"diagnosis": ["Gaucher disease type 1"], "orpha_id": "77259"}
    result = compute_score("rare_arena", completion, truth, preset="original")
    assert (result["score"], result["acc"], result["format"], result["pred"]) == (0.1, 0, 1, "")
    # the clinical preset: an empty block is no answer, and a second block is a format hack
    assert compute_score("rare_arena", completion, truth)["score"] <= 0.0
    # without any block, the original still pays nothing
    assert compute_score("rare_arena", completion.replace("answer>", "x>"), truth, preset="original")["score"] == 0.0


# ---------------------------------------------------------------------------------------------
# clinical: table-driven matches and non-matches, one block per rule
# ---------------------------------------------------------------------------------------------

MATCHES = [
    # Unicode and accents
    ("Behcet disease", "Behçet disease"),
    ("Sjogren syndrome", "Sjögren syndrome"),
    ("Meniere disease", "Ménière disease"),
    ("Guillain-Barre syndrome", "Guillain–Barré syndrome"),
    # case, dashes and punctuation
    ("GAUCHER DISEASE", "Gaucher disease"),
    ("Charcot Marie Tooth disease", "Charcot-Marie-Tooth disease"),
    ("Wolff–Parkinson–White syndrome", "Wolff-Parkinson-White syndrome"),
    ("**Fabry disease**", "Fabry disease"),
    # possessive 's
    ("Behçet's disease", "Behçet disease"),
    ("Wilson's disease", "Wilson disease"),
    ("Graves' disease", "Graves disease"),
    ("Hodgkin’s lymphoma", "Hodgkin lymphoma"),
    # British and American spelling
    ("Paroxysmal nocturnal haemoglobinuria", "Paroxysmal nocturnal hemoglobinuria"),
    ("Acute myeloid leukaemia", "Acute myeloid leukemia"),
    ("Oesophageal atresia", "Esophageal atresia"),
    ("Hypokalaemic periodic paralysis", "Hypokalemic periodic paralysis"),
    ("Coeliac disease", "Celiac disease"),
    ("Metachromatic leucodystrophy", "Metachromatic leukodystrophy"),
    ("Wilms tumour", "Wilms tumor"),
    # roman and arabic numerals
    ("Gaucher disease type II", "Gaucher disease type 2"),
    ("Mucopolysaccharidosis type I", "Mucopolysaccharidosis type 1"),
    ("Glycogen storage disease type Ia", "Glycogen storage disease type 1a"),
    ("Osteogenesis imperfecta type III", "Osteogenesis imperfecta type 3"),
    ("Multiple endocrine neoplasia type IIA", "Multiple endocrine neoplasia type 2A"),
    # "type N" word order
    ("Type 1 Gaucher disease", "Gaucher disease type 1"),
    ("Type II Gaucher's disease.", "gaucher disease type 2"),
    ("Type C Niemann-Pick disease", "Niemann-Pick disease type C"),
    # parenthetical abbreviation after (or before) a name
    ("Diffuse large B-cell lymphoma (DLBCL)", "Diffuse large B-cell lymphoma"),
    ("DLBCL (diffuse large B-cell lymphoma)", "Diffuse large B-cell lymphoma"),
    ("Neurofibromatosis type 1 (NF1)", "Neurofibromatosis type 1"),
    # wrapper phrases
    ("Diagnosis: Gaucher disease", "Gaucher disease"),
    ("Final diagnosis: Fabry disease.", "Fabry disease"),
    ("The most likely diagnosis is Wilson disease", "Wilson disease"),
    ("Most likely: Marfan syndrome", "Marfan syndrome"),
    ("The patient has Huntington disease.", "Huntington disease"),
    ("Fabry disease is the most likely diagnosis.", "Fabry disease"),
    ("Fabry disease (most likely)", "Fabry disease"),
    ("Fabry disease?", "Fabry disease"),
    # Greek letters
    ("β-thalassemia", "Beta-thalassemia"),
    ("α-mannosidosis", "Alpha-mannosidosis"),
    # a generic last word may be left out
    ("Marfan", "Marfan syndrome"),
    # spelling slips, with every guard passing
    ("Guillian-Barre syndrome", "Guillain-Barré syndrome"),
    ("Hemophagocytic lymphohistiocitosis", "Hemophagocytic lymphohistiocytosis"),
    # acronyms of a reference name
    ("DLBCL", "Diffuse large B-cell lymphoma"),
    ("TTP", "Thrombotic thrombocytopenic purpura"),
    ("PNH", "Paroxysmal nocturnal hemoglobinuria"),
    ("HLH", "Hemophagocytic lymphohistiocytosis"),
    ("NF1", "Neurofibromatosis type 1"),
    ("MEN2A", "Multiple endocrine neoplasia type 2A"),
    ("MEN 2B", "Multiple endocrine neoplasia type 2B"),
    ("ALS", "Amyotrophic lateral sclerosis"),
    ("CML", "Chronic myeloid leukemia"),
    ("NPC", "Niemann-Pick disease type C"),
    ("TOF", "Tetralogy of Fallot"),
    ("PKU", "Phenylketonuria"),
    # a reference that itself contains "or" matches itself
    ("Neurofibromatosis type 1 due to NF1 mutation or intragenic deletion",
     "Neurofibromatosis type 1 due to NF1 mutation or intragenic deletion"),
]

NON_MATCHES = [
    # a different subtype: number or letter designator
    ("Gaucher disease type 2", "Gaucher disease type 1"),
    ("Type 3 Gaucher disease", "Gaucher disease type 1"),
    ("Neurofibromatosis type 2", "Neurofibromatosis type 1"),
    ("NF2", "Neurofibromatosis type 1"),
    ("Multiple endocrine neoplasia type 2B", "Multiple endocrine neoplasia type 2A"),
    ("MEN 2B", "Multiple endocrine neoplasia type 2A"),
    ("Niemann-Pick disease type A", "Niemann-Pick disease type C"),
    ("Hemophilia B", "Hemophilia A"),
    ("Glycogen storage disease type Ib", "Glycogen storage disease type Ia"),
    ("Ehlers-Danlos syndrome type IV", "Ehlers-Danlos syndrome type VI"),
    ("Spinal muscular atrophy type 2", "Spinal muscular atrophy type 1"),
    # a different prefix
    ("Non-Hodgkin lymphoma", "Hodgkin lymphoma"),
    ("Pseudohypoparathyroidism", "Hypoparathyroidism"),
    ("Hypokalemic periodic paralysis", "Hyperkalemic periodic paralysis"),
    ("Hyperthyroidism", "Hypothyroidism"),
    ("Pseudoxanthoma elasticum", "Xanthoma elasticum"),
    # a broader category than the reference
    ("Gaucher disease", "Gaucher disease type 1"),
    ("Lymphoma", "Diffuse large B-cell lymphoma"),
    ("Neurofibromatosis", "Neurofibromatosis type 1"),
    ("Muscular dystrophy", "Duchenne muscular dystrophy"),
    ("Thrombotic microangiopathy", "Thrombotic thrombocytopenic purpura"),
    ("Leukemia", "Chronic myeloid leukemia"),
    # a different qualifier (look-alikes)
    ("Chronic myeloid leukemia", "Acute myeloid leukemia"),
    ("Autosomal dominant polycystic kidney disease", "Autosomal recessive polycystic kidney disease"),
    ("Early-onset Alzheimer disease", "Late-onset Alzheimer disease"),
    ("Juvenile Huntington disease", "Huntington disease"),
    ("Cushing syndrome", "Cushing disease"),
    ("Neuro-Behçet disease", "Behçet disease"),
    ("Marinesco-Sjögren syndrome", "Sjögren-Larsson syndrome"),
    ("Mowat-Wilson syndrome", "Wilson disease"),
    # negated answers
    ("Not Gaucher disease", "Gaucher disease"),
    ("No evidence of Fabry disease", "Fabry disease"),
    ("Gaucher disease is unlikely", "Gaucher disease"),
    ("Wilson disease ruled out", "Wilson disease"),
    ("Rule out Marfan syndrome", "Marfan syndrome"),
    ("Marfan syndrome (unlikely)", "Marfan syndrome"),
    # several diagnoses: listing must never pay
    ("Gaucher disease; Fabry disease; Wilson disease", "Gaucher disease"),
    ("Gaucher disease or Fabry disease", "Gaucher disease"),
    ("Gaucher disease vs Fabry disease", "Gaucher disease"),
    ("Gaucher disease versus Niemann-Pick disease", "Gaucher disease"),
    ("1. Gaucher disease 2. Fabry disease", "Gaucher disease"),
    ("Gaucher disease\nFabry disease", "Gaucher disease"),
    ("Gaucher/Fabry disease", "Fabry disease"),
    ("Gaucher disease, Fabry disease, Wilson disease", "Gaucher disease"),
    ("Gaucher disease and Fabry disease", "Gaucher disease"),
    ("Differential: Gaucher disease", "Gaucher disease"),
    ("DLBCL or TTP", "Diffuse large B-cell lymphoma"),
    # acronyms that do not spell the reference, or are too short to be safe
    ("MS", "Marfan syndrome"),
    ("TTP", "Hemolytic uremic syndrome"),
    ("HLH", "Langerhans cell histiocytosis"),
    ("dlbcl", "Diffuse large B-cell lymphoma"),  # lower case: a word, not an acronym
    # eponyms without a lexicon
    ("Lou Gehrig disease", "Amyotrophic lateral sclerosis"),
    # empty or junk
    ("", "Gaucher disease"),
    ("...", "Gaucher disease"),
    ("日本語", "Gaucher disease"),
]


@pytest.mark.parametrize("prediction, reference", MATCHES)
def test_clinical_matches(prediction, reference):
    assert match_diagnosis(prediction, [reference]) is True
    assert similarity(prediction, [reference]) == 1.0


@pytest.mark.parametrize("prediction, reference", NON_MATCHES)
def test_clinical_non_matches(prediction, reference):
    assert match_diagnosis(prediction, [reference]) is False
    assert similarity(prediction, [reference]) < 0.9


def test_clinical_rejects_the_seed_methods_known_false_positives():
    for prediction, reference in [("Gaucher disease type 2", "Gaucher disease type 1"),
                                  ("Neurofibromatosis type 2", "Neurofibromatosis type 1"),
                                  ("Multiple endocrine neoplasia type 2B", "Multiple endocrine neoplasia type 2A"),
                                  ("non-Hodgkin lymphoma", "Hodgkin lymphoma")]:
        assert match_diagnosis(prediction, [reference], method="seed")
        assert not match_diagnosis(prediction, [reference], method="clinical")


@pytest.mark.parametrize("name, canonical", [
    ("Type II Gaucher's disease.", "gaucher disease 2"),
    ("The most likely diagnosis is Behçet's disease", "behcet disease"),
    ("Paroxysmal nocturnal haemoglobinuria (PNH)", "paroxysmal nocturnal hemoglobinuria"),
    ("  ", ""),
    ("β-Thalassaemia major", "beta thalassemia major"),
])
def test_normalize_diagnosis(name, canonical):
    assert normalize_diagnosis(name) == canonical


def test_unknown_method_is_a_config_error():
    with pytest.raises(ConfigError):
        match_diagnosis("x", ["x"], method="fuzzy")


# ---------------------------------------------------------------------------------------------
# parsing and format
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, answer, think, n_answers, in_think, unclosed, extra, ok", [
    ("<think>reasoning</think><answer>Fabry disease</answer>", "Fabry disease", True, 1, False, False, False, True),
    ("  <think>\nreasoning\n</think>\n\n<answer>\n Fabry disease \n</answer>\n", "Fabry disease", True, 1, False,
     False, False, True),
    ("<answer>Fabry disease</answer>", "Fabry disease", False, 1, False, False, False, False),
    ("<think>  </think><answer>Fabry disease</answer>", "Fabry disease", False, 1, False, False, False, False),
    ("<think>r</think><answer>A</answer><answer>B</answer>", "A", True, 2, False, True, False, False),
    ("<think>r <answer>A</answer></think><answer>A</answer>", "A", True, 2, True, True, False, False),
    ("<think>r <answer>A</answer></think>", "A", True, 1, True, False, False, False),
    ("<think>r</think><answer>A", None, True, 0, False, True, False, False),
    ("<think>r<answer>A</answer>", "A", False, 1, False, True, False, False),
    ("<think>r</think><answer></answer>", "", True, 1, False, False, False, False),
    ("<think>r</think><answer>A</answer> これは日本語です", "A", True, 1, False, False, True, False),
    ("Sure! <think>r</think><answer>A</answer>", "A", True, 1, False, False, True, False),
    ("<think>r</think> so the answer is <answer>A</answer>", "A", True, 1, False, False, True, False),
    ("<answer>A</answer><think>r</think>", "A", True, 1, False, True, False, False),
    ("no tags at all", None, False, 0, False, False, False, False),
    ("<think>r</think><think>s</think><answer>A</answer>", "A", True, 1, False, True, False, False),
])
def test_parse_completion(text, answer, think, n_answers, in_think, unclosed, extra, ok):
    parsed = parse_completion(text)
    assert parsed.answer == answer
    assert parsed.think_present is think
    assert parsed.n_answer_blocks == n_answers
    assert parsed.answer_in_think is in_think
    assert parsed.unclosed_tags is unclosed
    assert parsed.extra_text is extra
    assert parsed.format_ok is ok


def test_extract_answer_and_trailing_text():
    assert extract_answer("<think>x</think><answer> Gaucher disease </answer>") == "Gaucher disease"
    assert extract_answer("<answer>unclosed") == ""
    assert extract_answer("") == ""
    assert parse_completion("<answer>A</answer>\n知情人士指出").trailing_text == "知情人士指出"


TRUTH = {"diagnosis": ["Gaucher disease type 1", "Gaucher disease"], "orpha_id": "77259"}


@pytest.mark.parametrize("completion, score, acc, fmt", [
    (r1("Gaucher disease type 1"), 1.0, 1, 1),                       # correct, clean
    (r1("Fabry disease"), 0.1, 0, 1),                                # wrong, clean
    ("<answer>Gaucher disease type 1</answer>", 0.9, 1, 0),          # missing think
    (r1("Gaucher disease type 1") + "\nThe end.", 0.9, 1, 0),        # text after </answer>
    (r1("Gaucher disease type 1") + "\n答案是戈谢病", 0.8, 1, 0),   # other language appended
    ("<think>r</think><answer>Gaucher disease type 1", -0.1, 0, 0),  # unclosed: no answer
    (r1(""), -0.0, 0, 0),                                            # empty answer = no answer
    ("plain text: Gaucher disease type 1", -0.1, 0, 0),              # no tags
])
def test_compute_score_clinical_levels(completion, score, acc, fmt):
    result = compute_score("rare_arena", completion, TRUTH)
    assert result["score"] == pytest.approx(score)
    assert (result["acc"], result["format"]) == (acc, fmt)


HACKS = [
    # many answers, one of them right
    "<think>r</think><answer>Fabry disease</answer><answer>Gaucher disease type 1</answer>",
    "<think>r</think>" + "".join(f"<answer>{d}</answer>" for d in ["Wilson disease", "Gaucher disease type 1"]),
    # a list in one answer
    r1("Gaucher disease type 1; Fabry disease; Wilson disease"),
    r1("1. Gaucher disease type 1\n2. Fabry disease\n3. Wilson disease"),
    r1("Gaucher disease type 1 or Gaucher disease type 2"),
    # the answer only inside think
    "<think>I think <answer>Gaucher disease type 1</answer></think>",
    "<think>I think <answer>Gaucher disease type 1</answer></think><answer>Fabry disease</answer>",
    # the right name, negated
    r1("Not Gaucher disease type 1"),
]


@pytest.mark.parametrize("completion", HACKS)
def test_hacks_never_score_above_a_clean_wrong_answer(completion):
    clean_wrong = compute_score("rare_arena", r1("Fabry disease"), TRUTH)["score"]
    result = compute_score("rare_arena", completion, TRUTH)
    assert result["acc"] == 0
    assert result["score"] <= clean_wrong


def test_levels_and_penalties_are_configurable():
    completion = "<answer>Gaucher disease type 1</answer> 日本語"
    result = compute_score("rare_arena", completion, TRUTH, correct_reward=2.0, missing_think_penalty=0.5,
                           extra_text_penalty=0.25, language_penalty=0.125)
    assert result["score"] == pytest.approx(2.0 - 0.5 - 0.25 - 0.125)
    assert compute_score("rare_arena", completion, TRUTH, strict_format=False, language_check=False)["score"] == 1.0
    assert compute_score("rare_arena", r1("Fabry"), TRUTH, wrong_reward=0.0)["score"] == 0.0
    assert compute_score("rare_arena", "nothing", TRUTH, no_answer_reward=-1.0, strict_format=False)["score"] == -1.0


def test_seed_method_under_the_clinical_format():
    result = compute_score("rare_arena", r1("Gaucher disease type 2"), TRUTH, method="seed")
    assert result["score"] == 1.0 and result["pred"] == "gaucher disease type 2"


def test_every_call_returns_the_same_keys_with_scalar_values():
    completions = [r1("Gaucher disease type 1"), "", "<answer>", r1("1. A\n2. B"), "x" * 5000, "<think>日本語</think>"]
    for completion in completions:
        for kwargs in ({}, {"preset": "original"}, {"topk": 5}, {"method": "seed"}):
            result = compute_score(data_source="rare_arena", solution_str=completion, ground_truth=TRUTH,
                                   extra_info={"split": "test", "index": 0}, **kwargs)
            assert set(result) == SCORE_KEYS
            assert isinstance(result["score"], float)
            assert all(isinstance(result[k], int) for k in ("acc", "format", "think_present", "mixed_language", "rank"))
            assert isinstance(result["pred"], str)


# ---------------------------------------------------------------------------------------------
# ground truth shapes: dict, numpy arrays (parquet round trip), JSON string, plain names
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("truth", [
    {"diagnosis": ["Gaucher disease type 1"], "orpha_id": "77259"},
    {"diagnosis": np.array(["Gaucher disease type 1", "Gaucher disease"], dtype=object), "orpha_id": "77259"},
    {"diagnosis": np.array(["Gaucher disease type 1"]), "orpha_id": np.int64(77259)},
    json.dumps({"diagnosis": ["Gaucher disease type 1"], "orpha_id": "77259"}),
    {"style": "rule", "ground_truth": {"diagnosis": ["Gaucher disease type 1"], "orpha_id": "77259"}},
    "Gaucher disease type 1",
    ["Gaucher disease type 1"],
    np.array(["Gaucher disease type 1"]),
])
def test_ground_truth_shapes(truth):
    result = compute_score("rare_arena", r1("Type I Gaucher disease"), truth)
    assert result["acc"] == 1 and result["score"] == 1.0


def test_parse_ground_truth_orpha_id_forms():
    assert reward.parse_ground_truth({"diagnosis": "A", "orpha_id": 355.0}) == (["A"], "355")
    assert reward.parse_ground_truth({"diagnosis": ["A", None, ""], "orpha_id": "ORPHA:355"}) == (["A"], "355")
    assert reward.parse_ground_truth({"diagnosis": [], "orpha_id": None}) == ([], None)
    assert reward.parse_ground_truth("{not json") == (["{not json"], None)
    assert reward.parse_ground_truth(None) == ([], None)


def test_missing_references_score_as_wrong_not_an_error():
    assert compute_score("rare_arena", r1("Gaucher disease"), {"diagnosis": []})["score"] == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------
# top-k mode (rarearena-top5 template)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, items", [
    ("1. Gaucher disease\n2. Fabry disease\n3. Wilson disease", ["Gaucher disease", "Fabry disease", "Wilson disease"]),
    ("Top diagnoses:\n1) Gaucher disease\n2) Fabry disease", ["Gaucher disease", "Fabry disease"]),
    ("- Gaucher disease\n- Fabry disease", ["Gaucher disease", "Fabry disease"]),
    ("1. Gaucher disease 2. Fabry disease 3. Wilson disease", ["Gaucher disease", "Fabry disease", "Wilson disease"]),
    ("Gaucher disease; Fabry disease", ["Gaucher disease", "Fabry disease"]),
    ("Gaucher disease", ["Gaucher disease"]),
    ("1. **Gaucher disease type 1**", ["Gaucher disease type 1"]),
    ("1. **Gaucher disease** - splenomegaly, bone crises\n2. Charcot-Marie-Tooth disease – neuropathy",
     ["Gaucher disease", "Charcot-Marie-Tooth disease"]),
    ("", []),
])
def test_parse_ranked_list(text, items):
    assert parse_ranked_list(text) == items


def top5(*items: str) -> str:
    return r1("\n" + "\n".join(f"{i}. {d}" for i, d in enumerate(items, 1)) + "\n")


@pytest.mark.parametrize("completion, rank, score", [
    (top5("Gaucher disease type 1", "Fabry disease", "Wilson disease"), 1, 1.0),
    (top5("Fabry disease", "Gaucher disease type 1", "Wilson disease"), 2, 0.5),
    (top5("Fabry disease", "Wilson disease", "Marfan syndrome", "Pompe disease", "Type I Gaucher disease"), 5, 0.2),
    (top5("Fabry disease", "Wilson disease"), 0, 0.1),
    # duplicates of a wrong name buy nothing; the right name at rank 3 stays at rank 3
    (top5("Fabry disease", "Fabry disease", "Gaucher disease type 1"), 3, 1 / 3),
    # a sixth item is never read, and more than k items costs the list penalty
    (top5("A", "B", "C", "D", "E", "Gaucher disease type 1"), 0, 0.0),
    (top5("Gaucher disease type 1", "B", "C", "D", "E", "F"), 1, 0.9),
    # an item that is itself a list earns nothing
    (top5("Gaucher disease type 1 or Fabry disease", "Wilson disease"), 0, 0.1),
])
def test_topk_reciprocal_rank(completion, rank, score):
    result = compute_score("rare_arena", completion, TRUTH, topk=5)
    assert result["rank"] == rank
    assert result["acc"] == int(rank > 0)
    assert result["score"] == pytest.approx(score)


def test_topk_custom_table_and_extra_info_switch():
    completion = top5("Fabry disease", "Gaucher disease type 1")
    assert compute_score("x", completion, TRUTH, topk=5, topk_rewards=[1.0, 0.8, 0.6, 0.4, 0.2])["score"] == 0.8
    assert compute_score("x", completion, TRUTH, extra_info={"topk": 5})["rank"] == 2
    assert compute_score("x", completion, TRUTH, extra_info={"template": "rarearena-top5"})["rank"] == 2
    assert compute_score("x", completion, TRUTH)["rank"] == 0  # single-diagnosis mode: a list is no answer
    assert compute_score("x", completion, TRUTH, topk=5)["pred"] == "Fabry disease\nGaucher disease type 1"


# ---------------------------------------------------------------------------------------------
# lexicon: Orphanet product 1 and RareArena's hypernym file
# ---------------------------------------------------------------------------------------------

def test_load_orphanet_product1_names_and_synonyms():
    lexicon = load_lexicon(PRODUCT1)
    assert len(lexicon) == 16
    assert lexicon.lookup("Lou Gehrig's disease") == {"803"}
    assert lexicon.lookup("Behcet syndrome") == {"117"}  # ISO-8859-1 file, accent folded
    assert lexicon.lookup("Non-neuronopathic Gaucher disease") == {"77259"}
    assert lexicon.names["636"][0] == "Neurofibromatosis type 1"
    assert lexicon.lookup("Disease") == frozenset()  # a <DisorderType> name is not a disorder
    assert load_lexicon(str(PRODUCT1)) is lexicon  # cached per path


@pytest.mark.parametrize("prediction, truth, expected", [
    ("Lou Gehrig disease", {"diagnosis": ["Amyotrophic lateral sclerosis"], "orpha_id": "803"}, 1),
    ("Charcot disease", {"diagnosis": ["ALS"], "orpha_id": "803"}, 1),
    ("Hepatolenticular degeneration", {"diagnosis": ["Wilson disease"], "orpha_id": ""}, 1),  # via the name
    ("Von Recklinghausen disease", {"diagnosis": ["Neurofibromatosis type 1"], "orpha_id": "636"}, 1),
    ("Sipple syndrome", {"diagnosis": ["MEN 2A"], "orpha_id": "247698"}, 1),
    ("Non-neuronopathic Gaucher disease", TRUTH, 1),
    ("Acute neuronopathic Gaucher disease", TRUTH, 0),  # type 2's synonym, ground truth type 1
    ("Lou Gehrig disease", {"diagnosis": ["Wilson disease"], "orpha_id": "905"}, 0),
    ("Lou Gehrig disease or Wilson disease", {"diagnosis": ["Wilson disease"], "orpha_id": "905"}, 0),
])
def test_lexicon_matches_by_orpha_code(prediction, truth, expected):
    result = compute_score("rare_arena", r1(prediction), truth, lexicon=str(PRODUCT1))
    assert result["acc"] == expected
    assert not match_diagnosis(prediction, truth["diagnosis"]) or prediction == "Non-neuronopathic Gaucher disease"


def test_load_rarearena_hypernym_json_names_only(hypernym_json):
    lexicon = load_lexicon(hypernym_json)
    assert len(lexicon) == 7476
    assert lexicon.lookup("Gaucher disease type I") == {"77259"}
    assert lexicon.lookup("Behcet's disease") == {"117"}
    assert match_diagnosis("Type 1 Gaucher disease", ["Gaucher disease, type 1 (adult)"], lexicon=lexicon,
                           orpha_id="77259")


@pytest.mark.parametrize("content, line", [
    ("<JDBOR><DisorderList><Disorder><OrphaCode>1</OrphaCode>\n<Name>x</Disorder>", 2),
    ("[{\"Orphanetid\": \"1\", \"name\": \"x\"},\n  oops]", 2),
])
def test_bad_lexicon_files_name_the_line(tmp_path, content, line):
    path = tmp_path / ("bad.xml" if content.startswith("<") else "bad.json")
    path.write_text(content)
    with pytest.raises(InputFileError) as excinfo:
        load_lexicon(path)
    assert excinfo.value.line == line and str(path) in str(excinfo.value)


def test_missing_lexicon_file(tmp_path):
    with pytest.raises(InputFileError, match="file not found"):
        load_lexicon(tmp_path / "nope.xml")


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------

def test_presets_and_config_validation():
    assert PRESETS["clinical"] == RewardConfig()
    original = PRESETS["original"]
    assert (original.method, original.correct_reward, original.wrong_reward, original.no_answer_reward,
            original.strict_format, original.language_check) == ("seed", 1.0, 0.1, 0.0, False, False)
    for field in reward.dataclasses.fields(RewardConfig):
        assert field.metadata.get("help"), field.name
    with pytest.raises(ConfigError):
        RewardConfig(method="bleu")
    with pytest.raises(ConfigError):
        RewardConfig(topk=-1)
    with pytest.raises(ConfigError):
        compute_score("x", "y", "z", preset="nope")
    with pytest.raises(ConfigError):
        reward.resolve_config(wrong_rewrd=0.0)


def test_compute_score_ignores_verls_own_kwargs():
    result = compute_score(data_source="rare_arena", solution_str=r1("Gaucher disease type 1"), ground_truth=TRUTH,
                           extra_info={"num_turns": None, "rollout_reward_scores": {}},
                           reward_router_address=None, reward_model_tokenizer=None)
    assert result["score"] == 1.0


# ---------------------------------------------------------------------------------------------
# verl: loaded by file path, called with keywords from a thread pool
# ---------------------------------------------------------------------------------------------

def load_like_verl(path: Path):
    """verl 0.9.1's load_extern_object: spec_from_file_location, exec_module, NOT put in sys.modules."""
    spec = importlib.util.spec_from_file_location(f"custom_module_{hash(str(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reward_file_loads_by_path_as_verl_does(tmp_path):
    copy = tmp_path / "standalone_reward.py"
    copy.write_text(REWARD_FILE.read_text())
    module = load_like_verl(copy)
    assert "custom_module" not in " ".join(sys.modules)
    result = module.compute_score(data_source="rare_arena", solution_str=r1("Gaucher disease type 1"),
                                  ground_truth={"diagnosis": np.array(["Gaucher disease type 1"]), "orpha_id": "77259"},
                                  extra_info={"split": "test", "index": 3}, preset="clinical")
    assert result == {"score": 1.0, "acc": 1, "format": 1, "pred": "Gaucher disease type 1", "think_present": 1,
                      "mixed_language": 0, "rank": 1}
    assert module.compute_score(data_source="rare_arena", solution_str="<answer>Fabry</answer>",
                                ground_truth=json.dumps(TRUTH), topk_rewards=ListLike([1.0, 0.5]))["score"] == 0.0


class ListLike(Sequence):
    """A list that is not a `list`, like OmegaConf's ListConfig in verl's reward_kwargs."""

    def __init__(self, values):
        self._values = list(values)

    def __getitem__(self, index):
        return self._values[index]

    def __len__(self):
        return len(self._values)


def test_reward_file_runs_on_the_standard_library_alone(tmp_path):
    """`python -S`: no site-packages, so no diagnosis_zero package, numpy or py3langid."""
    import subprocess

    copy = tmp_path / "standalone_reward.py"
    copy.write_text(REWARD_FILE.read_text())
    script = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('custom_module_1', {str(copy)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "assert 'numpy' not in sys.modules and 'diagnosis_zero' not in sys.modules\n"
        "r = [m.compute_score(data_source='x', solution_str=s, ground_truth=g) for s, g in [\n"
        "  ('<think>r</think><answer>Type II Gaucher disease</answer>', {'diagnosis': ['Gaucher disease type 2']}),\n"
        "  ('<think>r</think><answer>HLH</answer> Der Patient hat eine seltene Erkrankung und ist nicht gesund.',\n"
        "   '{\"diagnosis\": [\"Hemophagocytic lymphohistiocytosis\"]}')]]\n"
        "print(json.dumps(r))\n"
        "try:\n"
        "    m.compute_score(data_source='x', solution_str='', ground_truth='', preset='nope')\n"
        "except ValueError as exc:\n"
        "    print(type(exc).__name__, exc)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # -S alone still honours PYTHONPATH
    proc = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    first, second = json.loads(lines[0])
    assert (first["score"], first["acc"]) == (1.0, 1)
    assert (second["acc"], second["mixed_language"], second["format"]) == (1, 1, 0)
    assert lines[1].startswith("ConfigError field 'preset'")


def test_import_is_light():
    code = ("import sys; import diagnosis_zero.reward as r; "
            "heavy = [m for m in ('numpy', 'torch', 'transformers', 'py3langid') if m in sys.modules]; "
            "print(heavy)")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_thread_pool_with_a_shared_lexicon():
    reward._LEXICONS.clear()
    reward._LOADED_BY_ABSOLUTE_PATH.clear()
    cases = [(r1("Lou Gehrig disease"), {"diagnosis": ["Amyotrophic lateral sclerosis"], "orpha_id": "803"}, 1),
             (r1("Gaucher disease type 2"), TRUTH, 0),
             (r1("DLBCL") + " 日本語", {"diagnosis": ["Diffuse large B-cell lymphoma"]}, 1),
             (r1("Fabry disease"), {"diagnosis": np.array(["Fabry disease"])}, 1)] * 50

    def score(case):
        completion, truth, _ = case
        return compute_score(data_source="rare_arena", solution_str=completion, ground_truth=truth,
                             extra_info={}, lexicon=str(PRODUCT1))

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(score, cases))
    assert [r["acc"] for r in results] == [c[2] for c in cases]
    assert len(reward._LEXICONS) == 1


# ---------------------------------------------------------------------------------------------
# TRL adapters
# ---------------------------------------------------------------------------------------------

def trl_batch():
    completions = [r1("Gaucher disease type 1"), r1("Fabry disease"), "<answer>Gaucher disease</answer>",
                   r1("Gaucher disease type 1") + " これは答えです", "nothing", r1("1. A\n2. B")]
    truths = [{"style": "rule", "ground_truth": {"diagnosis": np.array(["Gaucher disease type 1"]),
                                                  "orpha_id": "77259"}},
              {"style": "rule", "ground_truth": {"diagnosis": ["Gaucher disease type 1"], "orpha_id": "77259"}},
              {"style": "rule", "ground_truth": json.dumps(TRUTH)},
              {"style": "rule", "ground_truth": TRUTH},
              {"style": "rule", "ground_truth": TRUTH},
              json.dumps({"style": "rule", "ground_truth": TRUTH})]
    return completions, truths


@pytest.mark.parametrize("conversational", [False, True])
@pytest.mark.parametrize("config", [PRESETS["clinical"], PRESETS["original"],
                                    RewardConfig(topk=5, language_penalty=0.3, wrong_reward=0.0)])
def test_trl_weighted_sum_equals_compute_score(conversational, config):
    completions, truths = trl_batch()
    expected = [compute_score("rare_arena", c, t, config=config)["score"] for c, t in zip(completions, truths, strict=True)]
    if conversational:
        completions = [[{"role": "assistant", "content": c}] for c in completions]
    prompts = [[{"role": "user", "content": "case"}]] * len(completions)
    funcs, weights = make_trl_reward_funcs(config)
    assert [f.__name__ for f in funcs] == ["accuracy", "format", "language"]
    columns = {"reward_model": truths, "data_source": ["rare_arena"] * len(truths),
               "extra_info": [{"split": "train", "index": i} for i in range(len(truths))]}
    per_func = [f(prompts=prompts, completions=completions, completion_ids=None, **columns) for f in funcs]
    for i, score in enumerate(expected):
        assert sum(w * values[i] for w, values in zip(weights, per_func, strict=True)) == pytest.approx(score)


def test_trl_module_level_adapters_and_log_metric():
    completions, truths = trl_batch()
    logged = {}
    accuracy = reward.accuracy_reward(prompts=None, completions=completions, reward_model=truths,
                                      log_metric=logged.__setitem__, trainer_state=None)
    assert accuracy == [1.0, 0.1, 1.0, 1.0, 0.0, 0.1]
    assert reward.format_reward(prompts=None, completions=completions, reward_model=truths) == pytest.approx(
        [0.0, 0.0, -0.1, -0.1, -0.1, -0.1])
    assert reward.language_reward(prompts=None, completions=completions, reward_model=truths) == pytest.approx(
        [0.0, 0.0, 0.0, -0.1, 0.0, 0.0])
    assert logged["accuracy"] == pytest.approx(3 / 6)
    assert logged["mixed_language_rate"] == pytest.approx(1 / 6)
    assert set(logged) == {"accuracy", "format_rate", "think_rate", "mixed_language_rate"}


def test_trl_adapter_needs_a_ground_truth_column():
    with pytest.raises(ConfigError, match="reward_model"):
        reward.accuracy_reward(prompts=["p"], completions=["c"])


def test_trl_adapter_in_a_real_trl_reward_call():
    """TRL's own helper for reward-function names and conversational completions."""
    from trl.data_utils import is_conversational

    funcs, weights = make_trl_reward_funcs(PRESETS["clinical"])
    completions = [[{"role": "assistant", "content": r1("Gaucher disease type 1")}]]
    assert is_conversational({"prompt": [{"role": "user", "content": "x"}], "completion": completions[0]})
    assert funcs[0](prompts=[[{"role": "user", "content": "x"}]], completions=completions,
                    reward_model=[{"ground_truth": TRUTH}]) == [1.0]


def test_the_docstring_examples_run():
    import doctest

    results = doctest.testmod(reward, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert results.attempted >= 4 and results.failed == 0


def test_public_names_are_exported_and_other_modules_find_theirs():
    assert set(reward.__all__) <= set(dir(reward))
    assert reward.OTHER_SCRIPT is reward._OTHER_SCRIPT
    assert reward.OTHER_SCRIPT.search("诊断") and not reward.OTHER_SCRIPT.search("Ménière，β")
