import io
from pathlib import Path

import pytest

from diagnosis_zero import cli
from diagnosis_zero.diagnose import describe
from diagnosis_zero.reward import load_lexicon

HIERARCHY = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "orphanet_hypernym.json"
CASE = "A 4-year-old boy with hypoketotic hypoglycaemia, cardiomyopathy and pigmentary retinopathy."


def test_describe_shows_reasoning_answer_and_orphanet_entry():
    lexicon = load_lexicon(HIERARCHY)
    completion = ("<think>Hypoketotic hypoglycaemia with retinopathy points to a fatty acid oxidation defect."
                  "</think>\n<answer>long-chain 3-hydroxyacyl-CoA dehydrogenase deficiency</answer>")
    text = describe(completion, lexicon)
    assert text.splitlines()[:2] == ["Reasoning:", "Hypoketotic hypoglycaemia with retinopathy points to a "
                                     "fatty acid oxidation defect."]
    assert "Answer: long-chain 3-hydroxyacyl-CoA dehydrogenase deficiency" in text
    assert "-> ORPHA:5 Long chain 3-hydroxyacyl-CoA dehydrogenase deficiency" in text
    unknown = describe("<think>x</think><answer>Made-up syndrome</answer>", lexicon)
    assert "Made-up syndrome -> not found in orphanet_hypernym.json" in unknown


def test_describe_ranked_list_and_missing_answer():
    ranked = describe("<think>x</think><answer>\n1. Fabry disease\n2. Gaucher disease\n</answer>", ranked=True)
    assert "Answer (ranked):\n  1. Fabry disease\n  2. Gaucher disease" in ranked
    none = describe("I think it is Fabry disease")
    assert "Reasoning:\nI think it is Fabry disease" in none and "Answer: (none" in none


def test_diagnose_a_case_file_with_a_real_model(tiny_model_dir, tmp_path, capsys):
    case = tmp_path / "case.txt"
    case.write_text(CASE)
    argv = ["diagnose", "--model", str(tiny_model_dir), "--case-file", str(case), "--max-new-tokens", "5",
            "--backend", "hf", "--lexicon", str(HIERARCHY), "--assistant-prefix", "<think>"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("Reasoning:\n") and "Answer" in out


def test_diagnose_reads_stdin(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(CASE + "\n"))
    assert cli.main(["diagnose", "--model", str(tiny_model_dir), "--max-new-tokens", "3", "--backend", "hf"]) == 0
    assert capsys.readouterr().out.startswith("Reasoning:\n")


@pytest.mark.parametrize("content, message", [("   \n", "the case text is empty"), (None, "file not found")])
def test_bad_case_file_is_a_clear_error(tiny_model_dir, tmp_path, capsys, content, message):
    case = tmp_path / "case.txt"
    if content is not None:
        case.write_text(content)
    assert cli.main(["diagnose", "--model", str(tiny_model_dir), "--case-file", str(case)]) == 2
    assert f"{case}: {message}" in capsys.readouterr().err
