"""The base install (no `[train]` extra) covers prepare, reward, judge client, metrics and report.

verl users install only the base into their own environment, so these verbs must run without
torch, transformers, trl, peft, accelerate or datasets. Each check runs the real CLI in a
subprocess whose import system refuses those packages.
"""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
TRAIN_STACK = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "gguf", "vllm")

BLOCKER = f"""
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {TRAIN_STACK!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: base install)")
        return None
sys.meta_path.insert(0, _Block())
from diagnosis_zero.cli import main
sys.exit(main(sys.argv[1:]))
"""


def base_cli(*argv, cwd=None):
    return subprocess.run([sys.executable, "-c", BLOCKER, *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_blocker_really_blocks_the_training_stack():
    proc = base_cli("train", "--max-steps", "1")
    assert proc.returncode != 0
    assert "blocked: base install" in proc.stderr


def test_prepare_hpo_and_rarearena_without_training_stack(tmp_path):
    proc = base_cli("prepare", "--source", "hpo", "--num-cases", "20", "--seed", "1", "--output-dir", tmp_path / "demo")
    assert proc.returncode == 0, proc.stderr
    assert pq.read_table(tmp_path / "demo" / "train.parquet").num_rows == 14
    proc = base_cli("prepare", "--input", FIXTURES / "rarearena" / "rdc.jsonl", "--output-dir", tmp_path / "ra")
    assert proc.returncode == 0, proc.stderr
    assert pq.read_table(tmp_path / "ra" / "test.parquet").num_rows > 0


def test_reward_metrics_and_report_without_training_stack(tmp_path):
    results = FIXTURES / "runs" / "results" / "qwen2.5-7b-instruct"
    proc = base_cli("metrics", "--results", results, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert [s["step"] for s in json.loads(proc.stdout)] == [0, 20, 40]
    proc = base_cli("report", "--runs", FIXTURES / "runs" / "qwen2.5-7b-instruct", "--results", results,
                    "--output-dir", tmp_path / "report")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "report" / "report.html").stat().st_size > 10_000


def test_judge_client_without_training_stack(tmp_path, hypernym_json):
    from judge_server import JudgeServer

    server = JudgeServer().start()
    try:
        results = FIXTURES / "runs" / "results" / "qwen2.5-7b-instruct" / "step-0.jsonl"
        out = tmp_path / "judged.jsonl"
        proc = base_cli("judge", "--input", results, "--output", out, "--base-url", server.base_url,
                        "--cache", tmp_path / "cache.sqlite", "--hierarchy", hypernym_json)
        assert proc.returncode == 0, proc.stderr
        judged = [json.loads(line) for line in out.read_text().splitlines()]
        assert judged and all(line["judge"]["score"] in (0, 1, 2) for line in judged)
        assert server.count(status=200) > 0
    finally:
        server.stop()


@pytest.mark.parametrize("verb", ["judge", "evaluate", "evaluate-mcq", "diagnose", "browse", "train"])
def test_every_verb_help_works_without_training_stack(verb):
    proc = base_cli(verb, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: diagnosis-zero " + verb in proc.stdout
