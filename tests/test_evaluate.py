"""`evaluate` with real models (tiny random Qwen2, bundled SmolLM2) on real prepared parquet."""

import json
import shutil
from pathlib import Path

import pytest

from diagnosis_zero import cli
from diagnosis_zero.data import build_prompt, load_cases, prepare_rarearena
from diagnosis_zero.errors import ConfigError
from diagnosis_zero.evaluate import answer_mode, checkpoint_plan, score_completion

RDC = Path(__file__).parent / "fixtures" / "rarearena" / "rdc.jsonl"
FIELDS = {"id", "sample", "prompt", "completion", "references", "orpha_id", "prediction", "score", "acc",
          "format", "think_present", "mixed_language", "num_tokens", "model", "step", "generation", "answer_source"}


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    prepare_rarearena(RDC, out, split_ratio=0.5, progress=False)
    return out / "test.parquet"


@pytest.fixture(scope="module")
def top5_split(tmp_path_factory):
    out = tmp_path_factory.mktemp("data5")
    prepare_rarearena(RDC, out, split_ratio=0.5, template="rarearena-top5", progress=False)
    return out / "test.parquet"


def read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def evaluate(model, data, output, *extra):
    return cli.main(["evaluate", "--model", str(model), "--data", str(data), "--output", str(output),
                     "--max-new-tokens", "6", "--batch-size", "2", "--backend", "hf", *extra])


def test_lines_carry_every_documented_field(tiny_model_dir, test_split, tmp_path):
    out = tmp_path / "step-0.jsonl"
    assert evaluate(tiny_model_dir, test_split, out, "--limit", "3") == 0
    lines = read(out)
    cases = load_cases(test_split)[:3]
    assert [r["id"] for r in lines] == [c["id"] for c in cases]
    for line, case in zip(lines, cases, strict=True):
        assert set(line) == FIELDS
        assert line["prompt"] == case["prompt"] and line["references"] == case["references"]
        assert line["orpha_id"] == case["orpha_id"] and line["sample"] == 0
        assert line["model"] == str(tiny_model_dir) and line["step"] is None
        assert 1 <= line["num_tokens"] <= 6 and isinstance(line["completion"], str)
        assert isinstance(line["prediction"], str) and line["acc"] in (0, 1)
        assert isinstance(line["think_present"], bool) and isinstance(line["mixed_language"], bool)
    # greedy decoding is the default: a second run writes the same completions
    again = tmp_path / "again.jsonl"
    assert evaluate(tiny_model_dir, test_split, again, "--limit", "3") == 0
    assert [r["completion"] for r in read(again)] == [r["completion"] for r in lines]


def test_resume_skips_done_ids_and_repairs_a_torn_last_line(tiny_model_dir, test_split, tmp_path):
    out = tmp_path / "out.jsonl"
    assert evaluate(tiny_model_dir, test_split, out, "--limit", "3") == 0
    first = out.read_text().splitlines(keepends=True)
    out.write_text(first[0] + first[1] + first[2][:40])  # killed while writing the third line
    assert evaluate(tiny_model_dir, test_split, out, "--limit", "5") == 0
    lines = read(out)
    assert [r["id"] for r in lines] == [c["id"] for c in load_cases(test_split)[:5]]
    assert out.read_text().splitlines(keepends=True)[:2] == first[:2]  # done lines untouched
    # all done: nothing is generated, so the model is not even loaded
    assert evaluate(tmp_path / "no-such-model", test_split, out, "--limit", "5") == 0
    assert len(read(out)) == 5


def test_sampling_writes_one_line_per_sample(tiny_model_dir, test_split, tmp_path):
    out = tmp_path / "samples.jsonl"
    assert evaluate(tiny_model_dir, test_split, out, "--limit", "2", "--temperature", "1.0",
                    "--num-samples", "3") == 0
    lines = read(out)
    assert [(r["id"], r["sample"]) for r in lines] == [(c["id"], s) for c in load_cases(test_split)[:2]
                                                       for s in range(3)]


def test_assistant_prefix_is_part_of_the_scored_completion(tiny_model_dir, test_split, tmp_path):
    out = tmp_path / "prefix.jsonl"
    assert evaluate(tiny_model_dir, test_split, out, "--limit", "1", "--assistant-prefix", "<think>") == 0
    assert read(out)[0]["completion"].startswith("<think>")


