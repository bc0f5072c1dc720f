"""`judge` against a real HTTP judge on 127.0.0.1 (tests/judge_server.py) with injected faults."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from judge_server import JudgeServer

from diagnosis_zero import cli
from diagnosis_zero.judge_items import cache_key, parse_judgement

HIERARCHY = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "orphanet_hypernym.json"
SECRET = "sk-test-DO-NOT-LEAK-7f3a9c1e"

# Orphanet 5, long chain 3-hydroxyacyl-CoA dehydrogenase deficiency: its parent
# "3-hydroxyacyl-CoA dehydrogenase deficiency" names 2 diseases (a score-1 category under the
# updated protocol), "Rare hereditary metabolic disease with peripheral neuropathy" names 54.
LCHAD = "Long chain 3-hydroxyacyl-CoA dehydrogenase deficiency"
LCHAD_PARENT = "3-hydroxyacyl-CoA dehydrogenase deficiency"
LCHAD_BROAD = "Rare hereditary metabolic disease with peripheral neuropathy"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)


def case(case_id, prediction, references=(LCHAD, "LCHAD deficiency"), orpha_id="5", **extra):
    return {"id": case_id, "sample": 0, "prompt": [{"role": "user", "content": "case"}],
            "completion": f"<answer>{prediction}</answer>", "references": list(references),
            "orpha_id": orpha_id, "prediction": prediction, "score": 0.1, "acc": 0, "format": 1,
            "model": "m", "step": 0, **extra}


def write_cases(path, cases):
    path.write_text("".join(json.dumps(c) + "\n" for c in cases))
    return path


def read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def judge(tmp_path, server, input_path, output, *extra):
    argv = ["judge", "--input", str(input_path), "--output", str(output), "--base-url", server.base_url,
            "--judge-model", "fake-judge", "--cache", str(tmp_path / "cache.sqlite"),
            "--orphanet", str(HIERARCHY), *extra]
    return cli.main(argv)


@pytest.mark.parametrize("text, expected", [
    ("2", 2), ("1", 1), ("0", 0), (" 2\n", 2), ("**2**", 2), ("2.", 2), ("(1)", 1), ("`0`", 0),
    ('{"score": 2}', 2), ('{"score": "1"}', 1), ("Score: 1", 1), ("score = 0", 0),
    ("The prediction is a synonym of the reference. Score: 2", 2), ("Final score is 2.", 2),
    ("2 - exact match", 2), ("1: broader category", 1),
    ("<think>maybe 1, maybe 0</think>\n2", 2), ("it could be 0\n</think>\n1", 1),
    ("", None), (None, None), ("I cannot grade this, sorry.", None), ("3", None), ("12", None),
    ("Score: 1 or Score: 2", None), ('{"score": 5}', None), ("2 or 1", None),
])
def test_parse_judgement(text, expected):
    assert parse_judgement(text) == expected


def test_bad_hierarchy_file_is_a_clear_error(tmp_path, server, capsys):
    bad = tmp_path / "hier.json"
    bad.write_text('[{"Orphanetid": "5", "name": "n", "parents": [{"parent": "x"}]}]')
    inp = write_cases(tmp_path / "in.jsonl", [case("a", LCHAD)])
    # --hierarchy is the old spelling of --orphanet: still accepted, with a warning
    assert judge(tmp_path, server, inp, tmp_path / "out.jsonl", "--hierarchy", str(bad)) == 2
    err = capsys.readouterr().err
    assert "[0].parents[0]" in err and "--hierarchy is deprecated; use --orphanet" in err
    assert server.count() == 0


def test_item_protocol_scores_exact_parent_and_other(tmp_path, server, capsys):
    cases = [case("exact", "lchad deficiency"), case("parent", LCHAD_PARENT), case("broad", LCHAD_BROAD),
             case("wrong", "Gaucher disease"), case("none", ""),
             case("top5", ["Gaucher disease", LCHAD_PARENT, LCHAD, "Fabry disease", "Pompe disease", "extra"])]
    inp = write_cases(tmp_path / "in.jsonl", cases)
    out = tmp_path / "out.jsonl"
    assert judge(tmp_path, server, inp, out, "--protocol", "item") == 0
    judged = {r["id"]: r for r in read(out)}
    assert [r["id"] for r in read(out)] == [c["id"] for c in cases]  # input order kept
    assert judged["exact"]["judge"]["score"] == 2
    assert judged["parent"]["judge"]["score"] == 1
    assert judged["broad"]["judge"]["score"] == 0  # a parent naming 54 diseases earns nothing now
    assert judged["wrong"]["judge"]["score"] == 0
    assert judged["none"]["judge"] == {"score": 0, "scores": [0], "raw": None, "error": None, "cached": False,
                                       "protocol": "item", "model": "fake-judge", "answer_source": "prediction"}
    top5 = judged["top5"]["judge"]
    assert top5["scores"] == [0, 1, 2, 0, 0]  # only the first 5 items are graded
    assert top5["score"] == 0 and len(top5["raw"]) == 5
    assert judged["exact"]["judge"]["raw"] == "2" and judged["exact"]["judge"]["error"] is None
    for record in judged.values():  # the evaluated fields pass through
        assert record["model"] == "m" and record["references"] == [LCHAD, "LCHAD deficiency"]
    # "Gaucher disease" was asked once although two cases name it; "" never reaches the judge
    assert server.count("Gaucher disease") == 1
    assert server.count() == 7  # 4 single answers + LCHAD, Fabry, Pompe from the list
    printed = capsys.readouterr().out
    assert "judge errors: 0" in printed and "not comparable with RareArena's published numbers" in printed


def test_original_protocol_accepts_any_broader_category_and_needs_no_hierarchy(tmp_path, server):
    inp = write_cases(tmp_path / "in.jsonl", [case("a", "mitochondrial disorder", orpha_id=""),
                                              case("b", "LCHAD deficiency")])
    out = tmp_path / "out.jsonl"
    argv = ["judge", "--input", str(inp), "--output", str(out), "--base-url", server.base_url,
            "--cache", str(tmp_path / "c.sqlite"), "--protocol", "rarearena",
            "--backoff", "0.01"]  # a removed flag: accepted (with a warning) so old scripts still run
    assert cli.main(argv) == 0
    # RareArena's original judge sees the record's `diagnosis` only: "LCHAD deficiency" (the other
    # reference name) is not given to it, so it earns 0 here
    assert [r["judge"]["score"] for r in read(out)] == [1, 0]
    assert server.count() == 2 and all(r["judge"]["protocol"] == "rarearena" for r in read(out))


def test_updated_protocol_without_hierarchy_is_a_clear_error(tmp_path, server, capsys):
    inp = write_cases(tmp_path / "in.jsonl", [case("a", LCHAD)])
    argv = ["judge", "--input", str(inp), "--output", str(tmp_path / "o.jsonl"), "--base-url", server.base_url,
            "--cache", str(tmp_path / "c.sqlite")]
    assert cli.main(argv) == 2
    assert "--orphanet" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists() and server.count() == 0


def test_bad_input_line_names_file_line_and_field(tmp_path, server, capsys):
    good = case("a", LCHAD)
    bad = case("b", LCHAD)
    del bad["references"]
    inp = write_cases(tmp_path / "in.jsonl", [good, bad])
    assert judge(tmp_path, server, inp, tmp_path / "o.jsonl") == 2
    assert f"{inp}:2: field 'references'" in capsys.readouterr().err
    assert server.count() == 0


def test_cache_is_shared_across_runs_and_checkpoints(tmp_path, server):
    names = [LCHAD, LCHAD_PARENT, "Gaucher disease", "Fabry disease"]
    step0 = write_cases(tmp_path / "step-0.jsonl", [case(f"c{i}", n) for i, n in enumerate(names)])
    assert judge(tmp_path, server, step0, tmp_path / "step-0.judged.jsonl", "--protocol", "item") == 0
    assert server.count() == 4
    # another checkpoint: the same answers (with other spellings) and one new one
    step1 = write_cases(tmp_path / "step-1.jsonl",
                        [case("c0", "  LONG CHAIN 3-hydroxyacyl-CoA dehydrogenase deficiency "),
                         case("c1", "Gaucher disease"), case("c2", "Pompe disease")])
    server.reset_log()
    assert judge(tmp_path, server, step1, tmp_path / "step-1.judged.jsonl", "--protocol", "item") == 0
    assert server.predictions(status=None) == ["Pompe disease"]
    assert [r["judge"]["cached"] for r in read(tmp_path / "step-1.judged.jsonl")] == [True, True, False]
    assert [r["judge"]["score"] for r in read(tmp_path / "step-1.judged.jsonl")] == [2, 0, 0]
    # another protocol or judge model is another key
    k = cache_key("rarearena-updated", "m", LCHAD, [LCHAD], [])
    assert k != cache_key("rarearena", "m", LCHAD, [LCHAD], [])
    assert k != cache_key("rarearena-updated", "other", LCHAD, [LCHAD], [])
    assert k != cache_key("rarearena-updated", "m", LCHAD, ["Gaucher disease"], [])


def test_transient_faults_are_retried(tmp_path, server, capsys):
    server.add_fault("500", match="Fabry disease", times=2)
    server.add_fault("drop", match="Pompe disease", times=1)
    server.add_fault("timeout", match="Gaucher disease", times=1, delay=2.5)
    server.add_fault("429", match=LCHAD, times=1, retry_after="1")
    inp = write_cases(tmp_path / "in.jsonl", [case(n, n) for n in
                                              ["Fabry disease", "Pompe disease", "Gaucher disease", LCHAD]])
    out = tmp_path / "out.jsonl"
    assert judge(tmp_path, server, inp, out, "--timeout", "1.0", "--protocol", "item") == 0
    assert [r["judge"]["score"] for r in read(out)] == [0, 0, 0, 2]
    assert all(r["judge"]["error"] is None for r in read(out))
    assert server.count("Fabry disease") == 3 and server.count("Fabry disease", status=200) == 1
    assert server.count("Pompe disease") == 2 and server.count("Gaucher disease") == 2
    lchad = [r.time for r in server.requests if r.prediction == LCHAD]
    assert len(lchad) == 2 and lchad[1] - lchad[0] >= 0.95  # Retry-After: 1 was honoured
    assert "retries: 5" in capsys.readouterr().out


def test_garbage_answer_is_a_judge_error_with_raw_text_never_zero(tmp_path, server, capsys):
    server.add_fault("garbage", match="Gaucher disease", times=-1)
    server.add_fault("500", match="Fabry disease", times=-1)
    inp = write_cases(tmp_path / "in.jsonl", [case("g", "Gaucher disease"), case("f", "Fabry disease"),
                                              case("ok", LCHAD),
                                              case("list", [LCHAD_PARENT, "Gaucher disease"])])
    out = tmp_path / "out.jsonl"
    assert judge(tmp_path, server, inp, out, "--max-retries", "2", "--protocol", "item") == 0
    judged = {r["id"]: r["judge"] for r in read(out)}
    assert judged["g"]["score"] is None and judged["g"]["raw"] == "I cannot grade this, sorry."
    assert judged["g"]["error"].startswith("judge_error")
    assert judged["f"]["score"] is None and "HTTP 500 after 3 attempts" in judged["f"]["error"]
    assert judged["ok"]["score"] == 2 and judged["ok"]["error"] is None
    assert judged["list"]["scores"] == [1, None] and judged["list"]["error"].startswith("item 2: judge_error")
    assert "judge errors: 3" in capsys.readouterr().out
    # errors are not cached: --retry-errors re-judges exactly those lines once the judge is healthy
    server.faults.clear()
    server.reset_log()
    assert judge(tmp_path, server, inp, out, "--retry-errors", "--protocol", "item") == 0
    assert sorted(server.predictions()) == ["Fabry disease", "Gaucher disease"]
    judged = {r["id"]: r["judge"] for r in read(out)}
    assert len(read(out)) == 4 and judged["g"]["score"] == 0 and judged["list"]["scores"] == [1, 0]


def test_resume_skips_judged_lines_and_repairs_a_torn_last_line(tmp_path, server):
    names = [LCHAD, LCHAD_PARENT, "Gaucher disease", "Fabry disease", "Pompe disease"]
    inp = write_cases(tmp_path / "in.jsonl", [case(f"c{i}", n) for i, n in enumerate(names)])
    out = tmp_path / "out.jsonl"
    assert judge(tmp_path, server, inp, out) == 0
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + lines[2][:25])  # a crash mid-write of the third line
    (tmp_path / "cache.sqlite").unlink()  # so any re-judged line is visible to the server
    for suffix in ("-wal", "-shm"):
        Path(str(tmp_path / "cache.sqlite") + suffix).unlink(missing_ok=True)
    server.reset_log()
    assert judge(tmp_path, server, inp, out) == 0
    assert sorted(server.predictions()) == sorted(names[2:])
    assert [r["id"] for r in read(out)] == ["c0", "c1", "c2", "c3", "c4"]


@pytest.mark.parametrize("protocol", ["item", "rarearena-updated"])
def test_cache_survives_kill_9_and_nothing_answered_is_resent(tmp_path, protocol):
    from diagnosis_zero.judge_items import request_digest

    slow = JudgeServer(latency=0.05).start()
    try:
        names = [f"Disease number {i}" for i in range(80)]
        inp = write_cases(tmp_path / "in.jsonl", [case(f"c{i}", n) for i, n in enumerate(names)])
        out, cache = tmp_path / "out.jsonl", tmp_path / "cache.sqlite"
        argv = [sys.executable, "-m", "diagnosis_zero", "judge", "--input", str(inp), "--output", str(out),
                "--base-url", slow.base_url, "--cache", str(cache), "--orphanet", str(HIERARCHY),
                "--concurrency", "2", "--protocol", protocol]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while slow.count(status=200) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # what the cache holds, as the key of each kind: the normalized item, or the request's digest
        with sqlite3.connect(cache) as db:
            if protocol == "item":
                cached = {row[0] for row in db.execute("SELECT prediction FROM judgements")}
                assert not list(db.execute("SELECT * FROM requests"))
            else:
                cached = {row[0] for row in db.execute("SELECT request_sha256 FROM requests")}
                assert not list(db.execute("SELECT * FROM judgements"))

        def key(request) -> str:
            if protocol == "item":
                return cache_key("rarearena-updated", "gpt-4o", request.prediction, [LCHAD], [])[2]
            return request_digest(request.body)

        answered = slow.count(status=200)
        assert 20 <= answered < 80
        assert len(cached) >= answered - 2  # at most the requests in flight at the kill are lost
        time.sleep(0.5)  # let the server finish handlers for requests the killed client left in flight
        slow.reset_log()
        assert subprocess.run(argv, capture_output=True, timeout=300).returncode == 0
        # A handler still reading a request the killed client abandoned logs it without a prediction.
        resent = {key(r) for r in slow.requests if r.prediction is not None and r.body is not None}
        assert not resent & cached
        assert len(resent) + len(cached) == 80
        judged = read(out)
        assert sorted(r["id"] for r in judged) == sorted(f"c{i}" for i in range(80))
        assert all(r["judge"]["score"] == 0 and r["judge"]["protocol"] == protocol for r in judged)
    finally:
        slow.stop()


def test_api_key_is_sent_but_never_written_or_printed(tmp_path):
    guarded = JudgeServer(api_key=SECRET).start()
    try:
        guarded.add_fault("garbage", match="Gaucher disease", times=-1)
        guarded.add_fault("500", match="Fabry disease", times=1)
        inp = write_cases(tmp_path / "in.jsonl", [case("a", LCHAD), case("b", "Gaucher disease"),
                                                  case("c", "Fabry disease")])
        env = {**os.environ, "MY_JUDGE_KEY": SECRET}
        env.pop("OPENAI_API_KEY")
        argv = [sys.executable, "-m", "diagnosis_zero", "judge", "--log-level", "DEBUG", "--input", str(inp),
                "--output", str(tmp_path / "out.jsonl"), "--base-url", guarded.base_url,
                "--api-key-env", "MY_JUDGE_KEY", "--cache", str(tmp_path / "cache.sqlite"),
                "--orphanet", str(HIERARCHY)]
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        assert {r.authorization for r in guarded.requests} == {f"Bearer {SECRET}"}
        # a wrong key: the run stops with a clear error that does not echo any key
        env["MY_JUDGE_KEY"] = SECRET + "-wrong"
        argv[argv.index("--output") + 1] = str(tmp_path / "out2.jsonl")
        refused = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        assert refused.returncode == 2 and "HTTP 401" in refused.stderr
        written = [p for p in tmp_path.iterdir() if p.is_file()]
        assert {p.name for p in written} >= {"out.jsonl", "cache.sqlite"}
        for blob in [done.stdout, done.stderr, refused.stdout, refused.stderr,
                     *(p.read_bytes().decode("utf-8", "replace") for p in written)]:
            assert SECRET not in blob
            assert "DO-NOT-LEAK" not in blob
    finally:
        guarded.stop()


def test_missing_api_key_variable_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY")
    inp = write_cases(tmp_path / "in.jsonl", [case("a", LCHAD)])
    argv = ["judge", "--input", str(inp), "--output", str(tmp_path / "o.jsonl"), "--protocol", "rarearena",
            "--cache", str(tmp_path / "c.sqlite"), "--api-key-env", "NO_SUCH_KEY_VAR"]
    assert cli.main(argv) == 2
    assert "NO_SUCH_KEY_VAR is not set" in capsys.readouterr().err


def test_item_grader_api_grades_caches_and_looks_up(tmp_path, server):
    """The public per-item API (`ItemGrader`) other code builds on: grade, cache, lookup, same SQLite file."""
    import asyncio

    from diagnosis_zero.judge_items import ItemGrader, JudgeCache, JudgeEndpoint

    cache = JudgeCache(tmp_path / "cache.sqlite")
    endpoint = JudgeEndpoint(base_url=server.base_url, judge_model="fake-judge", max_retries=2, concurrency=2)
    grader = ItemGrader(endpoint, cache)
    refs, parents = [LCHAD, "LCHAD deficiency"], [LCHAD_PARENT]
    assert grader.lookup("lchad deficiency", refs, parents) is None

    async def grade_all(names):
        try:
            return await asyncio.gather(*(grader.grade(n, refs, parents) for n in names))
        finally:
            await grader.close()

    verdicts = asyncio.run(grade_all(["lchad deficiency", LCHAD_PARENT, "Gaucher disease", "Gaucher disease"]))
    assert [v.score for v in verdicts] == [2, 1, 0, 0] and all(v.error is None for v in verdicts)
    assert server.count("Gaucher disease") == 1 and server.count() == 3  # asked twice at once, sent once
    assert grader.lookup("LCHAD deficiency ", refs, parents).score == 2  # normalized key
    assert grader.lookup("lchad deficiency", refs, []) is None  # other score-1 set, other key
    # a second grader on the same file (e.g. another process) is served from the cache, no request
    server.reset_log()
    again = ItemGrader(endpoint, JudgeCache(tmp_path / "cache.sqlite"))
    verdict = asyncio.run(again.grade(LCHAD_PARENT, refs, parents))
    assert verdict.score == 1 and verdict.cached and server.count() == 0
    # a garbage reply is an error, never a score, and is not cached
    server.add_fault("garbage", match="Fabry disease", times=1)
    verdict = asyncio.run(grade_all(["Fabry disease"]))[0]
    assert verdict.score is None and verdict.error.startswith("judge_error")
    assert grader.lookup("Fabry disease", refs, parents) is None


def test_item_grader_forgets_a_request_whose_callers_were_cancelled(tmp_path, server):
    """A caller cancelled by a deadline must not leave its request in flight forever: once it ends,
    the same item is asked again rather than served a stale answer."""
    import asyncio

    from diagnosis_zero.judge_items import ItemGrader, JudgeCache, JudgeEndpoint

    async def scenario():
        server.latency = 0.3  # the caller is cancelled while its request is out
        grader = ItemGrader(JudgeEndpoint(base_url=server.base_url, judge_model="fake-judge", timeout=10,
                                          max_retries=0, concurrency=4),
                            JudgeCache(tmp_path / "cache.sqlite"))
        task = asyncio.ensure_future(grader.grade("Fabry disease", ["Fabry disease"], []))
        await asyncio.sleep(0)
        task.cancel()
        for _ in range(200):  # the request itself goes on and ends
            if not grader._in_flight:
                break
            await asyncio.sleep(0.05)
        remaining = dict(grader._in_flight)
        verdict = await grader.grade("Fabry disease", ["Fabry disease"], [])
        await grader.close()
        return remaining, verdict

    remaining, verdict = asyncio.run(scenario())
    assert remaining == {}
    assert verdict.error is None and verdict.score in (0, 1, 2)
