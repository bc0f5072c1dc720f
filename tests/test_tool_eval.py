"""`evaluate --tools` on real components: the tiny random Qwen2 (SmolLM2 tokenizer, so the documented
Qwen2.5 fallback chat template), real prepared RareArena parquet, the real tools and tool loop.

A random tiny model never writes a tool call, so the first case's first turn is forced, in the open,
with a standard transformers logits processor passed through `--generation-kwargs`: `sequence_bias`
raises, by far, each next token of one `<tool_call>` right after that case's own last prompt tokens (and
the end-of-turn token after it). Only that context is biased, so the turn after the tool result and every
other case are the model's own greedy decoding. Everything else is real: the loop parses the call, runs
`search_by_phenotypes` on the knowledge base, feeds the result back, the model answers, the final answer
is scored and the line keeps the trajectory.
"""

import json
from pathlib import Path

import pytest
from werkzeug.test import Client

from diagnosis_zero import browse, browse_pages, cli, generation, models, tool_generation, tool_use, tools
from diagnosis_zero.data import build_prompt, load_cases, prepare_rarearena
from diagnosis_zero.errors import ConfigError
from diagnosis_zero.evaluate import answer_mode, score_completion

RDC = Path(__file__).parent / "fixtures" / "rarearena" / "rdc.jsonl"
CALL = {"name": "search_by_phenotypes", "arguments": {"findings": ["seizure", "microcephaly"]}}
CONTEXT_TOKENS = 12  # prompt tokens the forced call is conditioned on: the end of the first case's text


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    prepare_rarearena(RDC, out, split_ratio=0.5, progress=False)
    return out / "test.parquet"