def test_top5_answers_are_ranked_lists(tiny_model_dir, top5_split, tmp_path):
    case = load_cases(top5_split)[0]
    assert answer_mode("auto", case["prompt"]) == "list"
    assert answer_mode("auto", build_prompt("A boy.", "r1-zero")) == "single"
    assert case["references"] == ["Fabry disease"]
    completion = ("<think>storage disease</think>\n<answer>\n1. Castleman disease\n2. Fabry disease\n"
                  "3. Pompe disease\n4. Krabbe disease\n5. Wilson disease\n6. Extra disease\n</answer>")
    fields = score_completion(case, completion, "list", {"preset": "clinical"})
    assert fields["prediction"] == ["Castleman disease", "Fabry disease", "Pompe disease", "Krabbe disease",
                                    "Wilson disease"]
    assert fields["rank"] == 2 and fields["acc"] == 1 and fields["think_present"] is True
    out = tmp_path / "top5.jsonl"
    assert evaluate(tiny_model_dir, top5_split, out, "--limit", "2") == 0
    assert all(isinstance(r["prediction"], list) and "rank" in r for r in read(out))


def _lora_checkpoint(base: Path, path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(path)
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base)


def test_checkpoints_of_a_run_give_one_file_per_step(tiny_model_dir, test_split, tmp_path):
    run = tmp_path / "runs" / "tiny-grpo"
    shutil.copytree(tiny_model_dir, run / "checkpoint-2")  # a full checkpoint
    _lora_checkpoint(Path(tiny_model_dir), run / "checkpoint-4")  # a LoRA adapter on the base
    (run / "checkpoint-4" / "README.md").write_text("trainer files live here too")
    results = tmp_path / "results" / "tiny-grpo"
    argv = ["evaluate", "--checkpoints", str(run), "--data", str(test_split), "--output-dir", str(results),
            "--limit", "2", "--max-new-tokens", "4", "--backend", "hf"]
    assert cli.main(argv) == 0  # step 0 = the base named by the LoRA adapter
    assert sorted(p.name for p in results.iterdir()) == ["step-0.jsonl", "step-2.jsonl", "step-4.jsonl"]
    for step in (0, 2, 4):
        lines = read(results / f"step-{step}.jsonl")
        assert len(lines) == 2 and {(r["model"], r["step"]) for r in lines} == {("tiny-grpo", step)}
    assert read(results / "step-4.jsonl")[0]["checkpoint"] == str(run / "checkpoint-4")
    # the same model file, step 0 and step 2, gives the same greedy completions
    assert [r["completion"] for r in read(results / "step-0.jsonl")] == \
        [r["completion"] for r in read(results / "step-2.jsonl")]
    # a single checkpoint given as --model is labelled with its run and step
    one = tmp_path / "one.jsonl"
    assert evaluate(run / "checkpoint-2", test_split, one, "--limit", "1") == 0
    assert (read(one)[0]["model"], read(one)[0]["step"]) == ("tiny-grpo", 2)


def test_checkpoint_plan_selects_steps_and_explains_what_is_missing(tmp_path):
    run = tmp_path / "run"
    for step in (500, 1000, 1500):
        (run / f"checkpoint-{step}").mkdir(parents=True)
    (run / "runs").mkdir()
    assert [s for s, _ in checkpoint_plan(str(run), None, "base-model")] == [0, 500, 1000, 1500]
    assert checkpoint_plan(str(run), "0,1500", "base-model") == [(0, "base-model"), (1500, str(run / "checkpoint-1500"))]
    assert [s for s, _ in checkpoint_plan(str(run), None, None)] == [500, 1000, 1500]
    with pytest.raises(ConfigError, match=r"step\(s\) 0 .*pass --model BASE"):
        checkpoint_plan(str(run), "0,500", None)
    with pytest.raises(ConfigError, match=r"step\(s\) 700 .*found 500, 1000, 1500"):
        checkpoint_plan(str(run), "500,700", None)
    with pytest.raises(ConfigError, match="comma-separated"):
        checkpoint_plan(str(run), "five", None)


def test_vllm_backend_without_vllm_is_a_clear_error(tiny_model_dir, test_split, tmp_path, capsys):
    out = tmp_path / "v.jsonl"
    assert cli.main(["evaluate", "--model", str(tiny_model_dir), "--data", str(test_split), "--output", str(out),
                     "--backend", "vllm", "--limit", "1"]) == 2
    assert "vLLM is not installed" in capsys.readouterr().err
    assert not out.exists() or out.read_text() == ""


