import argparse
import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from werkzeug.test import Client

from diagnosis_zero import browse, cli
from diagnosis_zero.browse import (
    FILTERS,
    case_text,
    highlight_completion,
    judge_score,
    load_checkpoints,
    make_app,
)
from diagnosis_zero.reward import load_hierarchy

ROOT = Path(__file__).parent.parent
RESULTS = Path(__file__).parent / "fixtures" / "runs" / "results" / "qwen2.5-7b-instruct"
HIERARCHY = Path("/work/shared/data/orphanet_hypernym.json")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def hierarchy_file(tmp_path_factory):
    """A small hierarchy file in the orphanet_hypernym.json format (the shared copy when present)."""
    if HIERARCHY.is_file():
        return HIERARCHY
    path = tmp_path_factory.mktemp("hier") / "orphanet_hypernym.json"
    path.write_text('[{"Orphanetid": "905", "name": "Wilson disease", "type": "Disease", "parents": ['
                    '{"parent": "Disorder of copper metabolism", "parent_child_count": 6, "parent_disease_count": 6},'
                    '{"parent": "Neurometabolic disease", "parent_child_count": 200, "parent_disease_count": 277}]}]')
    return path


@pytest.fixture(scope="module")
def client(hierarchy_file):
    checkpoints, warnings = load_checkpoints(RESULTS)
    return Client(make_app(checkpoints, hierarchy=load_hierarchy(hierarchy_file), warnings=warnings))


def test_highlight_marks_tags_blocks_and_other_language():
    page = highlight_completion("<think>\nsee <b>x</b>\n</think>\n<answer> Wilson disease </answer>\n最終診断は上記の通りです。")
    assert '<span class="tag tag-think">&lt;think&gt;</span>' in page
    assert '<span class="think">\nsee &lt;b&gt;x&lt;/b&gt;\n</span>' in page  # model text is escaped
    assert '<span class="answer"> Wilson disease </span>' in page
    # the characters reward.is_mixed_language counts: full-width punctuation alone is no language
    assert '<span class="outside">\n<mark class="lang" title="other language">最終診断は上記の通りです</mark>。</span>' in page
    # Greek letters in disease names are not another language
    assert "<mark" not in highlight_completion("<answer> α-thalassemia </answer>")
    assert '<mark class="lang" title="other language">诊断结果如上所述</mark>。' in highlight_completion("诊断结果如上所述。")
    assert "<mark" not in highlight_completion("<answer> Wilson disease </answer>，")


def test_load_checkpoints_lays_judge_over_evaluated(tmp_path):
    shutil.copy(RESULTS / "step-0.jsonl", tmp_path / "step-0.jsonl")
    judged = (RESULTS / "step-0.judged.jsonl").read_text().splitlines()
    # the judge is still running: 3 of 8 judged, plus a torn last line
    (tmp_path / "step-0.judged.jsonl").write_text("\n".join(judged[:3]) + '\n{"id": "case-4", "jud\n')
    shutil.copy(RESULTS / "step-40.jsonl", tmp_path / "step-40.jsonl")
    checkpoints, warnings = load_checkpoints(tmp_path)
    assert list(checkpoints) == ["step-0", "step-40"]
    records = checkpoints["step-0"]
    assert [r["id"] for r in records] == [f"case-{i}" for i in range(1, 9)]
    assert [judge_score(r) for r in records[:4]] == [0, 1, 2, None]
    assert "judge" not in records[3]
    assert any("step-0.judged.jsonl:4: not valid JSON" in w for w in warnings)
    assert "step-40: no judged file; judge verdicts not available" in warnings


def test_filters_match_hand_counted_outcomes():
    records = load_checkpoints(RESULTS)[0]["step-0"]
    chosen = {name: [r["id"][5:] for r in records if pred(r)] for name, (_, pred) in FILTERS.items()}
    # see OUTCOMES in tests/fixtures/runs/make_fixtures.py, 7B step 0
    assert chosen["correct"] == ["3", "4", "6", "7"]  # judge score 2
    assert chosen["wrong"] == ["1", "2", "5", "8"]
    assert chosen["format_failure"] == ["5"]
    assert chosen["think_dropped"] == ["7"]  # an answer without think; case 5 has neither (format failure)
    assert chosen["mixed_language"] == ["3", "8"]
    # the disagreement filters use the clinical rule (agreement.disagrees), not the stored `acc` (the seed
    # matcher's): clinical accepts NF1 (case 6) and rejects Gaucher type 2 for type 1 (case 1), as the judge does
    assert [r["acc"] for r in records if r["id"] in ("case-1", "case-6")] == [True, False]
    assert chosen["rule_wrong_judge_right"] == []
    assert chosen["rule_right_judge_wrong"] == []
    assert len(chosen["all"]) == 8