def forced_first_call(model_dir, case: dict) -> str:
    """Return `--generation-kwargs` whose `sequence_bias` makes `case`'s first turn the `CALL`, token by token."""
    tokenizer = models.load_tokenizer(str(model_dir))
    assert tool_use.ensure_tool_template(tokenizer) == "qwen2.5-fallback"  # SmolLM2's template has no tools
    funcs = tools.resolve_tools(["search_by_phenotypes", "disease_info"])
    prompt = tokenizer.apply_chat_template(tool_use.tool_prompt(case["prompt"]), tools=funcs, tokenize=False,
                                           add_generation_prompt=True)
    context = tokenizer(prompt, add_special_tokens=False)["input_ids"][-CONTEXT_TOKENS:]
    call = "<tool_call>\n" + json.dumps(CALL) + "\n</tool_call>"
    target = tokenizer(call, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    # Each longer match outweighs the shorter ones, and the first (20 + 10) dwarfs log(vocabulary) ~ 11.
    bias = [[context + target[:k], 20.0 + 10.0 * k] for k in range(1, len(target) + 1)]
    return json.dumps({"sequence_bias": bias})


def read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_evaluate_with_tools_keeps_trajectories_and_scores_the_final_answer(tiny_model_dir, test_split, tmp_path,
                                                                           capsys):
    cases = load_cases(test_split)[:3]
    out = tmp_path / "tools.jsonl"
    argv = ["evaluate", "--model", str(tiny_model_dir), "--data", str(test_split), "--output", str(out),
            "--limit", "3", "--max-new-tokens", "60", "--backend", "hf",
            "--tools", "search_by_phenotypes", "disease_info", "--max-tool-calls", "2",
            "--generation-kwargs", forced_first_call(tiny_model_dir, cases[0])]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "tools search_by_phenotypes, disease_info (up to 2 calls)" in printed
    assert "tool use 33.3%" in printed
    lines = read(out)
    assert [r["id"] for r in lines] == [c["id"] for c in cases]
    first = lines[0]
    trajectory = first["trajectory"]
    assert set(trajectory) == {"messages", "calls", "malformed_calls", "final_answer"}
    [call] = trajectory["calls"]
    assert (call["name"], call["arguments"]) == (CALL["name"], CALL["arguments"])
    # the real tool's answer: ranked Orphanet diseases, not an error
    assert call["error"] is False and "ORPHA:" in call["result"]
    roles = [m["role"] for m in trajectory["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    assert trajectory["messages"][0]["content"] == tool_use.TOOL_SYSTEM_PROMPT
    assert trajectory["messages"][2]["tool_calls"][0]["function"] == CALL
    assert trajectory["messages"][3]["content"] == call["result"]
    # the line is scored on the final answer only (the model's own turn after the result)
    assert first["completion"] == trajectory["final_answer"] == trajectory["messages"][-1]["content"]
    assert "<tool_call>" not in first["completion"]
    case = cases[0]
    expected = score_completion(case, first["completion"], answer_mode(None, case["prompt"]), {"preset": "clinical"})
    assert {k: first[k] for k in expected} == expected
    assert first["generation"]["tools"] == ["search_by_phenotypes", "disease_info"]
    assert first["generation"]["max_tool_calls"] == 2
    assert first["num_tokens"] > len(call["arguments"]["findings"])  # the call's tokens and the answer's
    # the other cases were not forced: the random model answered at once, and still has a trajectory
    for line in lines[1:]:
        assert line["trajectory"]["calls"] == [] and line["trajectory"]["final_answer"] == line["completion"]
    # resumable as without tools: a rerun finds every case done and generates nothing
    before = out.read_text()
    assert cli.main(argv) == 0
    assert out.read_text() == before


def test_tools_default_to_the_runs_own_and_flags_win(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / generation.RUN_FILE).write_text(json.dumps({
        "prompting": {"template": None}, "recipe": {"tools": ["disease_info"], "max_tool_calls": 3}}))
    checkpoint = run / "checkpoint-2"
    assert tool_generation.resolve_tools(tool_generation.ToolConfig(), checkpoint) == \
        tool_generation.ToolConfig(tools=["disease_info"], max_tool_calls=3)
    explicit = tool_generation.ToolConfig(tools=["search_by_phenotypes"], max_tool_calls=1)
    assert tool_generation.resolve_tools(explicit, checkpoint) == explicit
    assert tool_generation.resolve_tools(tool_generation.ToolConfig(), tmp_path) == \
        tool_generation.ToolConfig(tools=None, max_tool_calls=tool_generation.DEFAULT_MAX_TOOL_CALLS)
    with pytest.raises(ConfigError, match="max_tool_calls"):
        tool_generation.resolve_tools(tool_generation.ToolConfig(tools=["disease_info"], max_tool_calls=0), None)


@pytest.mark.parametrize(("extra", "message"), [
    (["--tools", "disease_info", "--backend", "vllm"], "--backend hf"),
    (["--generation-kwargs", "[1, 2]"], "'generation_kwargs': must be a JSON object"),
])
def test_bad_tool_options_are_clear_errors(tiny_model_dir, test_split, tmp_path, capsys, extra, message):
    argv = ["evaluate", "--model", str(tiny_model_dir), "--data", str(test_split), "--output",
            str(tmp_path / "x.jsonl"), "--max-new-tokens", "4", "--limit", "1", *extra]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_an_unknown_tool_is_refused_by_the_parser(tiny_model_dir, test_split, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", "--model", str(tiny_model_dir), "--data", str(test_split), "--output",
                  str(tmp_path / "x.jsonl"), "--tools", "web_search"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'web_search'" in capsys.readouterr().err


def test_diagnose_with_tools_prints_each_call_its_result_and_the_answer(tiny_model_dir, tmp_path, capsys):
    """The same forcing as above on the pasted case's prompt; the answer turn is the model's own."""
    text = "A 3-year-old girl with seizures, microcephaly and developmental delay."
    case_file = tmp_path / "case.txt"
    case_file.write_text(text)
    forced = forced_first_call(tiny_model_dir, {"prompt": build_prompt(text, "r1-zero")})
    assert cli.main(["diagnose", "--model", str(tiny_model_dir), "--case-file", str(case_file), "--backend", "hf",
                     "--max-new-tokens", "50", "--tools", "search_by_phenotypes", "--generation-kwargs", forced]) == 0
    printed = capsys.readouterr().out
    assert 'Tool calls: 1\n  1. search_by_phenotypes(findings=["seizure", "microcephaly"])\n     | ' in printed
    result_lines = [line for line in printed.splitlines() if line.startswith("     | ")]
    assert any("ORPHA:" in line for line in result_lines)
    assert printed.index("Tool calls:") < printed.index("Reasoning:") < printed.index("Answer")
    assert "tools search_by_phenotypes (up to 4 calls)" in printed


def test_browse_streams_a_pasted_cases_tool_loop_and_scores_its_final_answer(tiny_model_dir):
    """browse's /api/diagnose with tools, on the tiny model with the same forced first turn."""
    text = "A 3-year-old girl with seizures, microcephaly and developmental delay."
    forced = forced_first_call(tiny_model_dir, {"prompt": build_prompt(text, "r1-zero")})
    config = generation.GenerationConfig(backend="hf", max_new_tokens=50, temperature=0.0, assistant_prefix="",
                                         generation_kwargs=forced)
    tool_config = tool_generation.ToolConfig(tools=["search_by_phenotypes"], max_tool_calls=2)
    pasted = browse.Generator(generation.load_generator(str(tiny_model_dir), config, tool_config), "r1-zero",
                              tool_config)
    client = Client(browse.make_app({"step-0": [{"id": "x", "prompt": [], "completion": ""}]}, generator=pasted))
    streamed = client.post("/api/diagnose", data={"case": text}).get_data(as_text=True)
    sections = streamed.split("── ")
    assert sections[1].startswith("model turn\n<tool_call>")
    assert sections[2].startswith("result of search_by_phenotypes\n") and "ORPHA:" in sections[2]
    assert sections[-1].startswith(browse_pages.ANSWER_MARKER[3:])
    final = streamed.rsplit(browse_pages.ANSWER_MARKER, 1)[1]
    assert sections[-2] == f"model turn\n{final}\n\n"  # the answer is the model's own last turn
    rendered = client.post("/api/render", data={"completion": streamed, "reference": "Angelman syndrome"})
    assert "ORPHA:" not in rendered.get_data(as_text=True)  # only the final answer is rendered and scored
