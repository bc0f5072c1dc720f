"""Parenthetical synonyms, NOS, and Orphanet partial credit (RareArena's score 1) in the rule reward."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diagnosis_zero import reward
from diagnosis_zero.errors import ConfigError
from diagnosis_zero.reward import PRESETS, RewardConfig, compute_score, make_trl_reward_funcs, match_diagnosis

PRODUCT1 = Path(__file__).resolve().parent / "fixtures" / "orphanet" / "en_product1.xml"


def r1(answer: str) -> str:
    return f"<think>The findings point to a storage disorder.</think>\n<answer>{answer}</answer>"


# ---------------------------------------------------------------------------------------------
# parenthetical eponyms and synonyms; NOS
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction, reference", [
    ("Spinal muscular atrophy type 3 (Kugelberg-Welander disease)", "Spinal muscular atrophy type 3"),
    ("Langerhans cell histiocytosis (Hand-Schüller-Christian disease)", "Langerhans cell histiocytosis"),
    ("Mucopolysaccharidosis type I (Hurler syndrome)", "Mucopolysaccharidosis type 1"),
    ("Mucopolysaccharidosis type 1 (MPS I)", "Mucopolysaccharidosis type 1"),
    ("Amyotrophic lateral sclerosis (Lou Gehrig disease).", "Amyotrophic lateral sclerosis"),
    ("Diagnosis: Multiple endocrine neoplasia type 1 (Wermer syndrome)", "Multiple endocrine neoplasia type I"),
    ("Neurofibromatosis (NF2)", "Neurofibromatosis type 2"),
    ("Gaucher disease (type 1)", "Gaucher disease type 1"),
    # NOS: no subtype known, so it is the name itself
    ("Peripheral T-cell lymphoma, NOS", "Peripheral T-cell lymphoma"),
    ("Peripheral T-cell lymphoma (NOS)", "Peripheral T-cell lymphoma"),
    ("Peripheral T-cell lymphoma, not otherwise specified", "Peripheral T-cell lymphoma"),
    ("Peripheral T-cell lymphoma", "Peripheral T-cell lymphoma, not otherwise specified"),
    ("Gaucher disease type 1 NOS", "Gaucher disease type 1"),
])
def test_parenthetical_synonyms_and_nos_match(prediction, reference):
    assert match_diagnosis(prediction, [reference]) is True
    assert compute_score("rare_arena", r1(prediction), {"diagnosis": [reference]})["score"] == 1.0


@pytest.mark.parametrize("prediction, references", [
    # the parenthetical never swaps in a different subtype, in either position
    ("Neurofibromatosis type 1 (Neurofibromatosis type 2)", ["Neurofibromatosis type 2"]),
    ("Neurofibromatosis type 1 (NF2)", ["Neurofibromatosis type 2"]),
    ("Neurofibromatosis type 1 (NF2)", ["Neurofibromatosis type 1"]),
    ("Neurofibromatosis (NF2)", ["Neurofibromatosis type 1"]),
    # ... nor adds one the reference lacks (a narrower answer), even when the broad name is a reference
    ("Neurofibromatosis (NF2)", ["Neurofibromatosis type 1", "Neurofibromatosis"]),
    ("Gaucher disease (type 2)", ["Gaucher disease type 1", "Gaucher disease"]),
    ("Gaucher disease (non-neuronopathic)", ["Gaucher disease"]),
    ("Leukemia (chronic)", ["Leukemia"]),
    # a correct name inside the parentheses is no hedge: only the name outside counts
    ("Fabry disease (Gaucher disease type 1)", ["Gaucher disease type 1"]),
    ("Gaucher disease (Kugelberg-Welander disease)", ["Spinal muscular atrophy type 3"]),
    # broader names stay broader
    ("Spinal muscular atrophy (Kugelberg-Welander disease)", ["Spinal muscular atrophy type 3"]),
    ("Gaucher disease NOS", ["Gaucher disease type 2"]),
    ("Gaucher disease, not otherwise specified", ["Gaucher disease type 2"]),
    ("Lymphoma NOS", ["Peripheral T-cell lymphoma"]),
    # negations, lists and hedges inside the parentheses
    ("Marfan syndrome (ruled out)", ["Marfan syndrome"]),
    ("Marfan syndrome (not likely)", ["Marfan syndrome"]),
    ("Marfan syndrome (or Loeys-Dietz syndrome)", ["Marfan syndrome"]),
    ("Marfan syndrome (vs Loeys-Dietz syndrome)", ["Marfan syndrome"]),
])
def test_parentheticals_and_nos_open_no_door(prediction, references):
    assert match_diagnosis(prediction, references) is False


def test_a_parenthetical_synonym_resolves_through_the_lexicon_without_opening_a_hedge():
    truth = {"diagnosis": ["Gaucher disease type 1"], "orpha_id": "77259"}
    lexicon = str(PRODUCT1)  # names and synonyms: "Non-neuronopathic Gaucher disease" is 77259
    for answer, acc in [("Non-neuronopathic Gaucher disease (Gaucher type 1)", 1),
                        ("Gaucher disease (non-neuronopathic Gaucher disease)", 1),
                        ("Fabry disease (Non-neuronopathic Gaucher disease)", 0),
                        ("Fabry disease (Gaucher disease type 1)", 0),
                        ("Gaucher disease (Fabry disease)", 0)]:
        assert compute_score("rare_arena", r1(answer), truth, lexicon=lexicon)["acc"] == acc, answer


# property tests: whatever the base name, the eponym and the subtype numbers
words = st.sampled_from(["Gaucher", "Fabry", "Pompe", "Krabbe", "Wolman", "Menkes", "Alport", "Usher", "Bartter",
                         "Charcot", "Leigh", "Refsum", "Zellweger", "Canavan"])
bases = st.tuples(words, st.sampled_from(["disease", "syndrome", "dystrophy", "ataxia"])).map(" ".join)
eponyms = st.tuples(words, words, st.sampled_from(["disease", "syndrome"])).map(lambda t: f"{t[0]}-{t[1]} {t[2]}")
numbers = st.integers(min_value=1, max_value=9)
forms = st.sampled_from(["{b} type {n}", "Type {n} {b}", "{b} type {r}", "{b} {n}"])
ROMAN = ["", "I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX"]


def _subtype(form: str, base: str, n: int) -> str:
    return form.format(b=base, n=n, r=ROMAN[n])


@settings(max_examples=300, deadline=None)
@given(base=bases, eponym=eponyms, n=numbers, form=forms)
def test_property_a_parenthetical_eponym_after_the_right_subtype_matches(base, eponym, n, form):
    reference = f"{base} type {n}"
    assert match_diagnosis(f"{_subtype(form, base, n)} ({eponym})", [reference])
    assert match_diagnosis(f"{_subtype(form, base, n)}, NOS", [reference])


@settings(max_examples=300, deadline=None)
@given(base=bases, eponym=eponyms, n=numbers, m=numbers, form=forms,
       inner=st.sampled_from(["{e}", "{other}", "type {m}", "{acr}{m}", "not otherwise specified", "NOS"]))
def test_property_a_parenthetical_or_nos_never_reaches_another_subtype_or_a_broader_name(
        base, eponym, n, m, form, inner):
    if n == m:
        m = n % 9 + 1
    acronym = "".join(w[0] for w in base.split()).upper()  # "GA" for Gaucher ataxia
    predicted = _subtype(form, base, n)
    text = inner.format(e=eponym, other=f"{base} type {m}", m=m, acr=acronym)
    other = f"{base} type {m}"
    # a different subtype, whatever the parentheses say
    assert not match_diagnosis(f"{predicted} ({text})", [other])
    assert not match_diagnosis(f"{predicted} NOS", [other])
    # the broad name with a parenthetical matches a subtype only when the parenthetical names it
    names_it = text in (f"type {m}", other, f"{acronym}{m}")
    assert match_diagnosis(f"{base} ({text})", [other]) is names_it
    assert not match_diagnosis(f"{base} NOS", [other])
    assert not match_diagnosis(f"{base}, not otherwise specified", [other])


# ---------------------------------------------------------------------------------------------
# Orphanet partial credit
# ---------------------------------------------------------------------------------------------

GAUCHER_1 = {"diagnosis": ["Gaucher disease type 1"], "orpha_id": "77259"}  # parent: Gaucher disease (0)
GAUCHER = {"diagnosis": ["Gaucher disease"], "orpha_id": "355"}  # parent: Sphingolipidosis (17 diseases)
LCHAD = {"diagnosis": ["Long chain 3-hydroxyacyl-CoA dehydrogenase deficiency"], "orpha_id": "5"}


def test_partial_credit_for_a_small_parent_group_only(hypernym_json):
    options = {"hierarchy": str(hypernym_json)}
    score = lambda answer, truth, **kw: compute_score("rare_arena", r1(answer), truth, **options, **kw)  # noqa: E731
    assert score("Gaucher disease type 1", GAUCHER_1)["score"] == 1.0
    result = score("Gaucher disease", GAUCHER_1)
    assert (result["score"], result["acc"], result["rank"]) == (pytest.approx(0.3), 0, 0)
    assert score("Type I Gaucher's disease", GAUCHER_1)["score"] == 1.0
    assert score("3-Hydroxyacyl-CoA dehydrogenase deficiency", LCHAD)["score"] == pytest.approx(0.3)
    # broader groups (17 or 54 diseases), siblings and children earn nothing
    assert score("Sphingolipidosis", GAUCHER_1)["score"] == pytest.approx(0.1)
    assert score("Sphingolipidosis", GAUCHER)["score"] == pytest.approx(0.1)
    assert score("Rare hereditary metabolic disease with peripheral neuropathy", LCHAD)["score"] == pytest.approx(0.1)
    assert score("Gaucher disease type 2", GAUCHER_1)["score"] == pytest.approx(0.1)
    assert score("Hyperinsulinism due to short chain 3-hydroxylacyl-CoA dehydrogenase deficiency",
                 LCHAD)["score"] == pytest.approx(0.1)
    assert score("Gaucher disease type 1", GAUCHER)["score"] == pytest.approx(0.1)
    # a list or a negation of the parent is no partial answer; no orpha_id, no credit
    assert score("Gaucher disease; Fabry disease", GAUCHER_1)["score"] < 0.1
    assert score("Not Gaucher disease", GAUCHER_1)["score"] == pytest.approx(0.1)
    assert score("Gaucher disease", {"diagnosis": ["Gaucher disease type 1"]})["score"] == pytest.approx(0.1)
    assert score("Gaucher disease", dict(GAUCHER_1, orpha_id="999999999"))["score"] == pytest.approx(0.1)
    # N and the level are configurable; a group over N never pays
    assert score("Sphingolipidosis", GAUCHER, partial_max_diseases=17)["score"] == pytest.approx(0.3)
    assert score("Gaucher disease", GAUCHER_1, partial_credit=0.5)["score"] == pytest.approx(0.5)
    assert score("3-Hydroxyacyl-CoA dehydrogenase deficiency", LCHAD, partial_max_diseases=1)["score"] \
        == pytest.approx(0.1)
    # without a hierarchy there is no partial credit
    assert compute_score("rare_arena", r1("Gaucher disease"), GAUCHER_1)["score"] == pytest.approx(0.1)


def test_partial_credit_lies_strictly_between_wrong_and_correct(hypernym_json):
    for value in (0.1, 1.0, 0.05, 1.5):
        with pytest.raises(ConfigError, match="partial_credit"):
            RewardConfig(hierarchy=str(hypernym_json), partial_credit=value)
    with pytest.raises(ConfigError, match="hierarchy"):
        reward.resolve_config(preset="original", hierarchy=str(hypernym_json))
    with pytest.raises(ConfigError, match="partial_max_diseases"):
        RewardConfig(hierarchy=str(hypernym_json), partial_max_diseases=-1)
    # with the penalties, a partial answer still ranks between a clean wrong and a clean right answer
    scores = [compute_score("rare_arena", r1(a), GAUCHER_1, hierarchy=str(hypernym_json))["score"]
              for a in ("Fabry disease", "Gaucher disease", "Gaucher disease type 1")]
    assert scores == sorted(set(scores))


def test_partial_credit_in_top_k_mode(hypernym_json):
    options = {"hierarchy": str(hypernym_json), "topk": 5}
    score = lambda answer: compute_score("rare_arena", r1(answer), GAUCHER_1, **options)  # noqa: E731
    assert score("1. Gaucher disease type 1\n2. Gaucher disease")["score"] == 1.0
    assert score("1. Fabry disease\n2. Gaucher disease")["score"] == pytest.approx(0.1 + 0.2 / 2)
    # a parent above the right name pays at least what dropping the right name would
    above = score("1. Gaucher disease\n2. Fabry disease\n3. Wilson disease\n4. Krabbe disease\n"
                  "5. Gaucher disease type 1")
    assert above["acc"] == 1 and above["score"] == pytest.approx(0.3)
    assert score("1. Fabry disease\n2. Sphingolipidosis")["score"] == pytest.approx(0.1)


def test_hierarchy_is_loaded_once_and_lookups_are_cached(hypernym_json):
    reward._partial_names.cache_clear()
    for _ in range(50):
        compute_score("rare_arena", r1("Gaucher disease"), GAUCHER_1, hierarchy=str(hypernym_json))
    info = reward._partial_names.cache_info()
    assert (info.misses, info.hits) == (1, 49)
    assert reward.load_hierarchy(hypernym_json) is reward.load_hierarchy(str(hypernym_json))


def test_trl_functions_carry_partial_credit_and_log_its_rate(hypernym_json):
    config = reward.resolve_config(preset="clinical", hierarchy=str(hypernym_json))
    funcs, weights = make_trl_reward_funcs(config)
    completions = [r1("Gaucher disease"), r1("Gaucher disease type 1"), r1("Fabry disease"), r1("Sphingolipidosis")]
    columns = {"reward_model": [{"ground_truth": GAUCHER_1}] * 4}
    logged = {}
    levels = funcs[0](None, completions, log_metric=logged.__setitem__, **columns)
    assert levels == pytest.approx([0.3, 1.0, 0.1, 0.1])
    assert logged["partial_credit_rate"] == 0.25
    totals = [sum(w * f(None, completions, **columns)[i] for f, w in zip(funcs, weights, strict=True))
              for i in range(4)]
    direct = [compute_score("rare_arena", c, GAUCHER_1, config=config)["score"] for c in completions]
    assert totals == pytest.approx(direct)
    assert "partial_credit_rate" not in _logged_without_hierarchy(completions, columns)


def _logged_without_hierarchy(completions, columns) -> dict:
    logged = {}
    make_trl_reward_funcs(PRESETS["clinical"])[0][0](None, completions, log_metric=logged.__setitem__, **columns)
    return logged
