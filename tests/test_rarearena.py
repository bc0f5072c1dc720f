"""RareArena's judging, byte for byte: requests checked against the local fake judge server.

The expected prompts here are written from REFERENCE.md §2 (RareArena's public code), independently
of `diagnosis_zero.rarearena`: the strings are copied into this file and the score-2 / score-1
lists are written out by hand from orphanet_hypernym.json.
"""

import json
from pathlib import Path

import pytest

from diagnosis_zero import cli, rarearena
from diagnosis_zero.rarearena import parse_scores, rarearena_table, top_scores

HIERARCHY = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "orphanet_hypernym.json"

ORIGINAL = "\nYou are an expert in rare disease field. You will receive a student's answer containing 5 differential diagnoses, as well as the reference diagnosis. You need to score each diagnosis from the student's answer according to the following rules:\n\n2 = The student\u2019s diagnosis exactly matches the reference diagnosis; \n1 = The student\u2019s diagnosis is a broad category that includes the reference diagnosis; \n0 = The student's diagnosis does not meet the criteria for a score of 1 or 2.\n\nHere is the student\u2019s answer: \n{answer}\n\nHere is the reference diagnosis: \n{diagnosis}\n\nOutput Format: Output the scores in the following format. \n1. Disease 1 name: score X;\n2. Disease 2 name: score X;\n...\n"
UPDATED = "\n**Task:** Evaluate the student's answer by comparing it with the reference diagnoses and assign scores according to the criteria below.\n\n**Scoring Criteria:**\n- Score 2: Assign this score if the student's answer exactly matches, or is a strict synonym or clear equivalent of, any diagnosis in the Score 2 Set.\n- Score 1: Assign this score only if Score 2 is not met, and the student's answer exactly matches, or is a strict synonym or clear equivalent of, any diagnosis in the Score 1 Set.\n- Score 0: Assign this score if the student's answer does not match any diagnosis in either set.\n\n**Reference Diagnoses:**\n- Score 2 Set: {score2_set}\n- Score 1 Set: {score1_set}\n\n**Student's Answer:**\n{answer}\n\n**Output Format:**\n1. Disease 1 name: score X;\n2. Disease 2 name: score X;\n...\n"
UPDATED_NO_SCORE1 = "\n**Task:** Evaluate the student's answer by comparing it with the reference diagnoses and assign scores according to the criteria below.\n\n**Scoring Criteria:**\n- Score 2: Assign this score if the student's answer exactly matches, or is a strict synonym or clear equivalent of, any diagnosis in the Score 2 Set.\n- Score 0: Assign this score if the student's answer does not match any diagnosis in the Score 2 set.\n\n**Reference Diagnoses:**\n- Score 2 Set: {score2_set}\n\n**Student's Answer:**\n{answer}\n\n**Output Format:**\n1. Disease 1 name: score X;\n2. Disease 2 name: score X;\n...\n"
INFERENCE = "\nAs an expert in rare disease field, enumerate top 5 most likely diagnosis for the following patient in order, with the most likely disease output first. Only consider rare diseases.\n\nHere is the case: \n{case}\n\nOnly output the diagnosis in numeric order, one per line. For example:\n1. Disease A;\n2. Disease B;\n...\n\nDo not output anything else!\n"

TETRASOMY_PARENTS = ("['Polysomy of X chromosome syndrome', 'Rare female infertility due to an anomaly of ovarian "
                     "function of genetic origin', 'Rare female infertility due to an anomaly of ovarian function']")


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")


def case(case_id, completion, diagnosis, orpha_id, orpha_name=None, raw=False, prediction=None):
    """An `evaluate` line; references = [diagnosis, Orpha_name] with the case's diagnosis first."""
    references = [diagnosis] + ([orpha_name] if orpha_name and orpha_name.lower() != diagnosis.lower() else [])
    record = {"id": case_id, "sample": 0, "completion": completion, "references": references,
              "orpha_id": orpha_id, "prediction": prediction if prediction is not None else ["x"] * 5,
              "model": "m", "step": 0}
    if raw:
        record["answer_source"] = "raw"
    return record


def run_judge(tmp_path, server, cases, protocol, *extra, output="out.jsonl", orphanet=HIERARCHY):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(c) + "\n" for c in cases))
    argv = ["judge", "--input", str(inp), "--output", str(tmp_path / output), "--base-url", server.base_url,
            "--judge-model", "gpt-4o", "--cache", str(tmp_path / "cache.sqlite"), "--protocol", protocol,
            "--orphanet", str(orphanet), *extra]
    assert cli.main(argv) == 0
    return [json.loads(line) for line in (tmp_path / output).read_text().splitlines()]