@pytest.mark.parametrize("extra, message", [
    (["--num-samples", "2"], "--temperature > 0"),
    (["--steps", "0,500"], "--checkpoints"),
    (["--top-k", "0"], "top_k"),
])
def test_bad_options_are_clear_errors(tiny_model_dir, test_split, tmp_path, capsys, extra, message):
    assert evaluate(tiny_model_dir, test_split, tmp_path / "x.jsonl", "--limit", "1", *extra) == 2
    assert message in capsys.readouterr().err


def test_missing_data_file_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    assert evaluate(tiny_model_dir, tmp_path / "nope.parquet", tmp_path / "x.jsonl") == 2
    assert "nope.parquet: file not found" in capsys.readouterr().err


def test_bundled_model_end_to_end(smollm2_dir, test_split, tmp_path, capsys):
    out = tmp_path / "smollm2.jsonl"
    argv = ["evaluate", "--model", "bundled:smollm2-135m-instruct", "--data", str(test_split), "--output", str(out),
            "--limit", "3", "--max-new-tokens", "12", "--batch-size", "3", "--backend", "hf"]
    assert cli.main(argv) == 0
    lines = read(out)
    assert len(lines) == 3 and all(r["completion"].strip() for r in lines)
    assert all(r["model"] == "bundled:smollm2-135m-instruct" and 1 <= r["num_tokens"] <= 12 for r in lines)
    assert f"{out}: 3 lines" in capsys.readouterr().out


def test_rarearena_protocol_prompts_verbatim_and_reads_the_raw_list(tiny_model_dir, test_split, top5_split, tmp_path):
    from diagnosis_zero.data import case_text
    from diagnosis_zero.evaluate import case_text_of
    from diagnosis_zero.rarearena import INFERENCE_PROMPT

    records = {str(json.loads(line)["_id"]): json.loads(line) for line in RDC.read_text().splitlines()}
    out = tmp_path / "rarearena.jsonl"
    assert evaluate(tiny_model_dir, top5_split, out, "--limit", "2", "--template", "rarearena") == 0
    lines = read(out)
    for line in lines:
        # RareArena's prompt, byte for byte, around the case text as RareArena builds it (report + " " + tests)
        assert line["prompt"] == [{"role": "user",
                                   "content": INFERENCE_PROMPT.replace("{case}", case_text(records[line["id"]]))}]
        assert line["answer_source"] == "raw" and isinstance(line["prediction"], list) and "rank" in line
        assert line["generation"] == {"template": "rarearena", "assistant_prefix": "", "max_new_tokens": 6,
                                      "temperature": 0.1}
    # the same cases from data prepared with another template give the same prompts
    again = tmp_path / "again.jsonl"
    assert evaluate(tiny_model_dir, test_split, again, "--limit", "2", "--template", "rarearena") == 0
    assert [r["prompt"] for r in read(again)] == [r["prompt"] for r in lines]
    case = load_cases(test_split)[0]
    assert case_text_of(case, []) == case_text(records[case["id"]])

    # the raw text is scored as a ranked list, top-k by rule
    completion = "1. Castleman disease;\n2. Fabry disease;\n3. Pompe disease;\n4. Krabbe disease;\n5. Wilson disease;"
    fields = score_completion(load_cases(top5_split)[0], completion, "raw", {"preset": "clinical"}, top_k=5)
    assert fields["prediction"][:2] == ["Castleman disease", "Fabry disease"] and fields["rank"] == 2
    assert fields["acc"] == 1 and fields["answer_source"] == "raw" and fields["format"] == 1
    assert score_completion(load_cases(top5_split)[0], completion, "raw", {"preset": "clinical"}, top_k=1)["acc"] == 0


def test_old_output_dir_spelling_and_orphanet_alias_still_work(tiny_model_dir, test_split, tmp_path, capsys,
                                                                hypernym_json):
    run = tmp_path / "runs" / "r"
    shutil.copytree(tiny_model_dir, run / "checkpoint-1")
    results = tmp_path / "results"
    assert cli.main(["evaluate", "--checkpoints", str(run), "--data", str(test_split), "--output", str(results),
                     "--limit", "1", "--max-new-tokens", "2", "--backend", "hf", "--lexicon", str(hypernym_json)]) == 0
    err = capsys.readouterr().err
    assert "--output DIR with --checkpoints is deprecated" in err and "--lexicon is deprecated" in err
    assert sorted(p.name for p in results.iterdir()) == ["step-1.jsonl"]
    assert evaluate(tiny_model_dir, test_split, tmp_path / "o.jsonl", "--limit", "1", "--orphanet",
                    str(hypernym_json), "--top-k", "3") == 0
    assert "deprecated" not in capsys.readouterr().err