def test_case_text_is_taken_from_the_user_message():
    record = load_checkpoints(RESULTS)[0]["step-0"][0]
    assert case_text(record).startswith("A 24-year-old woman presented with fatigue")
    assert case_text(record).endswith("tissue-paper appearance")
    assert case_text({"prompt": [{"role": "user", "content": "free text"}]}) == "free text"


def test_list_page_filters_and_counts(client):
    page = client.get("/?ckpt=step-20&filter=wrong").get_data(as_text=True)
    assert 'data-filter="mixed_language" href="/?ckpt=step-20&amp;filter=mixed_language">mixed language (2)' in page
    assert ">rule wrong, judge right (0)</a>" in page  # NF1 (case 6): the clinical rule agrees with the judge
    assert ">case-8</a>" in page and ">case-1</a>" not in page
    assert "judge top-1 87.5% (8 judged)" in page
    assert client.get("/?ckpt=step-99").status_code == 404
    searched = client.get("/?ckpt=step-0&q=ceruloplasmin").get_data(as_text=True)
    assert ">case-3</a>" in searched and ">case-1</a>" not in searched


def test_case_page_shows_everything(client):
    page = client.get("/case?id=case-3&ckpt=step-0").get_data(as_text=True)
    assert "Slit-lamp examination showed brown rings" in page
    assert '<span class="answer"> Wilson disease </span>' in page
    assert '<mark class="lang" title="other language">最終診断は上記の通りです</mark>' in page
    assert "ORPHA:905" in page and "Disorder of copper metabolism" in page and "counts as score 1" in page
    assert '<span class="badge ok">score 2</span> exact match or synonym' in page
    assert "Score: 2. Exact match." in page
    assert "rule score</dt><dd class='rule-score'>1.0 (match)" in page
    assert client.get("/case?id=nope&ckpt=step-0").status_code == 404


def test_compare_page_puts_two_checkpoints_side_by_side(client):
    page = client.get("/compare?id=case-1&a=step-0&b=step-20").get_data(as_text=True)
    left, right = page.split('data-checkpoint="step-0"')[1].split('data-checkpoint="step-20"')
    assert "Gaucher disease type 2" in left and "score 0" in left
    assert '<span class="answer"> Gaucher disease </span>' in right and "score 2" in right


def test_diagnose_needs_a_model(client):
    assert client.get("/diagnose").status_code == 404
    assert client.post("/api/diagnose", data={"case": "x"}).status_code == 400


