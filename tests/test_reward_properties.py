"""Property tests: no input makes the reward raise or breaks its invariants (speed: benchmarks/bench_reward.py)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diagnosis_zero import reward
from diagnosis_zero.reward import (
    compute_score,
    is_mixed_language,
    match_diagnosis,
    normalize_diagnosis,
    parse_completion,
    parse_ranked_list,
    similarity,
)

SCORE_KEYS = {"score", "acc", "format", "pred", "think_present", "mixed_language", "rank"}
TAGS = ["<think>", "</think>", "<answer>", "</answer>", "<answer", "answer>", "\n", " ", ";", " or ", "1. ",
        "type II", "(DLBCL)", "Gaucher disease", "not ", "日本語", "é", "β", "el paciente y la ", "'s", "-", "..."]
# Text built from the pieces that drive the parser and matcher, mixed with arbitrary Unicode.
completions = st.lists(st.one_of(st.sampled_from(TAGS), st.text(max_size=20)), max_size=40).map("".join)
ground_truths = st.one_of(
    st.none(), st.text(max_size=40), st.lists(st.text(max_size=30), max_size=3),
    st.fixed_dictionaries({"diagnosis": st.lists(st.one_of(st.text(max_size=30), st.none()), max_size=3),
                           "orpha_id": st.one_of(st.none(), st.text(max_size=8), st.integers(), st.floats())}),
    st.builds(lambda names: '{"diagnosis": ' + names + '}', st.text(max_size=20)),  # possibly broken JSON
)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(completions, ground_truths, st.sampled_from([{}, {"preset": "original"}, {"topk": 5}, {"method": "seed"}]))
def test_compute_score_never_raises_and_keeps_its_keys(completion, truth, kwargs):
    result = compute_score(data_source="rare_arena", solution_str=completion, ground_truth=truth, **kwargs)
    assert set(result) == SCORE_KEYS
    assert isinstance(result["score"], float) and result["score"] == result["score"]
    assert result["acc"] in (0, 1) and result["format"] in (0, 1)
    assert result["score"] <= 1.0


@FAST
@given(completions, st.lists(completions, max_size=3), st.sampled_from(["clinical", "seed"]))
def test_matchers_never_raise(prediction, references, method):
    matched = match_diagnosis(prediction, references, method=method)
    graded = similarity(prediction, references, method=method)
    assert isinstance(matched, bool) and 0.0 <= graded <= 1.0
    if method == "clinical":
        assert matched == (graded >= 0.9)
    normalize_diagnosis(prediction)
    parse_ranked_list(prediction)
    is_mixed_language(prediction)


@FAST
@given(completions)
def test_a_name_always_matches_itself(name):
    if normalize_diagnosis(name):
        assert match_diagnosis(name, [name])


@FAST
@given(completions)
def test_parse_is_consistent_with_extract(completion):
    parsed = parse_completion(completion)
    if parsed.format_ok:
        assert parsed.answer and parsed.think_present and parsed.n_answer_blocks == 1
    assert reward.extract_answer(completion) == (parsed.answer or "")


ADVERSARIAL = {
    "unclosed answer tags": "<answer>",
    "nested think and answer": "<think><answer>x</think>",
    "long reasoning": "The patient presented with fever, rash and hepatosplenomegaly. ",
    "foreign function words": "el y la de que et les der und ",
    "accented letters": "é à ü ñ ",
    "list separators": "1. a; b or c / d\n",
    "punctuation runs": "....,,,;;;!!! ",
    "acronyms and parens": "DLBCL (NF1) MEN2A ((( ",
    "CJK": "日本語の診断",
    "whitespace": " \t\n ",
}


NAME_PATTERNS = ["final likely ", "most likely diagnosis is ", "type II ", "(DLBCL) ", "not ", "Gaucher's ",
                 "....", "a/b; ", "1. x ", "ae oe haem ", "DLBCL", "é β ", "ruled out "]



@settings(max_examples=len(ADVERSARIAL) * 2, deadline=None, derandomize=True)
@given(st.sampled_from(sorted(ADVERSARIAL)), st.sampled_from(["clinical", "original"]))
def test_adversarial_inputs_are_scored(pattern_name, preset):
    """Long repetitions of the patterns that drive the parser and matcher (their linear time is
    measured in benchmarks/bench_reward.py, which prints the growth ratio)."""
    text = ADVERSARIAL[pattern_name] * max(1, 128_000 // len(ADVERSARIAL[pattern_name]))
    for completion in (text, f"<think>r</think><answer>{text}</answer>"):
        result = compute_score(data_source="x", solution_str=completion,
                               ground_truth={"diagnosis": ["Gaucher disease"]}, preset=preset)
        assert set(result) == SCORE_KEYS and result["acc"] == 0


@settings(max_examples=len(NAME_PATTERNS), deadline=None, derandomize=True)
@given(st.sampled_from(NAME_PATTERNS))
def test_long_answers_never_match_by_repetition(unit):
    text = unit * (8 * max(1, 1_200 // len(unit)))
    assert not match_diagnosis(text, ["Gaucher disease type 1"])
    assert 0.0 <= similarity(text, ["Gaucher disease type 1"]) < 0.9


def test_pathological_inputs_are_scored():
    """The issue's examples: 50,000 unclosed <answer> tags and a 1 MB completion (timed in the benchmark)."""
    result = compute_score("x", "<answer>" * 50_000, {"diagnosis": ["Gaucher disease"]})
    assert result["acc"] == 0 and result["pred"] == ""
    big = "<think>" + "The patient has fever and rash. " * 32_000 + "</think><answer>Gaucher disease</answer>"
    assert len(big) > 1_000_000
    assert compute_score("x", big, {"diagnosis": ["Gaucher disease"]})["score"] == 1.0