def expected_body(prompt: str) -> dict:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}],
            "temperature": 0.1, "max_tokens": 4096}


def received(server) -> dict[str, dict]:
    """Return answer -> request body, asserting one request per answer."""
    bodies = {r.prediction: r.body for r in server.requests}
    assert len(bodies) == len(server.requests)
    return bodies


def test_prompt_strings_are_rareArenas_bytes():
    assert rarearena.JUDGE_PROMPT_ORIGINAL == ORIGINAL
    assert rarearena.JUDGE_PROMPT_UPDATED == UPDATED
    assert rarearena.JUDGE_PROMPT_UPDATED_NO_SCORE1 == UPDATED_NO_SCORE1
    assert rarearena.INFERENCE_PROMPT == INFERENCE
    assert ORIGINAL.count("\u2019") == 3 and "student's diagnosis does not" in ORIGINAL
    assert (rarearena.JUDGE_TEMPERATURE, rarearena.JUDGE_MAX_TOKENS) == (0.1, 4096)


def test_updated_protocol_requests_equal_rarearenas_byte_for_byte(tmp_path, server):
    lchad = "Long chain 3-hydroxyacyl-CoA dehydrogenase deficiency"
    cases = [
        # the Orphanet name differs from the diagnosis: both in score 2; the parents of ORPHA:5 naming
        # at most 10 diseases (2, 6 and 9; not 54 or 38) in file order. A tagged model: the answer block.
        case("differs", "<think>lipid</think>\n<answer>\n1. LCHAD deficiency\n2. Fabry disease\n</answer>",
             "LCHAD deficiency", "5", lchad),
        # the name equals the diagnosis ignoring case: score 2 keeps the diagnosis only; the parents
        # come in file order, which sorting would change. RareArena-prompt output: raw and stripped.
        case("case-equal", "\n 1. Tetrasomy X syndrome;\n2. Turner syndrome;\n\n", "tetrasomy X syndrome", "9",
             "Tetrasomy X syndrome", raw=True),
        # no parent names 10 or fewer diseases (the only one names 25): the 2/0 prompt
        case("no-parents", "1. Isovaleric acidemia;", "3-Methylcrotonyl-CoA carboxylase deficiency", "6",
             "3-methylcrotonyl-CoA carboxylase deficiency", raw=True),
        # an id missing from the file: the diagnosis text stands in for the name, and its parents are
        # those of the entity of exactly that name
        case("missing-named", "1. Klinefelter syndrome;", "Tetrasomy X syndrome", "99999999", raw=True),
        case("missing", "1. Some disease;", "Unlisted rare disease", "99999998", raw=True),
        # a name holding apostrophes: Python's str(list) quotes it with double quotes
        case("quotes", "1. Erythrokeratodermia variabilis;", "Erythrokeratodermia en cocardes", "315",
             "Erythrokeratoderma ''en cocardes''", raw=True),
    ]
    judged = run_judge(tmp_path, server, cases, "rarearena-updated")
    expected = {
        "1. LCHAD deficiency\n2. Fabry disease": UPDATED.format(
            score2_set=f"['LCHAD deficiency', '{lchad}']",
            score1_set="['3-hydroxyacyl-CoA dehydrogenase deficiency', 'Fatty acid oxidation and ketogenesis "
                       "disorder with hypertrophic cardiomyopathy', 'Syndrome with hypoparathyroidism']",
            answer="1. LCHAD deficiency\n2. Fabry disease"),
        "1. Tetrasomy X syndrome;\n2. Turner syndrome;": UPDATED.format(
            score2_set="['tetrasomy X syndrome']", score1_set=TETRASOMY_PARENTS,
            answer="1. Tetrasomy X syndrome;\n2. Turner syndrome;"),
        "1. Isovaleric acidemia;": UPDATED_NO_SCORE1.format(
            score2_set="['3-Methylcrotonyl-CoA carboxylase deficiency']", answer="1. Isovaleric acidemia;"),
        "1. Klinefelter syndrome;": UPDATED.format(
            score2_set="['Tetrasomy X syndrome']", score1_set=TETRASOMY_PARENTS, answer="1. Klinefelter syndrome;"),
        "1. Some disease;": UPDATED_NO_SCORE1.format(score2_set="['Unlisted rare disease']", answer="1. Some disease;"),
        "1. Erythrokeratodermia variabilis;": UPDATED.format(
            score2_set="['Erythrokeratodermia en cocardes', \"Erythrokeratoderma ''en cocardes''\"]",
            score1_set="['Genetic erythrokeratoderma', 'Erythrokeratoderma']",
            answer="1. Erythrokeratodermia variabilis;"),
    }
    bodies = received(server)
    assert server.count() == len(cases)  # one request per case
    assert bodies == {answer: expected_body(prompt) for answer, prompt in expected.items()}
    by_id = {r["id"]: r["judge"] for r in judged}
    assert by_id["differs"]["answer_source"] == "answer_block" and by_id["case-equal"]["answer_source"] == "raw"
    assert by_id["differs"]["scores"] == [2, 0] and by_id["case-equal"]["scores"] == [2, 0]
    assert by_id["differs"]["top1"] == 2 and by_id["differs"]["topk"] == 2
    assert by_id["differs"]["raw"] == "1. LCHAD deficiency: score 2;\n2. Fabry disease: score 0;"


