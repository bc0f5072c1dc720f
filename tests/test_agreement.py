"""`diagnosis-zero agreement`: rule rewards against the judge's verdicts, on real judged files."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from diagnosis_zero import agreement, cli, reward

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "tests" / "fixtures" / "runs" / "results"
PRODUCT1 = REPO / "tests" / "fixtures" / "orphanet" / "en_product1.xml"
JUDGED = sorted(RESULTS.glob("*/step-*.judged.jsonl"))


def _records():
    return [record for path in JUDGED for _, record in agreement.read_judged(path)]


def test_the_fixture_holds_judged_files():
    assert len(JUDGED) == 4 and len(_records()) == 32


def test_cohen_kappa_textbook_example():
    # 50 items: both yes 20, A yes/B no 5, A no/B yes 10, both no 15 -> po 0.7, pe 0.5, kappa 0.4
    assert agreement.cohen_kappa(Counter({(1, 1): 20, (1, 0): 5, (0, 1): 10, (0, 0): 15})) == pytest.approx(0.4)
    assert agreement.cohen_kappa(Counter({(1, 1): 3})) is None  # chance agreement is total
    assert agreement.cohen_kappa(Counter()) is None


def test_disagrees_follows_each_methods_own_scale(hypernym_json):
    records = {(r["id"], r["model"], r.get("step")): r for r in _records()}
    wrong_subtype = next(r for r in records.values() if judged(r) == "Gaucher disease type 2")
    assert wrong_subtype["judge"]["score"] == 0
    assert agreement.disagrees(wrong_subtype, "seed") is True  # the seed matcher's known false positive
    assert agreement.disagrees(wrong_subtype, "clinical") is False
    acronym = next(r for r in records.values() if judged(r) == "NF1")
    assert agreement.disagrees(acronym, "seed") is True and agreement.disagrees(acronym, "clinical") is False
    # the judge's 1 is a 0 for a method without partial credit, a disagreement for clinical+partial
    broader = next(r for r in records.values() if r["judge"]["score"] == 1)
    assert agreement.disagrees(broader, "clinical") is False
    config = reward.resolve_config(hierarchy=str(hypernym_json))
    assert agreement.disagrees(broader, config) is (agreement.rule_grade(broader, config) != 1)
    unjudged = dict(broader, judge={"score": None, "error": "judge_error"})
    assert agreement.disagrees(unjudged, "clinical") is None
    with pytest.raises(reward.ConfigError, match="clinical\\+partial"):
        agreement.disagrees(broader, "clinical+partial")  # needs --orphanet


def judged(record) -> str:
    if isinstance(record, str):
        record = {"completion": record, "references": [], "judge": {"score": 0}}
    return agreement.judged_answer(record)


def test_partial_credit_agrees_with_a_judges_score_1_on_a_small_parent(hypernym_json, tmp_path):
    line = dict(_records()[0], completion="<think>r</think><answer>Gaucher disease</answer>",
                prediction="gaucher disease", references=["Gaucher disease type 1"], orpha_id="77259",
                judge={"score": 1, "scores": [1], "raw": "Score: 1", "error": None, "cached": False})
    assert agreement.rule_grade(line, reward.resolve_config(hierarchy=str(hypernym_json))) == 1
    assert agreement.disagrees(line, "clinical+partial", orphanet=[str(hypernym_json)]) is False
    assert agreement.disagrees(line, "clinical") is False  # judge 1 -> 0, rule 0
    assert agreement.disagrees(dict(line, judge=dict(line["judge"], score=0)), "clinical+partial",
                               orphanet=[str(hypernym_json)]) is True


def test_the_graded_answer_is_the_one_the_judges_top1_score_is_about():
    base = {"references": ["Fabry disease"], "judge": {"score": 2}}
    assert judged("<think>r</think><answer>Fabry disease</answer>") == "Fabry disease"
    assert agreement.judged_answer(dict(base, prediction=["Fabry disease", "Gaucher disease"])) == "Fabry disease"
    raw = dict(base, completion="1. Fabry disease\n2. Gaucher disease", prediction="",
               judge={"score": 2, "answer_source": "raw"})
    assert agreement.judged_answer(raw) == "Fabry disease"
    assert agreement.disagrees(raw, "clinical") is False
    assert agreement.judged_answer(dict(base, completion="no tags", prediction="fabry disease")) == "fabry disease"


def test_measure_counts_match_disagrees_on_every_line(hypernym_json):
    configs = agreement.method_configs([str(hypernym_json), str(PRODUCT1)])
    assert list(configs) == list(agreement.METHOD_NAMES)
    assert configs["clinical+lexicon"].lexicon == str(PRODUCT1)  # synonyms from product 1 when given
    assert configs["clinical+partial"].hierarchy == str(hypernym_json)
    stats, rows, unjudged = agreement.measure(JUDGED, configs)
    records = _records()
    assert unjudged == 0
    for entry in stats:
        config = configs[entry.method]
        assert entry.n == len(records)
        assert entry.tp + entry.fn == sum(r["judge"]["score"] == 2 for r in records)
        assert entry.tp + entry.fp == sum(agreement.rule_grade(r, config) == 2 for r in records)
        expected = sum(agreement.disagrees(r, config) for r in records)
        assert entry.disagreements == expected == sum(row["method"] == entry.method for row in rows)
        po = (entry.tp + entry.tn) / entry.n
        pe = ((entry.tp + entry.fp) * (entry.tp + entry.fn) + (entry.fn + entry.tn) * (entry.fp + entry.tn)) \
            / entry.n ** 2
        assert entry.kappa == pytest.approx((po - pe) / (1 - pe))
    by_name = {s.method: s for s in stats}
    # the clinical matcher fixes the seed matcher's errors on these files
    assert by_name["seed"].kappa < by_name["clinical"].kappa
    assert by_name["clinical"].fp == 0 and by_name["seed"].fp >= 1


def test_cli_prints_the_table_and_writes_its_files(hypernym_json, tmp_path, capsys):
    out = tmp_path / "agreement"
    code = cli.main(["agreement", "--results", *map(str, sorted(RESULTS.iterdir())), "--orphanet", str(hypernym_json), str(PRODUCT1),
                     "--output-dir", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "4 judged file(s), 32 graded lines" in printed
    for name in agreement.METHOD_NAMES:
        assert f"\n{name} " in printed
    table = list(csv.DictReader((out / "agreement.csv").open(encoding="utf-8")))
    assert [row["method"] for row in table] == list(agreement.METHOD_NAMES)
    rows = list(csv.DictReader((out / "disagreements.csv").open(encoding="utf-8")))
    assert len(rows) == sum(int(row["disagreements"]) for row in table)
    assert {"method", "file", "line", "answer", "references", "rule_grade", "judge_score"} <= set(rows[0])
    assert "| method |" in (out / "agreement.md").read_text(encoding="utf-8")
    # a single file; the old --hierarchy spelling still works
    assert cli.main(["agreement", "--results", str(JUDGED[0]), "--hierarchy", str(hypernym_json)]) == 0
    assert "clinical+partial" in capsys.readouterr().out


def test_bad_input_names_file_line_and_field(tmp_path, capsys):
    bad = tmp_path / "step-1.judged.jsonl"
    lines = JUDGED[0].read_text(encoding="utf-8").splitlines()
    second = json.loads(lines[1])
    second["judge"]["score"] = "high"
    bad.write_text("\n".join([lines[0], json.dumps(second)] + lines[2:]) + "\n", encoding="utf-8")
    assert cli.main(["agreement", "--results", str(bad)]) == 2
    assert f"{bad}:2: field 'judge.score'" in capsys.readouterr().err
    unjudged = tmp_path / "step-2.jsonl"
    shutil.copy(RESULTS / "qwen2.5-7b-instruct" / "step-0.jsonl", unjudged)
    assert cli.main(["agreement", "--results", str(unjudged)]) == 2
    assert f"{unjudged}:1: field 'judge'" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["agreement", "--results", str(empty)]) == 2
    assert cli.main(["agreement", "--results", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err


def test_agreement_runs_on_the_base_install():
    """The verb needs no training stack: importing it loads neither torch nor transformers."""
    import subprocess
    import sys

    code = ("import sys; import diagnosis_zero.agreement; "
            "print([m for m in ('torch', 'transformers', 'numpy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_torn_last_line_is_skipped_as_every_reader_does(tmp_path, capsys):
    torn = tmp_path / "step-3.judged.jsonl"
    text = JUDGED[0].read_text(encoding="utf-8")
    torn.write_text(text + text.splitlines()[0][:40], encoding="utf-8")  # a judge still writing
    assert cli.main(["agreement", "--results", str(tmp_path)]) == 0
    assert "8 graded lines" in capsys.readouterr().out