@FAST
@given(completions, st.lists(completions, min_size=1, max_size=3))
def test_seed_pruning_gives_the_unpruned_decision(prediction, references):
    """The seed matcher skips difflib when a length bound rules a pass out: same decisions."""
    references = [r for r in references if r.strip()] or ["x"]
    unpruned = max(reward.seed_similarity(prediction.strip().lower(), r) for r in references) > 0.8
    assert match_diagnosis(prediction, references, method="seed") == unpruned


NAMES = ["Fabry disease", "Wilson disease", "Marfan syndrome", "Pompe disease", "Gaucher disease type 2",
         "Niemann-Pick disease type C", "DLBCL", "Lou Gehrig disease"]
TRUTH = {"diagnosis": ["Gaucher disease type 1"], "orpha_id": "77259"}
CLEAN_WRONG = compute_score("x", "<think>r</think><answer>Fabry disease</answer>", TRUTH)["score"]


@FAST
@given(st.lists(st.sampled_from(NAMES), min_size=1, max_size=6), st.integers(0, 6),
       st.sampled_from(["; ", " or ", "\n", ", ", " and ", " / ", " vs "]),
       st.sampled_from(["one answer", "many answers", "inside think", "think and answer"]))
def test_hacks_that_contain_the_right_name_never_beat_a_clean_wrong_answer(others, position, separator, shape):
    names = list(others)
    names.insert(min(position, len(names)), "Gaucher disease type 1")
    if shape == "one answer":
        completion = f"<think>r</think><answer>{separator.join(names)}</answer>"
    elif shape == "many answers":
        completion = "<think>r</think>" + "".join(f"<answer>{n}</answer>" for n in names)
    elif shape == "inside think":
        completion = f"<think>r <answer>{separator.join(names)}</answer></think>"
    else:
        completion = f"<think>r <answer>Gaucher disease type 1</answer></think><answer>{names[0]}</answer>"
    result = compute_score("rare_arena", completion, TRUTH)
    assert result["acc"] == 0
    assert result["score"] <= CLEAN_WRONG
