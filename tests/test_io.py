"""io: one JSON Lines reader with one torn-tail policy, one results finder, the --orphanet hierarchy."""

import json

import pytest

from diagnosis_zero.errors import ConfigError, InputFileError
from diagnosis_zero.io import find_results, orphanet_hierarchy, read_jsonl, resume_jsonl


def test_a_torn_tail_is_skipped_and_reported_any_other_bad_line_is_an_error(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b"')  # killed mid-line: no newline
    lines = read_jsonl(path)
    assert lines.records == [{"a": 1}, {"a": 2}] and [n for n, _ in lines.rows] == [1, 2]
    assert lines.torn_tail.line == 3 and not lines.bad_lines
    path.write_bytes('{"a": 1}\n{"a": "é'.encode()[:-1])  # torn inside a UTF-8 character
    assert read_jsonl(path).torn_tail.line == 2
    path.write_text('{"a": 1}\n{"a": 3, "b"\n')  # with its newline the line is complete, and bad
    with pytest.raises(InputFileError, match=r"log.jsonl:2: not valid JSON \(Expecting ':' delimiter at column 13\)"):
        read_jsonl(path)
    path.write_text('{"a": 1}\nnot json\n{"a": 3}\n[1]\n{"a": 5')
    lines = read_jsonl(path, skip_bad=True)
    assert lines.records == [{"a": 1}, {"a": 3}]
    assert [e.line for e in lines.bad_lines] == [2, 4] and lines.torn_tail.line == 5
    path.write_text('{"a": 1}')  # a complete last line that lacks only its newline is kept
    assert read_jsonl(path).records == [{"a": 1}] and read_jsonl(path).torn_tail is None
    with pytest.raises(InputFileError, match="file not found"):
        read_jsonl(tmp_path / "absent.jsonl")


def test_resume_cuts_a_torn_tail_and_completes_a_last_line(tmp_path):
    path = tmp_path / "out.jsonl"
    assert resume_jsonl(path) == []
    path.write_text('{"id": 1}\n{"id": 2}\n{"id": 3, "sco')
    assert resume_jsonl(path) == [{"id": 1}, {"id": 2}]
    assert path.read_text() == '{"id": 1}\n{"id": 2}\n'
    path.write_text('{"id": 1}')
    assert resume_jsonl(path) == [{"id": 1}]
    with open(path, "a") as fh:  # appending after a resume never glues two records together
        fh.write(json.dumps({"id": 2}) + "\n")
    assert read_jsonl(path).records == [{"id": 1}, {"id": 2}]
    path.write_text('{"id": 1}\nbroken\n{"id": 3}\n')
    with pytest.raises(InputFileError, match="out.jsonl:2"):
        resume_jsonl(path)


def test_find_results_by_step_in_folders_and_any_named_file(tmp_path):
    for name in ("step-10.jsonl", "step-2.judged.jsonl", "step-2.jsonl", "notes.jsonl", "step-3.txt"):
        (tmp_path / name).write_text("")
    found = find_results(tmp_path)
    assert [(f.path.name, f.name, f.step, f.judged) for f in found] == [
        ("step-2.jsonl", "step-2", 2, False), ("step-2.judged.jsonl", "step-2", 2, True),
        ("step-10.jsonl", "step-10", 10, False)]
    [single] = find_results(tmp_path / "notes.jsonl")
    assert (single.name, single.step, single.judged) == ("notes", None, False)
    (tmp_path / "empty").mkdir()
    assert find_results(tmp_path / "empty") == []
    with pytest.raises(InputFileError, match="missing: results path not found"):
        find_results(tmp_path / "missing")


def test_orphanet_hierarchy_takes_the_json_among_the_orphanet_files(hypernym_json, tmp_path):
    hierarchy = orphanet_hierarchy([tmp_path / "en_product1.xml", hypernym_json])
    assert hierarchy.name("905") == "Wilson disease"
    assert orphanet_hierarchy(None) is None and orphanet_hierarchy([tmp_path / "en_product1.xml"]) is None
    with pytest.raises(ConfigError, match="orphanet"):
        orphanet_hierarchy([hypernym_json, tmp_path / "other.json"])