def test_updated_protocol_keeps_duplicate_parents_and_reads_parents_by_name(tmp_path, server):
    hierarchy = tmp_path / "orphanet_hypernym.json"
    hierarchy.write_text(json.dumps([
        {"Orphanetid": 1, "name": "Alpha disease", "type": "Disease", "parents": [
            {"parent": "Group Z", "parent_disease_count": 3}, {"parent": "Group A", "parent_disease_count": 10},
            {"parent": "Group Z", "parent_disease_count": 3}, {"parent": "Big group", "parent_disease_count": 11}]},
        {"Orphanetid": 2, "name": "Beta disease", "type": "Disease",
         "parents": [{"parent": "First beta group", "parent_disease_count": 2}]},
        {"Orphanetid": 3, "name": "Beta disease", "type": "Disease",
         "parents": [{"parent": "Last beta group", "parent_disease_count": 2}]},
    ]))
    cases = [case("dups", "1. Alpha;", "Alpha disease", "1", raw=True),
             case("same-name", "1. Beta;", "Beta disease", "2", raw=True)]
    run_judge(tmp_path, server, cases, "rarearena-updated", orphanet=hierarchy)
    assert received(server) == {
        # duplicates kept, file order, <= 10 inclusive
        "1. Alpha;": expected_body(UPDATED.format(score2_set="['Alpha disease']",
                                                  score1_set="['Group Z', 'Group A', 'Group Z']", answer="1. Alpha;")),
        # id -> name -> that name's parents: with two entities of one name, the last in the file wins
        "1. Beta;": expected_body(UPDATED.format(score2_set="['Beta disease']", score1_set="['Last beta group']",
                                                 answer="1. Beta;")),
    }


def test_original_protocol_requests_equal_rarearenas_byte_for_byte(tmp_path, server):
    cases = [case("a", "<answer>1. Gaucher disease\n2. Mitochondrial disorder</answer>", "LCHAD deficiency", "5",
                  "Long chain 3-hydroxyacyl-CoA dehydrogenase deficiency"),
             case("b", "  1. Tetrasomy X syndrome;\n2. Turner syndrome;\n", "tetrasomy X syndrome", "9", raw=True)]
    judged = run_judge(tmp_path, server, cases, "rarearena")
    assert server.count() == 2
    # the diagnosis only, never the Orphanet name
    assert received(server) == {
        "1. Gaucher disease\n2. Mitochondrial disorder": expected_body(ORIGINAL.format(
            answer="1. Gaucher disease\n2. Mitochondrial disorder", diagnosis="LCHAD deficiency")),
        "1. Tetrasomy X syndrome;\n2. Turner syndrome;": expected_body(ORIGINAL.format(
            answer="1. Tetrasomy X syndrome;\n2. Turner syndrome;", diagnosis="tetrasomy X syndrome")),
    }
    assert [r["judge"]["scores"] for r in judged] == [[0, 1], [2, 0]]
    assert [(r["judge"]["top1"], r["judge"]["topk"]) for r in judged] == [(0, 1), (2, 2)]


