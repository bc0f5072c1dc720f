"""GRPO with tools on real components: TRL's GRPOTrainer(tools=...) on a tiny Qwen2 with the SmolLM2
tokenizer (so the documented Qwen2.5 fallback chat template), real HPO demo data and the real tools.

A random tiny model never writes a tool call, so its first turn is forced, in the open, with a standard
transformers logits processor passed through TRL's own `generation_kwargs`: `sequence_bias` raises, by
far, each next token of one `<tool_call>` right after the prompt's last tokens (and the end-of-turn token
after it). The bias applies only after the instruction that ends every training prompt, so the turn after
the tool result is the model's own sampling. Everything else is the real thing: TRL parses the call, runs
our tool, appends the result, masks it out of the loss, and our reward and metrics read the conversation."""

import json

import pytest

from diagnosis_zero import cli, configs, models, tool_use, train

CALL = {"name": "search_by_phenotypes", "arguments": {"findings": ["seizure", "microcephaly"]}}
INSTRUCTION = "What is the diagnosis? Reply as <think>your reasoning</think><answer>disease name</answer>."
CONTEXT_TOKENS = 12  # prompt tokens the forced call is conditioned on
# max_completion_length 600: the call (~30 tokens) and its result (~450) must fit, or TRL drops the result.
TINY_TOOLS = ["--max-completion-length", "600", "--num-generations", "4", "--prompts-per-step", "2",
              "--per-device-train-batch-size", "8", "--use-peft", "false", "--demo-cases", "20",
              "--validation-max-cases", "2", "--validation-steps", "2", "--validation-max-tokens", "24",
              "--completions-log-steps", "1", "--completions-log-count", "4", "--report-to", "none",
              "--learning-rate", "1e-4", "--temperature", "0.7", "--tools", "search_by_phenotypes", "disease_info",
              "--max-tool-calls", "2", "--tool-call-cost", "0.05", "--free-tool-calls", "0",
              "--tool-format-penalty", "0.1", "--assistant-prefix", "", "--template", "{case}\n" + INSTRUCTION,
              "--max-prompt-tokens", "2048"]


