import json
from pathlib import Path

import pytest

from diagnosis_zero import cli
from diagnosis_zero.metrics import load_results, render, summarize, summarize_files


def line(acc=0, *, think=True, fmt=1, mixed=False, tokens=100, prediction="Gaucher disease", judge=None,
         **extra):
    record = {"id": "x", "sample": 0, "prediction": prediction, "references": ["Gaucher disease"],
              "acc": acc, "score": 1.0 if acc else 0.1, "format": fmt, "think_present": think,
              "mixed_language": mixed, "num_tokens": tokens, **extra}
    if judge is not None:
        record["judge"] = judge
    return record


def verdict(score, scores=None, error=None):
    return {"score": score, "scores": scores or [score], "raw": str(score), "error": error, "cached": False}


def write(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_summarize_counts_every_figure():
    records = [
        line(1, mixed=True, tokens=10, judge=verdict(2)),
        line(0, mixed=True, tokens=20, judge=verdict(2)),  # a synonym the rule missed
        line(0, tokens=30, judge=verdict(1)),
        line(0, think=False, tokens=40, judge=verdict(0)),  # answer only: dropped reasoning
        line(1, tokens=50, judge=verdict(None, error="judge_error: answer is not a score 2/1/0")),
        line(0, think=False, fmt=0, prediction="", tokens=1000),  # no answer, not judged
    ]
    summary = summarize(records)
    assert summary["n"] == 6
    assert summary["top1_rule"] == pytest.approx(2 / 6)
    assert summary["top5_rule"] is None and summary["top5_judge"] is None  # no list predictions
    # the judge error is excluded and counted, never scored as 0
    assert summary["n_judged"] == 4 and summary["judge_errors"] == 1
    assert summary["top1_judge"] == pytest.approx(2 / 4)
    assert summary["top1_judge_incl1"] == pytest.approx(3 / 4)
    assert summary["format_rate"] == pytest.approx(5 / 6)
    assert summary["think_rate"] == pytest.approx(4 / 6)
    assert summary["think_dropped_rate"] == pytest.approx(1 / 6)  # the answer-only line, not the empty one
    assert summary["mixed_language_rate"] == pytest.approx(2 / 6)
    assert summary["acc_mixed"] == pytest.approx(1 / 2)
    assert summary["acc_not_mixed"] == pytest.approx(1 / 4)
    assert summary["judge_acc_mixed"] == pytest.approx(1.0)
    assert summary["judge_acc_not_mixed"] == pytest.approx(0.0)
    assert summary["tokens_mean"] == pytest.approx(1150 / 6)
    assert summary["tokens_median"] == pytest.approx(35.0)
    assert summary["score_mean"] == pytest.approx((2 * 1.0 + 4 * 0.1) / 6)


def test_summarize_top5_lists():
    items = ["A", "B", "C", "D", "E"]
    records = [
        line(prediction=items, rank=1, judge=verdict(2, [2, 0, 0, 0, 0])),
        line(prediction=items, rank=3, judge=verdict(0, [0, 1, 2, 0, 0])),
        line(prediction=items, rank=0, judge=verdict(1, [1, 0, 0, 0, 0])),
        line(prediction=items, rank=None, judge=verdict(0, [0, 0, 0, None, 0], error="item 4: judge_error")),
    ]
    summary = summarize(records)
    assert summary["top1_rule"] == pytest.approx(1 / 4)
    assert summary["top5_rule"] == pytest.approx(2 / 4)
    assert summary["top1_judge"] == pytest.approx(1 / 3)
    assert summary["top5_judge"] == pytest.approx(2 / 3)
    assert summary["top5_judge_incl1"] == pytest.approx(3 / 3)
    assert summary["judge_errors"] == 1


def test_load_results_fills_model_and_step_from_the_path(tmp_path):
    path = write(tmp_path / "qwen-1.5b" / "step-500.judged.jsonl", [line(1), line(0, model="named", step=7)])
    records = load_results([path])
    assert [(r["model"], r["step"]) for r in records] == [("qwen-1.5b", 500), ("named", 7)]


def test_a_torn_last_line_is_ignored_but_a_bad_middle_line_is_an_error(tmp_path):
    path = write(tmp_path / "run" / "step-0.jsonl", [line(1), line(0)])
    path.write_text(path.read_text() + '{"id": "partial", "acc"')
    assert len(load_results([path])) == 2
    path.write_text('{"id": 1}\nnot json\n{"id": 2}\n')
    with pytest.raises(Exception, match=r"step-0.jsonl:2"):
        load_results([path])


def run_table(tmp_path):
    # 1.5B: 4.2% -> 8.1% judged top-1 over steps 0/500/1500; 7B: 15.9% -> 21.6%, no step 500
    figures = {"qwen2.5-1.5b": {0: 42, 500: 61, 1500: 81}, "qwen2.5-7b": {0: 159, 1500: 216}}
    paths = []
    for model, steps in figures.items():
        for step, correct in steps.items():
            records = [line(judge=verdict(2 if i < correct else 0), model=model, step=step) for i in range(1000)]
            paths.append(write(tmp_path / model / f"step-{step}.judged.jsonl", records))
    return paths


def test_several_files_give_model_rows_by_step_columns_with_gain(tmp_path, capsys):
    paths = run_table(tmp_path)
    assert cli.main(["metrics", "--input", *map(str, paths)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(x for x in lines if x.startswith("model"))
    assert header.split() == ["model", "step", "0", "step", "500", "step", "1500", "gain"]
    row_15 = next(x for x in lines if x.startswith("qwen2.5-1.5b "))
    assert row_15.split() == ["qwen2.5-1.5b", "4.2%", "6.1%", "8.1%", "+3.9"]
    row_7 = next(x for x in lines if x.startswith("qwen2.5-7b "))
    assert row_7.split() == ["qwen2.5-7b", "15.9%", "-", "21.6%", "+5.7"]
    assert "completion tokens, mean" in out  # the detail table follows

    assert cli.main(["metrics", "--format", "markdown", "--metric", "top1_judge", "--metric", "format_rate",
                     "--input", *map(str, paths)]) == 0
    markdown = capsys.readouterr().out
    assert "| qwen2.5-1.5b | 4.2% | 6.1% | 8.1% | +3.9 |" in markdown
    assert "| qwen2.5-7b | 100.0% | - | 100.0% | +0.0 |" in markdown

    assert cli.main(["metrics", "--format", "json", "--input", *map(str, paths)]) == 0
    summaries = json.loads(capsys.readouterr().out)
    assert [(s["model"], s["step"]) for s in summaries][:2] == [("qwen2.5-1.5b", 0), ("qwen2.5-1.5b", 500)]
    assert summaries[0]["top1_judge"] == pytest.approx(0.042)


def test_single_file_prints_one_column_and_dashes_for_missing_values(tmp_path, capsys):
    path = write(tmp_path / "run" / "step-0.jsonl", [line(1), line(0)])
    assert cli.main(["metrics", "--input", str(path)]) == 0
    out = capsys.readouterr().out
    assert "top-1, rule" in out and "50.0%" in out
    judge_row = next(x for x in out.splitlines() if x.startswith("top-1, judge (score 2) "))
    assert judge_row.split()[-1] == "-"  # not judged: unknown, not 0%


def test_render_table_is_stable_for_the_report_helper(tmp_path):
    summaries = summarize_files(run_table(tmp_path))
    assert render(summaries, "markdown", ["top1_judge"]).startswith("top-1, judge (score 2)\n\n| model |")


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["metrics", "--input", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl: results path not found" in capsys.readouterr().err


@pytest.mark.parametrize("bad, field, reason", [
    ({"acc": "yes"}, "acc", "expected true/false or 0/1, got 'yes'"),
    ({"score": "high"}, "score", "expected a number, got 'high'"),
    ({"num_tokens": "many"}, "num_tokens", "expected a number, got 'many'"),
    ({"rank": 1.5}, "rank", "expected an integer, got 1.5"),
    ({"judge": verdict("2")}, "judge.score", "expected 2, 1, 0 or null, got '2'"),
])
def test_a_field_of_the_wrong_type_is_one_line_with_file_line_field(tmp_path, capsys, bad, field, reason):
    path = write(tmp_path / "run" / "step-0.jsonl", [line(1), {**line(0), **bad}])
    assert cli.main(["metrics", "--results", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {path}:2: field '{field}': {reason}\n"


def test_a_json_error_names_the_column_on_its_own_line(tmp_path, capsys):
    path = tmp_path / "step-0.jsonl"
    path.write_text('{"id": "a", "acc": 1}\n{"id": "b", "acc": 1\n{"id": "c"}\n')
    assert cli.main(["metrics", "--results", str(path)]) == 2
    assert f"{path}:2: not valid JSON (Expecting ',' delimiter at column 21)" in capsys.readouterr().err


def test_folders_are_read_by_step_with_the_judged_file_preferred(tmp_path, capsys):
    folder = tmp_path / "qwen-7b"
    write(folder / "step-0.jsonl", [line(1), line(0)])
    write(folder / "step-0.judged.jsonl", [line(1, judge=verdict(2)), line(0, judge=verdict(2))])
    write(folder / "step-10.jsonl", [line(1), line(1)])
    write(folder / "notes.jsonl", [{"not": "a result"}])
    assert cli.main(["metrics", "--results", str(folder), "--format", "json"]) == 0
    summaries = json.loads(capsys.readouterr().out)
    assert [(s["step"], s["file"]) for s in summaries] == [(0, str(folder / "step-0.judged.jsonl")),
                                                            (10, str(folder / "step-10.jsonl"))]
    assert [s["top1_judge"] for s in summaries] == [1.0, None]
    (tmp_path / "empty").mkdir()
    assert cli.main(["metrics", "--results", str(tmp_path / "empty")]) == 2
    assert "no results files" in capsys.readouterr().err


def test_old_input_flag_still_works_and_warns(tmp_path, capsys):
    path = write(tmp_path / "run" / "step-0.jsonl", [line(1), line(0)])
    assert cli.main(["metrics", "--input", str(path), "--metric", "top1_rule", "--metric", "format_rate"]) == 0
    captured = capsys.readouterr()
    assert "--input is deprecated; use --results" in captured.err
    assert "top-1, rule" in captured.out