@pytest.mark.parametrize("reply, scores", [
    ("1. A: score 2;\n2. B: score 0;\n3. C: score 1;\n4. D: score 0;\n5. E: score 0;", [2, 0, 1, 0, 0]),
    ("1. A: score 0;\n2. B: score 1;", [0, 1]),
    # RareArena's regex is case-sensitive and wants "score N": "Score: 2" yields nothing
    ("1. A: Score: 2;\n2. B: Score 1;", []),
    ("1. A: **score 2**;", [2]),
    ("I cannot grade this.", []),
    ("", []),
    (None, []),
])
def test_parse_scores_is_rarearenas_regex(reply, scores):
    assert parse_scores(reply) == scores


def test_top_scores():
    assert top_scores([0, 1, 2, 0, 0, 2]) == (0, 2)
    assert top_scores([0, 0, 0, 0, 0, 2]) == (0, 0)  # only the first five count
    assert top_scores([1]) == (1, 1)
    assert top_scores([]) == (None, None)


def test_unreadable_and_short_replies_are_recorded_apart(tmp_path, server, capsys):
    cases = [case("five", "1. A;\n2. B;\n3. C;\n4. D;\n5. E;", "E", "", raw=True),
             case("short", "1. F;\n2. G;\n3. H;\n4. I;\n5. J;", "G", "", raw=True),
             case("capital", "1. K;\n2. L;\n3. M;\n4. N;\n5. O;", "K", "", raw=True),
             case("none", "1. P;\n2. Q;\n3. R;\n4. S;\n5. T;", "P", "", raw=True)]
    server.answer_override["1. F;\n2. G;\n3. H;\n4. I;\n5. J;"] = "1. F: score 0;\n2. G: score 2;"
    server.answer_override["1. K;\n2. L;\n3. M;\n4. N;\n5. O;"] = "1. K: Score: 2;\n2. L: Score: 0;"
    server.answer_override["1. P;\n2. Q;\n3. R;\n4. S;\n5. T;"] = "I cannot grade this."
    judged = {r["id"]: r["judge"] for r in run_judge(tmp_path, server, cases, "rarearena")}
    assert judged["five"]["scores"] == [0, 0, 0, 0, 2] and not judged["five"]["short_reply"]
    assert (judged["five"]["top1"], judged["five"]["topk"]) == (0, 2)
    assert judged["short"]["scores"] == [0, 2] and judged["short"]["short_reply"] is True
    assert judged["short"]["num_scores"] == 2 and judged["short"]["error"] is None
    for name in ("capital", "none"):  # no `score N`: an error with the raw text, never 0
        assert judged[name]["score"] is None and judged[name]["error"].startswith("judge_error")
        assert judged[name]["raw"] and judged[name]["num_scores"] == 0
    out = capsys.readouterr().out
    assert "short replies (fewer scores than items): 1" in out and "judge errors: 2" in out
    # errors are not cached: --retry-errors asks exactly those again
    server.answer_override.clear()
    server.reset_log()
    run_judge(tmp_path, server, cases, "rarearena", "--retry-errors")
    assert sorted(server.predictions()) == ["1. K;\n2. L;\n3. M;\n4. N;\n5. O;", "1. P;\n2. Q;\n3. R;\n4. S;\n5. T;"]


def test_rerun_is_served_from_the_cache_and_the_caches_never_mix(tmp_path, server):
    cases = [case(f"c{i}", f"<answer>1. Disease {i}\n2. Tetrasomy X syndrome</answer>", "Tetrasomy X syndrome", "9")
             for i in range(6)]
    cases.append(case("dup", "<answer>1. Disease 0\n2. Tetrasomy X syndrome</answer>", "Tetrasomy X syndrome", "9"))
    first = run_judge(tmp_path, server, cases, "rarearena-updated")
    assert server.count() == 6  # the duplicate request is sent once
    server.reset_log()
    again = run_judge(tmp_path, server, cases, "rarearena-updated", output="again.jsonl")
    assert server.count() == 0  # a verbatim re-run makes no HTTP request
    assert all(r["judge"]["cached"] for r in again)
    assert [r["judge"]["scores"] for r in again] == [r["judge"]["scores"] for r in first]
    # another protocol is another request: nothing is served across them, in either direction
    run_judge(tmp_path, server, cases, "rarearena", output="original.jsonl")
    assert server.count() == 6
    server.reset_log()
    item_cases = [dict(c, prediction=f"Disease {i}") for i, c in enumerate(cases[:3])]
    run_judge(tmp_path, server, item_cases, "item", output="item.jsonl")
    assert server.count() == 3
    server.reset_log()
    run_judge(tmp_path, server, item_cases, "item", output="item2.jsonl")
    assert server.count() == 0
    other = [case("n", "<answer>1. Disease 1</answer>", "Tetrasomy X syndrome", "9", prediction="Disease 1")]
    run_judge(tmp_path, server, other, "rarearena-updated", output="new.jsonl")
    assert server.count() == 1  # the item "Disease 1" is cached per item, never served to a verbatim protocol