def test_bad_results_path_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["browse", "--results", str(tmp_path / "missing")]) == 2
    assert "results path not found" in capsys.readouterr().err
    assert cli.main(["browse", "--results", str(tmp_path)]) == 2
    assert "no results files" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_browse(*extra: str):
    """Run `diagnosis-zero browse` on a free 127.0.0.1 port; yield (url, process)."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "diagnosis_zero", "browse", "--results", str(RESULTS),
                             "--port", str(port), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url, timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError(proc.stdout.read()) from None
                time.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def server(hierarchy_file):
    with running_browse("--orphanet", str(hierarchy_file)) as started:
        yield started


def test_browser_filters_mixed_language_and_opens_a_case(server):
    from playwright.sync_api import expect, sync_playwright

    url, proc = server
    # bound to the loopback interface only
    assert any(c.laddr.ip == "127.0.0.1" for c in _listening(proc.pid))
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(15_000)
        external = []
        page.on("request", lambda r: external.append(r.url) if not r.url.startswith(url) else None)
        page.goto(url)
        expect(page.locator("#cases tbody tr")).to_have_count(8)
        page.locator("#filters a[data-filter=mixed_language]").click()
        expect(page.locator("#filters a.active")).to_have_text("mixed language (1)")  # step 40: case-8 only
        page.select_option("select[name=ckpt]", "step-0")
        expect(page.locator("#cases tbody tr")).to_have_count(2)
        expect(page.locator("#cases tbody tr").first).to_contain_text("mixed language")
        page.locator("#cases a.open", has_text="case-3").click()
        answer = page.locator(".output pre.completion .answer")
        expect(answer).to_have_text(" Wilson disease ")
        expect(answer).to_have_css("background-color", "rgb(255, 243, 163)")
        expect(page.locator(".output .tag-answer").first).to_be_visible()
        expect(page.locator(".output mark.lang")).to_have_text("最終診断は上記の通りです")
        expect(page.locator("#case-text p.case")).to_have_css("white-space", "pre-wrap")  # line breaks kept
        expect(page.locator("#judge-verdict .verdict")).to_contain_text("score 2 exact match or synonym")
        expect(page.locator("#judge-verdict pre.raw")).to_have_text("Score: 2. Exact match.")
        page.screenshot(path=str(artifacts / "browse.png"), full_page=True)
        page.locator("#compare-form button").click()
        expect(page.locator("#compare .side")).to_have_count(2)
        page.screenshot(path=str(artifacts / "browse-compare.png"), full_page=True)
        browser.close()
    assert external == []
    assert (artifacts / "browse.png").stat().st_size > 10_000


def _listening(pid: int):
    import psutil

    return [c for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from diagnosis_zero.models import save_tiny_qwen2

    return save_tiny_qwen2(tmp_path_factory.mktemp("tiny") / "model")


CASE = "A 17-year-old boy developed tremor, dysarthria and jaundice; serum ceruloplasmin was low"


def test_pasted_case_streams_the_models_greedy_output(tiny_model):
    import torch

    from diagnosis_zero.data import build_prompt
    from diagnosis_zero.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(tiny_model))
    prompt = tokenizer.apply_chat_template(build_prompt(CASE), tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        tokens = model.generate(**inputs, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(tokens[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    with running_browse("--model", str(tiny_model), "--max-new-tokens", "24") as (url, _):
        host, port = url.split("//")[1].strip("/").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request("POST", "/api/diagnose", body=urllib.parse.urlencode({"case": CASE}),
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Length") is None  # streamed, not buffered
        chunks = []
        while chunk := resp.read1(65536):
            chunks.append(chunk.decode())
        assert len(chunks) > 1
        assert "".join(chunks) == expected

        completion = "<think>copper</think><answer> Wilson disease </answer>"
        body = urllib.parse.urlencode({"completion": completion, "reference": "Wilson disease"}).encode()
        rendered = urllib.request.urlopen(url + "api/render", data=body, timeout=30).read().decode()
        assert '<span class="answer"> Wilson disease </span>' in rendered
        assert "rule score</dt><dd class='rule-score'>1.0 (match)" in rendered

        from playwright.sync_api import expect, sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.goto(url + "diagnose")
            page.fill("#case", CASE)
            page.click("#run")
            expect(page.locator("#rendered .output")).to_be_visible()
            assert page.locator("#stream").text_content() == expected
            browser.close()


def test_latin_script_mixed_language_is_explained():
    from diagnosis_zero.browse_pages import output_card

    card = output_card({"completion": "<answer> Wilson disease </answer> El diagnóstico es claro.",
                         "mixed_language": True}, "x")
    assert "in Latin script" in card and "<mark" not in card
    assert "in Latin script" not in output_card({"completion": "<answer>x</answer> 诊断", "mixed_language": True}, "x")


def test_no_python_reprs_and_the_case_keeps_its_line_breaks(tmp_path, hierarchy_file):
    record = load_checkpoints(RESULTS)[0]["step-0"][2]  # case-3, judged 2
    user = next(m for m in record["prompt"] if m["role"] == "user")
    user["content"] = user["content"].replace("developed tremor, ", "developed\ntremor,\n")
    record.update(num_tokens=None, score=None)
    record["judge"].update(cached=False, scores=[2, None])
    (tmp_path / "step-0.jsonl").write_text(json.dumps(record) + "\n")
    checkpoints, _ = load_checkpoints(tmp_path)
    page = Client(make_app(checkpoints, hierarchy=load_hierarchy(hierarchy_file))).get(
        "/case?id=case-3&ckpt=step-0").get_data(as_text=True)
    for repr_ in ("None", "False", "True", "[2"):
        assert repr_ not in page, repr_
    assert "tokens</dt>" not in page and "cached" not in page  # unknown or not set: left out
    assert "<dt>per item</dt><dd>2, –</dd>" in page and "rule –" in page
    assert '<p class="case">' in page and "developed\ntremor,\ndysarthria" in page
    record["judge"]["cached"] = True
    (tmp_path / "step-0.jsonl").write_text(json.dumps(record) + "\n")
    page = Client(make_app(load_checkpoints(tmp_path)[0])).get("/case?id=case-3&ckpt=step-0").get_data(as_text=True)
    assert "<dt>from the judge cache</dt><dd>yes</dd>" in page


def test_results_take_files_and_folders_and_the_old_hierarchy_flag(tmp_path, hierarchy_file, capsys):
    other = tmp_path / "other-run"
    other.mkdir()
    shutil.copy(RESULTS / "step-0.jsonl", other / "step-0.jsonl")
    checkpoints, warnings = load_checkpoints([RESULTS, other / "step-0.jsonl"])
    # step-0 is in both: each keeps its folder's name in front
    assert list(checkpoints) == ["other-run/step-0", "qwen2.5-7b-instruct/step-0", "step-20", "step-40"]
    assert judge_score(checkpoints["qwen2.5-7b-instruct/step-0"][2]) == 2  # its judged file joined it
    assert "other-run/step-0: no judged file; judge verdicts not available" in warnings
    parser = argparse.ArgumentParser()
    browse.add_arguments(parser)
    args = parser.parse_args(["--results", str(RESULTS), "--hierarchy", str(hierarchy_file)])
    assert args.orphanet == [str(hierarchy_file)]
    assert "--hierarchy is deprecated; use --orphanet" in capsys.readouterr().err


@pytest.mark.parametrize("with_orphanet", [False, True])
def test_disagreement_filters_select_what_agreement_writes(tmp_path, hierarchy_file, with_orphanet, capsys):
    import csv
    import re

    # both runs' judged files, where the clinical rule agrees with the judge everywhere; two verdicts are
    # changed so that it does not: Wilson disease for Wilson disease judged 0, DRPLA for Huntington judged 2
    runs = tmp_path / "results"
    shutil.copytree(RESULTS.parent, runs)
    judged = runs / "qwen2.5-7b-instruct" / "step-0.judged.jsonl"
    lines = [json.loads(line) for line in judged.read_text().splitlines()]
    assert [(lines[i]["id"], lines[i]["judge"]["score"]) for i in (2, 7)] == [("case-3", 2), ("case-8", 0)]
    lines[2]["judge"]["score"], lines[7]["judge"]["score"] = 0, 2
    judged.write_text("".join(json.dumps(line) + "\n" for line in lines))
    orphanet = [str(hierarchy_file)] if with_orphanet else []
    method = "clinical+lexicon" if with_orphanet else "clinical"
    folders = [str(p) for p in sorted(runs.iterdir())]

    assert cli.main(["agreement", "--results", *folders, "--output-dir", str(tmp_path / "agreement"),
                     *(["--orphanet", *orphanet] if orphanet else [])]) == 0
    capsys.readouterr()
    with open(tmp_path / "agreement" / "disagreements.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["method"] == method]
    expected = {(Path(r["file"]).parent.name, Path(r["file"]).name.split(".")[0], r["id"], int(r["sample"] or 0),
                 "rule_wrong_judge_right" if r["judge_score"] == "2" else "rule_right_judge_wrong") for r in rows}
    assert expected  # the fixture holds disagreements of both kinds
    assert {kind for *_, kind in expected} == {"rule_wrong_judge_right", "rule_right_judge_wrong"}

    checkpoints, _ = load_checkpoints(folders)
    client = Client(make_app(checkpoints, hierarchy=load_hierarchy(hierarchy_file), orphanet=orphanet))
    shown = set()
    for name in checkpoints:
        # a step only one run has keeps its plain name
        folder, step = name.split("/") if "/" in name else (next(p.name for p in runs.iterdir() if (p / f"{name}.jsonl").exists()), name)
        for kind in ("rule_wrong_judge_right", "rule_right_judge_wrong"):
            page = client.get("/?" + urllib.parse.urlencode({"ckpt": name, "filter": kind})).get_data(as_text=True)
            for case_id, sample in re.findall(r'class="open" href="[^"]*">([^<]+)</a>(?: #(\d+))?', page):
                shown.add((folder, step, case_id, int(sample or 0), kind))
    assert shown == expected
    # the seed matcher's stored `acc` says NF1 (case 6) is wrong; the clinical rule, like the judge, does not
    assert ("qwen2.5-7b-instruct", "step-0", "case-6", 0, "rule_wrong_judge_right") not in shown
