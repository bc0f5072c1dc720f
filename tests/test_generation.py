"""One way to generate: the same model and prompt give the same text in every verb, and a trained run
carries its own prompting (template, assistant prefix, length) into evaluate, browse and diagnose.

Real components only: the tiny random Qwen2 (tests/conftest.py), real prepared parquet, a real
2-step GRPO run with TRL."""

import json
from pathlib import Path

import pytest

from diagnosis_zero import cli, generation, train
from diagnosis_zero.browse import load_pasted_case_generator
from diagnosis_zero.data import build_prompt, load_cases, prepare_rarearena
from diagnosis_zero.diagnose import describe
from diagnosis_zero.evaluate import case_text_of

RDC = Path(__file__).parent / "fixtures" / "rarearena" / "rdc.jsonl"
PREFIX = "<think>"
TOKENS = 12


def read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def lively_model(tmp_path_factory):
    """The tiny Qwen2 with larger random weights: greedy text that varies with the prompt, not one token."""
    from diagnosis_zero.models import save_tiny_qwen2

    return save_tiny_qwen2(tmp_path_factory.mktemp("lively"), initializer_range=0.2)


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    prepare_rarearena(RDC, out, split_ratio=0.5, progress=False)
    return out / "test.parquet"


def test_every_verb_writes_the_same_text_for_the_same_model_and_prompt(lively_model, test_split, tmp_path,
                                                                       capsys):
    case = load_cases(test_split)[0]
    text = case_text_of(case, [])
    assert build_prompt(text, "r1-zero") == case["prompt"]  # the case text reads back exactly

    out = tmp_path / "evaluate.jsonl"
    assert cli.main(["evaluate", "--model", str(lively_model), "--data", str(test_split), "--output", str(out),
                     "--limit", "1", "--max-new-tokens", str(TOKENS), "--assistant-prefix", PREFIX,
                     "--backend", "hf"]) == 0
    [line] = read(out)
    expected = line["completion"]
    assert expected.startswith(PREFIX) and len(set(expected[len(PREFIX):])) > 5
    assert line["generation"] == {"template": "auto", "assistant_prefix": PREFIX, "max_new_tokens": TOKENS,
                                  "temperature": 0.0}

    # browse, pasted case: streamed piece by piece, the same text
    pasted = load_pasted_case_generator(str(lively_model), "r1-zero", PREFIX, TOKENS)
    try:
        pieces = list(pasted.stream(text))
    finally:
        pasted.generator.close()
    assert pieces[0] == PREFIX and "".join(pieces) == expected

    # the generator that diagnose and evaluate-mcq load, several prompts batched with left padding
    config = generation.GenerationConfig(backend="hf", max_new_tokens=TOKENS, temperature=0.0,
                                         assistant_prefix=PREFIX, batch_size=4)
    generator = generation.load_generator(str(lively_model), config)
    try:
        others = [c["prompt"] for c in load_cases(test_split)[1:3]]
        [[(alone, _)]] = generator.generate([case["prompt"]])
        batched = generator.generate([case["prompt"], *others])
    finally:
        generator.close()
    assert PREFIX + alone == expected and PREFIX + batched[0][0][0] == expected
    assert len({text for [(text, _)] in batched}) == 3  # other prompts, other texts

    # diagnose prints exactly this completion's reasoning and answer
    case_file = tmp_path / "case.txt"
    case_file.write_text(text)
    capsys.readouterr()
    assert cli.main(["diagnose", "--model", str(lively_model), "--case-file", str(case_file), "--backend", "hf",
                     "--max-new-tokens", str(TOKENS), "--assistant-prefix", PREFIX]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(describe(expected) + "\n")
    assert f"assistant prefix {PREFIX!r}, up to {TOKENS} new tokens, greedy" in printed


def test_diagnose_has_no_num_samples_flag(capsys):
    with pytest.raises(SystemExit):
        cli.main(["diagnose", "--num-samples", "2"])
    assert "unrecognized arguments: --num-samples" in capsys.readouterr().err


# Two optimizer steps of the demo recipe (template "{case}\nWhat is the diagnosis? ...", prefix <think>) on
# the tiny model; validation at steps 0 and 2, one prompt per generate call as evaluate's --batch-size 1.
TINY = ["--max-completion-length", "10", "--num-generations", "4", "--prompts-per-step", "2",
        "--per-device-train-batch-size", "8", "--use-peft", "false", "--demo-cases", "40",
        "--validation-max-cases", "3", "--validation-steps", "2", "--validation-batch-size", "1",
        "--completions-log-steps", "0", "--report-to", "none", "--learning-rate", "1e-2", "--max-steps", "2",
        # float32 throughout, as `evaluate` runs here: bf16 autocast (the demo recipe's, kept on CPUs
        # with native bf16) rounds differently and tiny random weights make greedy text part there
        "--bf16", "false"]


@pytest.fixture(scope="module")
def grpo_run(lively_model, tmp_path_factory):
    run = tmp_path_factory.mktemp("grpo") / "demo-run"
    assert cli.main(["train", "--model", str(lively_model), "--output-dir", str(run), *TINY]) == 0
    overrides = {"model": str(lively_model), "demo_cases": "40", "output_dir": str(run.parent / "unused")}
    data_dir = train.prepared_data_dir(train.plan_run(None, overrides).recipe)
    return run, data_dir / "test.parquet"


def _validation(run: Path, step: int) -> dict[str, str]:
    return {r["id"]: r["completion"] for r in read(run / generation.VALIDATION_FILE) if r["step"] == step}


def test_a_run_saves_its_recipe_and_prompting(grpo_run, lively_model):
    run, _ = grpo_run
    saved = json.loads((run / generation.RUN_FILE).read_text())
    assert saved == json.loads((run / "checkpoint-2" / generation.RUN_FILE).read_text())
    prompting = saved["prompting"]
    assert prompting["model"] == str(lively_model) and prompting["assistant_prefix"] == PREFIX
    assert prompting["template"].startswith("{case}\nWhat is the diagnosis?") and prompting["max_new_tokens"] == 10
    assert saved["recipe"]["validation_max_cases"] == 3 and saved["grpo"]["max_completion_length"] == 10
    assert generation.saved_run(run / "checkpoint-2") == saved
    assert sorted({r["step"] for r in read(run / generation.VALIDATION_FILE)}) == [0, 2]


def test_a_checkpoint_evaluated_and_browsed_without_flags_writes_what_validation_wrote(grpo_run, tmp_path, capsys):
    run, test_split = grpo_run
    at_0, at_2 = _validation(run, 0), _validation(run, 2)
    assert len(at_2) == 3 and all(c.startswith(PREFIX) for c in at_2.values())

    out = tmp_path / "results"
    assert cli.main(["evaluate", "--checkpoints", str(run), "--data", str(test_split), "--output-dir", str(out),
                     "--limit", "3", "--batch-size", "1", "--backend", "hf"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["step-0.jsonl", "step-2.jsonl"]  # step 0: the run's model
    for step, validation in ((0, at_0), (2, at_2)):
        lines = read(out / f"step-{step}.jsonl")
        assert {r["id"]: r["completion"] for r in lines} == validation
        assert {json.dumps(r["generation"]) for r in lines} == {json.dumps({
            "template": json.loads((run / generation.RUN_FILE).read_text())["prompting"]["template"],
            "assistant_prefix": PREFIX, "max_new_tokens": 10, "temperature": 0.0})}
    one = tmp_path / "one.jsonl"
    assert cli.main(["evaluate", "--model", str(run / "checkpoint-2"), "--data", str(test_split), "--output",
                     str(one), "--limit", "3", "--batch-size", "1", "--backend", "hf"]) == 0
    assert {r["id"]: r["completion"] for r in read(one)} == at_2
    # explicit flags win over the run's prompting
    flagged = tmp_path / "flagged.jsonl"
    assert cli.main(["evaluate", "--model", str(run / "checkpoint-2"), "--data", str(test_split), "--output",
                     str(flagged), "--limit", "3", "--backend", "hf", "--assistant-prefix", "", "--max-new-tokens",
                     "4"]) == 0
    lines = read(flagged)
    assert all(r["num_tokens"] <= 4 and not r["completion"].startswith(PREFIX) for r in lines)
    assert {(r["generation"]["assistant_prefix"], r["generation"]["max_new_tokens"]) for r in lines} == {("", 4)}

    cases = {c["id"]: c for c in load_cases(test_split)}
    template = generation.saved_run(run)["prompting"]["template"]
    pasted = load_pasted_case_generator(str(run / "checkpoint-2"))
    try:
        for case_id, completion in at_2.items():
            assert "".join(pasted.stream(case_text_of(cases[case_id], [template]))) == completion
    finally:
        pasted.generator.close()

    case_id, completion = next(iter(at_2.items()))
    case_file = tmp_path / "case.txt"
    case_file.write_text(case_text_of(cases[case_id], [template]))
    capsys.readouterr()
    assert cli.main(["diagnose", "--model", str(run / "checkpoint-2"), "--case-file", str(case_file),
                     "--backend", "hf"]) == 0
    assert capsys.readouterr().out.startswith(describe(completion) + "\n")


def test_an_explicit_flag_wins_over_the_run(grpo_run):
    run, _ = grpo_run
    config = generation.GenerationConfig(max_new_tokens=3)
    resolved, template = generation.resolve_decoding(config, run / "checkpoint-2", "r1-zero")
    assert (resolved.max_new_tokens, resolved.assistant_prefix, template) == (3, PREFIX, "r1-zero")
    rarearena, _ = generation.resolve_decoding(generation.GenerationConfig(), run, "rarearena")
    assert (rarearena.temperature, rarearena.max_new_tokens, rarearena.assistant_prefix) == (0.1, 4096, "")