def test_verbatim_protocols_refuse_other_sampling(tmp_path, server, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps(case("a", "1. A;", "A", "", raw=True)) + "\n")
    argv = ["judge", "--input", str(inp), "--output", str(tmp_path / "o.jsonl"), "--base-url", server.base_url,
            "--cache", str(tmp_path / "c.sqlite"), "--protocol", "rarearena", "--temperature", "0"]
    assert cli.main(argv) == 2
    assert "RareArena's 0.1" in capsys.readouterr().err and server.count() == 0


def test_table_in_rarearenas_layout():
    def line(protocol, scores, error=None, short=False):
        return {"judge": {"protocol": protocol, "score": scores[0] if scores and not error else None,
                          "scores": scores, "error": error, "short_reply": short}}

    records = [line("rarearena", [2, 0, 0, 0, 0]), line("rarearena", [0, 1, 0, 0, 0]),
               line("rarearena", [0, 0, 0, 0, 2], short=False), line("rarearena", [1, 2], short=True),
               line("rarearena", [], error="judge_error: reply holds no `score N`"),
               line("item", [0, 2])]
    rows = {row["protocol"]: row for row in rarearena_table(records)}
    original = rows["rarearena"]
    assert original["comparable"] and not rows["item"]["comparable"]
    assert (original["lines"], original["judged"], original["errors"], original["short_replies"]) == (5, 4, 1, 1)
    assert original["top1"] == {0: 0.5, 1: 0.25, 2: 0.25, "total": 0.5}
    assert original["topk"] == {0: 0.0, 1: 0.25, 2: 0.75, "total": 1.0}
    assert rows["item"]["top1"][0] == 1.0 and rows["item"]["topk"][2] == 1.0


def test_metrics_prints_rarearenas_table_and_flags_the_item_protocol(tmp_path, server, capsys):
    cases = [case("a", "1. Tetrasomy X syndrome;\n2. B;", "Tetrasomy X syndrome", "9", raw=True,
                  prediction=["Tetrasomy X syndrome", "B"]),
             case("b", "1. Turner syndrome;\n2. Tetrasomy X syndrome;", "Tetrasomy X syndrome", "9", raw=True,
                  prediction=["Turner syndrome", "Tetrasomy X syndrome"]),
             case("c", "1. A;", "Tetrasomy X syndrome", "9", raw=True, prediction=["A"])]
    server.answer_override["1. A;"] = "no score here"
    run_judge(tmp_path, server, cases, "rarearena", output="step-0.judged.jsonl")
    capsys.readouterr()
    assert cli.main(["metrics", "--input", str(tmp_path / "step-0.judged.jsonl"), "--layout", "rarearena"]) == 0
    out = capsys.readouterr().out
    header, _, row = out.splitlines()[:3]
    assert "top-1 score 2" in header and "top-5 Total" in header and "judge errors" in header
    # 2 judged cases: top-1 = [2, 0] -> 50% / 50%; top-5 = [2, 2] -> 100%; 1 error left out of the shares
    assert row.split()[:3] == ["m", "step", "0"] and "rarearena" in row
    assert row.split()[-11:] == ["50.00%", "0.00%", "50.00%", "50.00%", "0.00%", "0.00%", "100.00%", "100.00%",
                                 "2", "1", "0"]
    assert "not comparable" not in out
    # a file judged per item: the table and the plain metrics say it is not RareArena's number
    items = [dict(c, prediction="Tetrasomy X syndrome") for c in cases]
    run_judge(tmp_path, server, items, "item", output="step-1.judged.jsonl")
    capsys.readouterr()
    assert cli.main(["metrics", "--input", str(tmp_path / "step-1.judged.jsonl"), "--layout", "rarearena"]) == 0
    assert "item (not comparable with RareArena's published numbers)" in capsys.readouterr().out
    assert cli.main(["metrics", "--input", str(tmp_path / "step-1.judged.jsonl")]) == 0
    assert "not comparable with RareArena's published numbers" in capsys.readouterr().out