def forced_tool_call(model_dir) -> dict:
    """Return `generation_kwargs` whose `sequence_bias` makes the first turn the `CALL`, token by token."""
    tokenizer = models.load_tokenizer(str(model_dir))
    assert tool_use.ensure_tool_template(tokenizer) == "qwen2.5-fallback"  # SmolLM2's template has no tools
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "case\n" + INSTRUCTION}], tokenize=False,
                                           add_generation_prompt=True)
    context = tokenizer(prompt, add_special_tokens=False)["input_ids"][-CONTEXT_TOKENS:]
    call = "<tool_call>\n" + json.dumps(CALL) + "\n</tool_call>"
    target = tokenizer(call, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    # Each longer match outweighs the shorter ones, and the first (20 + 10) dwarfs log(vocabulary) ~ 11.
    return {"sequence_bias": [[context + target[:k], 20.0 + 10.0 * k] for k in range(1, len(target) + 1)]}


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_grpo_steps_with_tools_execute_and_log_tool_calls(tiny_model_dir, tmp_path):
    out = tmp_path / "tools-run"
    forced = json.dumps(forced_tool_call(tiny_model_dir))
    assert cli.main(["train", "--model", str(tiny_model_dir), "--output-dir", str(out), *TINY_TOOLS,
                     "--generation-kwargs", forced, "--max-steps", "2"]) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [row["step"] for row in rows] == [0, 1, 2]
    # validation decodes greedily through the same tool loop (without the forcing: the model's own turns)
    assert {"val_tool_calls_per_completion", "val_tool_use_rate", "val_score"} <= set(rows[0])
    for row in rows[1:]:
        # every completion opened with the call; TRL ran it (its counter) and our metrics agree
        assert row["tools/call_frequency"] >= 1.0
        assert row["tool_calls_per_completion"] == pytest.approx(row["tools/call_frequency"])
        assert row["tool_use_rate"] == 1.0
        assert row["tool_error_rate"] == 0.0
        assert row["accuracy_with_tools"] == 0.0 and "accuracy_without_tools" not in row
        # shaping: 0.05 per call (none free) and 0.1 per malformed call, as the 'tools' reward
        assert row["rewards/tools"] == pytest.approx(-0.05 * row["tool_calls_per_completion"]
                                                     - 0.1 * row["tool_malformed_rate"], abs=0.02)
    samples = read_jsonl(out / "completions.jsonl")
    called = [s for s in samples if any(m["role"] == "tool" for m in s["trajectory"])]
    assert called, samples
    tool_message = next(m for m in called[0]["trajectory"] if m["role"] == "tool")
    assert tool_message["name"] == "search_by_phenotypes"
    assert tool_message["content"].startswith("HPO terms used: Seizure; Microcephaly")
    # the reward scored the final answer, not the tool result (which is full of disease names)
    assert "ORPHA:" not in (called[0]["prediction"] or "")


def test_tool_recipe_checks_fail_before_model_loading(tmp_path):
    def plan(**fields):
        overrides = {"output_dir": str(tmp_path / "o"), "assistant_prefix": "", **fields}
        return train.plan_run(None, overrides)

    with pytest.raises(configs.ConfigError, match="unknown tool 'google'"):
        plan(tools=["search_by_phenotypes", "google"])
    with pytest.raises(configs.ConfigError, match="assistant_prefix"):
        plan(tools="disease_info", assistant_prefix="<think>")
    with pytest.raises(configs.ConfigError, match="max_tool_calls"):
        plan(tools="disease_info", max_tool_calls="0")
    with pytest.raises(configs.ConfigError, match="orphanet"):
        plan(tools="disease_info", orphanet=str(tmp_path / "missing.xml"))
    planned = plan(tools="disease_info", max_tool_calls="3")
    assert planned.args.max_tool_calling_iterations == 3


def test_demo_tools_recipe_is_valid(tmp_path):
    planned = train.plan_run("demo-tools", {"output_dir": str(tmp_path / "o")})
    assert planned.recipe.tools == ["search_by_phenotypes", "disease_info"]
    assert planned.recipe.demo_distractors > 0


def test_verl_tool_recipe_composes_validates_and_loads_the_tools(tiny_model_dir, tmp_path):
    """The verl launch script's DRY_RUN in verl's own environment: verl's loader registers both tools
    (schemas from the docstrings) and calls them; the config composes and passes validate_config."""
    import os
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    python = repo / ".venv-verl" / "bin" / "python"
    assert python.exists(), f"{python.parent.parent} is missing: run scripts/setup_verl_env.sh"
    config_json = tmp_path / "config.json"
    env = {key: value for key, value in os.environ.items() if key not in ("REWARD_PATH", "VIRTUAL_ENV")}
    # src/ first: verl's workers import the tools of this checkout (setup_verl_env.sh installs the same code)
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHON=str(python), DRY_RUN="1",
               CONFIG_JSON=str(config_json), MODEL_PATH=str(tiny_model_dir), DATA_DIR=str(tmp_path / "data"),
               OUTPUT_DIR=str(tmp_path / "run"), PYTHONPATH=str(repo / "src"))
    process = subprocess.run(["bash", str(repo / "recipes/verl/run_qwen2.5-7b-tools.sh")], capture_output=True,
                             text=True, timeout=600, env=env)
    assert process.returncode == 0, process.stderr[-3000:] + process.stdout[-2000:]
    assert "tool search_by_phenotypes: schema ok" in process.stdout
    assert "tool disease_info: schema ok" in process.stdout and "verl tools OK" in process.stdout
    for check in ("hydra composition", "validate_config", "actor_rollout_ref.rollout -> dataclass"):
        assert f"ok: {check}" in process.stderr
    config = json.loads(config_json.read_text())
    multi_turn = config["actor_rollout_ref"]["rollout"]["multi_turn"]
    assert multi_turn["enable"] is True and multi_turn["format"] == "hermes"
    assert multi_turn["function_tool_path"] == str(repo / "recipes/verl/diagnosis_tools.py")
    assert config["actor_rollout_ref"]["rollout"]["agent"]["default_agent_loop"] == "tool_agent"
    assert config["reward"]["custom_reward_function"] == {
        "path": str(repo / "src/diagnosis_zero/tool_use.py"), "name": "compute_score_final_turn"}


def test_verl_final_turn_reward_ignores_tool_results():
    response = ("<tool_call>\n{\"name\": \"disease_info\", \"arguments\": {\"name_or_orpha_code\": \"355\"}}\n"
                "</tool_call>\nuser\n<tool_response>\nORPHA:355 Gaucher disease\n<answer>Gaucher disease</answer>"
                "\n</tool_response>\nassistant\n<think>It fits.</think><answer>Fabry disease</answer>")
    truth = {"diagnosis": ["Fabry disease"], "orpha_id": "324"}
    scored = tool_use.compute_score_final_turn("rare_arena", response, truth)
    assert scored["acc"] == 1 and scored["format"] == 1 and scored["pred"] == "Fabry disease"
    wrong = tool_use.compute_score_final_turn("rare_arena", response.replace("Fabry disease</answer>", "x</answer>"),
                                              truth)
    assert wrong["acc"] == 0  # the <answer> inside the tool result does not count
