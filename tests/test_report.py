import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from diagnosis_zero import cli
from diagnosis_zero.report import (
    FIGURES,
    Problems,
    build_report,
    load_run,
    model_size,
    pick_steps,
    plot_figures,
    smooth,
)

FIXTURES = Path(__file__).parent / "fixtures" / "runs"
RUN_15B = FIXTURES / "qwen2.5-1.5b-instruct"
RUN_7B = FIXTURES / "qwen2.5-7b-instruct"
RESULTS_7B = FIXTURES / "results" / "qwen2.5-7b-instruct"
RESULTS_15B = FIXTURES / "results" / "qwen2.5-1.5b-instruct"


def metrics_by_hand(path: Path) -> list[dict]:
    """The fixture's valid rows, parsed independently of the report code."""
    rows = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows[row["step"]] = row
    return [rows[s] for s in sorted(rows)]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def metrics_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "metrics_only"
    build_report([RUN_15B, RUN_7B], [], out)
    return out


@pytest.fixture(scope="module")
def results_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "with_results"
    build_report([RUN_15B, RUN_7B], [RESULTS_7B, RESULTS_15B], out)
    return out


def test_plotted_lines_equal_the_metrics():
    problems = Problems()
    runs = [load_run(RUN_15B, problems), load_run(RUN_7B, problems)]
    figures, plot_data = plot_figures(runs, smoothing=0.1)
    expected = {"1.5B": metrics_by_hand(RUN_15B / "metrics.jsonl"), "7B": metrics_by_hand(RUN_7B / "metrics.jsonl")}
    checked = 0
    for name, (_, panels) in FIGURES.items():
        fig = figures[name]
        for ax, (key, _, _) in zip(fig.axes, panels, strict=False):
            lines = {line.get_gid(): line for line in ax.get_lines()}
            for label, rows in expected.items():
                steps = [r["step"] for r in rows if key in r]
                values = [r[key] for r in rows if key in r]
                assert steps, (name, key, label)
                raw = lines[f"raw:{label}"]
                assert list(raw.get_xdata()) == steps
                assert list(raw.get_ydata()) == pytest.approx(values)
                smoothed = lines[f"smoothed:{label}"]
                assert list(smoothed.get_xdata()) == steps
                assert list(smoothed.get_ydata()) == pytest.approx(smooth(values, 0.1))
                assert plot_data[name][key][label] == {"step": steps, "value": pytest.approx(values),
                                                       "smoothed": pytest.approx(smooth(values, 0.1))}
                assert smoothed.get_label() == label and raw.get_label() == "_nolegend_"
                checked += 1
            assert ax.get_xlabel() == "step" and ax.get_ylabel() and ax.get_title()
            assert [t.get_text() for t in ax.get_legend().get_texts()] == ["1.5B", "7B"]
    assert checked == 2 * sum(len(p) for _, p in FIGURES.values())


def test_plot_data_json_and_image_files(metrics_report):
    data = json.loads((metrics_report / "plot_data.json").read_text())
    rows = metrics_by_hand(RUN_7B / "metrics.jsonl")
    assert data["val_score"]["val_score"]["7B"]["step"] == [0, 10, 20, 30]
    assert data["val_score"]["val_score"]["7B"]["value"] == [r["val_score"] for r in rows if "val_score" in r]
    assert data["response_length"]["completion_length_mean"]["1.5B"]["value"] == [
        r["completion_length_mean"] for r in metrics_by_hand(RUN_15B / "metrics.jsonl") if "completion_length_mean" in r]
    for name in FIGURES:
        assert (metrics_report / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in (metrics_report / "plots" / f"{name}.svg").read_bytes()[:2000]


def test_smoothing_is_a_centred_moving_average():
    values = [0.0, 10.0, 20.0, 30.0, 40.0, 100.0]
    # len 6 * 0.5 = window 3 -> half 1; the ends average what exists
    assert smooth(values, 0.5) == pytest.approx([5.0, 10.0, 20.0, 30.0, 170 / 3, 70.0])
    assert smooth(values, 0.0) == values


def test_tables_from_metrics_match_hand_computed(metrics_report):
    # val_accuracy = 0.05 + 0.002 * scale * step (scale 0.5 for 1.5B, 1.0 for 7B)
    top1 = read_csv(metrics_report / "tables" / "top1_accuracy.csv")
    assert [r["model"] for r in top1] == ["1.5B", "7B"]
    assert [float(top1[0][f"step {s} (%)"]) for s in (0, 10, 20, 30, 40)] == pytest.approx([5, 6, 7, 8, 9])
    assert float(top1[0]["gain (pp)"]) == pytest.approx(4.0)
    assert [top1[1][f"step {s} (%)"] for s in (0, 30, 40)] == ["5.0", "11.0", ""]
    assert top1[1]["gain (pp)"] == ""  # the 7B run has no step 40 yet
    md = (metrics_report / "tables" / "top1_accuracy.md").read_text()
    assert "| 1.5B | 5.0% | 6.0% | 7.0% | 8.0% | 9.0% | +4.0 |" in md
    mixed = read_csv(metrics_report / "tables" / "mixed_language_rate.csv")
    assert [mixed[1][f"step {s} (%)"] for s in (0, 10, 20, 30)] == ["0.4", "0.4", "10.6", "10.6"]
    failures = read_csv(metrics_report / "tables" / "format_and_think.csv")
    row = next(r for r in failures if r["model"] == "1.5B" and r["step"] == "30")
    assert float(row["format failure (%)"]) == pytest.approx(13.0)   # 1 - (0.9 - 0.001 * 30)
    assert float(row["think dropped (%)"]) == pytest.approx(60.0)    # val_think_dropped_rate 0.6 after step 25
    inside = (metrics_report / "tables" / "accuracy_by_mixed_language.md").read_text()
    assert "pass --results" in inside


def test_tables_from_results_match_hand_computed(results_report):
    # Per-case outcomes are listed in tests/fixtures/runs/make_fixtures.py (OUTCOMES).
    top1 = {r["model"]: r for r in read_csv(results_report / "tables" / "top1_accuracy.csv")}
    assert list(top1) == ["1.5B", "7B"]
    # 7B: judge score 2 on 4/8 (step 0) and 7/8 (step 20); step 40 has no judge file: rule 5/8
    assert [float(top1["7B"][f"step {s} (%)"]) for s in (0, 20, 40)] == pytest.approx([50.0, 87.5, 62.5])
    assert float(top1["7B"]["gain (pp)"]) == pytest.approx(12.5)
    assert top1["7B"]["source"] == "judge+rule"
    # 1.5B: judge 3/8 at step 0, 5/8 at step 40, nothing at step 20
    assert [top1["1.5B"][f"step {s} (%)"] for s in (0, 20, 40)] == ["37.5", "", "62.5"]
    assert float(top1["1.5B"]["gain (pp)"]) == pytest.approx(25.0)
    md = (results_report / "tables" / "top1_accuracy.md").read_text()
    assert "| 7B | 50.0% | 87.5% | 62.5% | +12.5 | judge+rule |" in md

    mixed = {r["model"]: r for r in read_csv(results_report / "tables" / "mixed_language_rate.csv")}
    assert [mixed["7B"][f"step {s} (%)"] for s in (0, 20, 40)] == ["25.0", "25.0", "12.5"]
    assert [mixed["1.5B"][f"step {s} (%)"] for s in (0, 20, 40)] == ["12.5", "", "0.0"]

    inside = {(r["model"], r["step"]): r for r in read_csv(results_report / "tables" / "accuracy_by_mixed_language.csv")}
    row = inside[("7B", "20")]  # mixed: case-2 (judge 2), case-8 (judge 1); the other 6 all judge 2
    assert (row["cases"], row["mixed-language cases"]) == ("8", "2")
    assert float(row["accuracy (mixed) (%)"]) == pytest.approx(50.0)
    assert float(row["accuracy (not mixed) (%)"]) == pytest.approx(100.0)
    assert float(row["accuracy (all) (%)"]) == pytest.approx(87.5)

    failures = {(r["model"], r["step"]): r for r in read_csv(results_report / "tables" / "format_and_think.csv")}
    assert float(failures[("7B", "0")]["format failure (%)"]) == pytest.approx(12.5)
    # think dropped = an answer without a think block; case 5 (no answer, no think) is a format failure
    assert float(failures[("7B", "0")]["think dropped (%)"]) == pytest.approx(12.5)   # case 7
    assert float(failures[("7B", "40")]["think dropped (%)"]) == pytest.approx(25.0)  # cases 5 (Pompe), 7
    assert float(failures[("1.5B", "40")]["think dropped (%)"]) == pytest.approx(75.0)  # all but 4 and 5


def test_html_is_self_contained(results_report):
    page = (results_report / "report.html").read_text()
    assert "http://" not in page and "https://" not in page and "//" not in re.sub(r"data:[^'\"]+", "", page)
    sources = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)""", page)
    assert len([s for s in sources if s.startswith("data:image/png;base64,")]) == len(FIGURES)
    assert all(s.startswith(("data:", "#")) for s in sources)
    assert "@import" not in page and "url(" not in page
    for table in ("Top-1 accuracy by model and step", "Mixed-language rate by model and step",
                  "Accuracy inside vs outside mixed-language cases", "Format-failure and think-dropped rates"):
        assert table in page


def test_incomplete_data_is_reported_not_fatal(results_report):
    page = (results_report / "report.html").read_text()
    md = (results_report / "report.md").read_text()
    for text in (page, md):
        assert "metrics.jsonl:9: not valid JSON" in text          # the corrupt line, by number
        assert "qwen2.5-7b-instruct: in progress or stopped" in text
        assert "step-40.judged.jsonl: no judge file" in text       # the missing judge file
    assert "Incomplete data: 1 missing, 1 in progress, 1 corrupt." in page
    runs = page.split("<h2>Runs</h2>")[1].split("</table>")[0]
    assert re.search(r"<td>1\.5B</td>.*?<td class='int'>40</td><td>finished</td>", runs)
    assert re.search(r"<td>7B</td>.*?<td class='int'>30</td><td>in progress or stopped</td>", runs)


def test_health_panel_names_flag_step_and_series(results_report):
    page = (results_report / "report.html").read_text()
    health = page.split("<h2>Training health</h2>")[1].split("<h2>")[0]
    assert "<b>1.5B</b> — <b>reasoning_dropped</b> from step 25 (<code>think_rate</code>)" in health
    assert "<b>7B</b> — <b>mixed_language_spike</b> from step 20 (<code>mixed_language_rate</code>)" in health


def test_cli_report_with_missing_pieces(tmp_path, capsys):
    run_dir = tmp_path / "my-run"
    shutil.copytree(RUN_7B, run_dir)
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 31, "kl": NaN-oops\n')
    code = cli.main(["report", "--runs", str(run_dir), str(tmp_path / "not-a-run"), "--output", str(tmp_path / "out"),
                     "--label", f"{run_dir}=seven", "--steps", "0,30", "--health", "mixed_language_max=0.5"])
    assert code == 0
    assert "report.html" in capsys.readouterr().out
    md = (tmp_path / "out" / "report.md").read_text()
    assert "metrics.jsonl:32: not valid JSON" in md
    assert "not-a-run/metrics.jsonl: no metrics.jsonl" in md
    assert "| seven | 5.0% | 11.0% | +6.0 |" in md
    assert "- **seven**: no health flags" in md  # the spike is under the raised threshold


@pytest.mark.parametrize("argv, field", [
    ([], "runs"),
    (["--runs", "x", "--steps", "0,ten"], "steps"),
    (["--runs", "x", "--health", "nope=1"], "health"),
    (["--runs", "x", "--label", "noequals"], "label"),
])
def test_cli_bad_options_exit_2(argv, field, capsys, tmp_path):
    assert cli.main(["report", "--output", str(tmp_path / "o"), *argv]) == 2
    assert f"'{field}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_labels_by_model_size_and_step_columns():
    assert model_size("Qwen2.5-1.5B-Instruct") == ("1.5B", 1.5e9)
    assert model_size("runs/smollm2-135m-demo") == ("135M", 1.35e8)
    assert model_size("my-run") is None
    assert pick_steps({0, 10, 20}, None) == [0, 10, 20]
    assert pick_steps(set(range(0, 2001, 10)), None) == [0, 500, 1000, 1500, 2000]
    assert pick_steps(set(range(0, 2001, 10)), [0, 1500]) == [0, 1500]


def test_same_size_runs_get_distinct_labels(tmp_path):
    for name in ("a", "b"):
        shutil.copytree(RUN_7B, tmp_path / name / "qwen-7b")
    shutil.copytree(RUN_7B, tmp_path / "a" / "qwen-7b-seed2")
    runs = [tmp_path / "a" / "qwen-7b", tmp_path / "b" / "qwen-7b", tmp_path / "a" / "qwen-7b-seed2"]
    md = (build_report(runs, [], tmp_path / "out") / "report.md").read_text()
    for label in ("7B (a/qwen-7b)", "7B (b/qwen-7b)", "7B (qwen-7b-seed2)"):
        assert f"| {label} | {tmp_path}" in md


def test_label_from_the_saved_model_config(tmp_path):
    run_dir = tmp_path / "grpo-run"
    shutil.copytree(RUN_7B, run_dir)
    (run_dir / "adapter_config.json").write_text('{"base_model_name_or_path": "models/Qwen2.5-3B-Instruct"}')
    run_ = load_run(run_dir, Problems())
    assert run_.label == "3B"
    (run_dir / "adapter_config.json").write_text("not json")
    assert load_run(run_dir, Problems()).label == "grpo-run"


def test_empty_run_and_corrupt_judge_file(tmp_path):
    (tmp_path / "new-run").mkdir()
    (tmp_path / "new-run" / "metrics.jsonl").write_text("")
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(RESULTS_7B / "step-0.jsonl", results)
    judged = (RESULTS_7B / "step-0.judged.jsonl").read_text().splitlines()
    (results / "step-0.judged.jsonl").write_text("\n".join([*judged[:3], "garbage", *judged[3:]]) + "\n")
    out = build_report([tmp_path / "new-run"], [results], tmp_path / "out")
    md = (out / "report.md").read_text()
    assert "new-run: in progress or stopped (no steps logged yet" in md
    assert "step-0.judged.jsonl:4: not valid JSON" in md and "(file skipped)" in md
    top1 = read_csv(out / "tables" / "top1_accuracy.csv")
    assert (top1[0]["step 0 (%)"], top1[0]["source"]) == ("50.0", "rule")  # rule: cases 1, 3, 4, 7
    assert (out / "plots" / "val_score.png").is_file()


def test_partial_judge_file_falls_back_to_rule_and_is_listed(tmp_path):
    results = tmp_path / "qwen2.5-7b-instruct"
    results.mkdir()
    shutil.copy(RESULTS_7B / "step-20.jsonl", results)
    judged = (RESULTS_7B / "step-20.judged.jsonl").read_text().splitlines()
    (results / "step-20.judged.jsonl").write_text("\n".join(judged[:5]) + "\n")  # the judge is still running
    out = build_report([], [results], tmp_path / "out")
    md = (out / "report.md").read_text()
    assert "step-20.judged.jsonl: judge incomplete (5 of 8 records); using rule scores" in md
    top1 = read_csv(out / "tables" / "top1_accuracy.csv")
    assert (top1[0]["model"], top1[0]["step 20 (%)"], top1[0]["source"]) == ("7B", "75.0", "rule")  # 6/8


def test_missing_results_exit_2_and_the_old_output_flag_still_works(tmp_path, capsys):
    assert cli.main(["report", "--results", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "o")]) == 2
    assert "missing: results path not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert cli.main(["report", "--runs", str(RUN_7B), "--output", str(tmp_path / "old")]) == 0
    assert "--output is deprecated; use --output-dir" in capsys.readouterr().err
    assert (tmp_path / "old" / "report.html").is_file()


def test_a_health_flag_that_ended_reads_in_the_past_with_its_steps(tmp_path):
    run_dir = tmp_path / "qwen-7b"
    rows = [{"step": s, "kl": 5.0 if 10 <= s < 20 else 0.01} for s in range(40)]
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = (build_report([run_dir], [], tmp_path / "out") / "report.html").read_text()
    assert "<b>kl_blowup</b> at steps 10-23 (<code>kl</code>)" in page
    assert "the policy was running away from its reference; it cleared after step 23" in page


def test_tool_use_figure_only_for_runs_that_used_tools(tmp_path):
    """A run trained with `tools:` logs tool_* series; the report draws them, and only then."""
    run = tmp_path / "tools-run"
    shutil.copytree(RUN_15B, run)
    rows = metrics_by_hand(run / "metrics.jsonl")
    for row in rows:
        if row["step"] >= 1:
            row.update(tool_use_rate=min(1.0, row["step"] / 40), tool_calls_per_completion=row["step"] / 20,
                       tool_error_rate=0.1, accuracy_with_tools=0.2, accuracy_without_tools=0.05)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plain = tmp_path / "plain"
    build_report([RUN_15B], [], plain)
    assert not (plain / "plots" / "tool_use.png").exists()
    out = tmp_path / "with-tools"
    build_report([run], [], out)
    assert (out / "plots" / "tool_use.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "plot_data.json").read_text())
    label = next(iter(data["tool_use"]["tool_use_rate"]))
    expected = [(r["step"], r["tool_use_rate"]) for r in rows if "tool_use_rate" in r]
    drawn = data["tool_use"]["tool_use_rate"][label]
    assert list(zip(drawn["step"], drawn["value"], strict=True)) == expected
    assert "Tool use vs step" in (out / "report.html").read_text()
