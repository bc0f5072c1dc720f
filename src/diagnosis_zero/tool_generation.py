"""Generation with tools at test time: the flags, the run's own defaults, and the tool loop on the hf generator.

`evaluate`, `diagnose` and `browse` run the loop `train` validates with (`tool_use.run_tool_loop`):
the tool system message, the tools' schemas in the chat template (the model's own, else the documented
Qwen2.5 fallback), the assistant prefix on the first turn only, call -> result -> ... -> final answer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from diagnosis_zero.errors import ConfigError
from diagnosis_zero.generation import HFGenerator, hf_generate_ids, saved_run, without_eos

TOOL_NAMES = ("search_by_phenotypes", "disease_info")  # tools.TOOLS, without loading the tools module
DEFAULT_MAX_TOOL_CALLS = 4


@dataclass
class ToolConfig:
    """The tool loop at test time (`tool_use.run_tool_loop`): which tools, and how many calls."""

    tools: list[str] | None = field(default=None, metadata={
        "choices": TOOL_NAMES, "metavar": "NAME",
        "help": "tools the model may call before it answers (the recipe's `tools`); default: a training run's "
                "own, else none"})
    max_tool_calls: int | None = field(default=None, metadata={
        "help": f"tool calls per case; default: a training run's own, else {DEFAULT_MAX_TOOL_CALLS}"})


def resolve_tools(config: ToolConfig, model_spec: str | os.PathLike | None) -> ToolConfig:
    """Return `config` with unset tools and call limit taken from the run's saved recipe (explicit flags win)."""
    recipe = saved_run(model_spec).get("recipe", {})
    tools = config.tools if config.tools is not None else list(recipe.get("tools") or []) or None
    limit = config.max_tool_calls if config.max_tool_calls is not None else recipe.get("max_tool_calls")
    limit = DEFAULT_MAX_TOOL_CALLS if limit is None else int(limit)
    if limit < 1:
        raise ConfigError("max_tool_calls", f"must be at least 1, got {limit}")
    unknown = [name for name in tools or () if name not in TOOL_NAMES]
    if unknown:
        raise ConfigError("tools", f"unknown tool(s) {', '.join(unknown)}; known: {', '.join(TOOL_NAMES)}")
    return ToolConfig(tools=tools, max_tool_calls=limit)


def configure_tools(config: ToolConfig, orphanet: list[str] | None, model_spec=None) -> None:
    """Point the tools at the Orphanet files: `--orphanet` when given, else the run's recipe's own."""
    if not config.tools:
        return
    from diagnosis_zero import tools

    files = orphanet if orphanet else saved_run(model_spec).get("recipe", {}).get("orphanet")
    if files:
        tools.configure(orphanet=[os.path.expanduser(p) for p in files])


def generate_with_tools(generator: HFGenerator, prompt: list[dict], tool_config: ToolConfig, sample: int = 0, *,
                        case_text: str | None = None, case_id: str | None = None,
                        on_message: Callable[[dict], None] | None = None) -> tuple[dict, int]:
    """Return (trajectory, model tokens) of one case through `tool_use.run_tool_loop`, as train validates.

    The prompt gets the tool system message and the tools' schemas (the model's chat template, else
    the documented Qwen2.5 fallback); the assistant prefix opens the first turn only, as in training.
    `max_new_tokens` bounds all the model's turns together. One case at a time: each turn waits on the
    previous tool result. The trajectory's last reply (`final_answer`) is what gets scored.
    `on_message(message)` sees each model reply and tool result as it comes (browse streams them).
    """
    from diagnosis_zero import tool_use, tools

    funcs = tools.resolve_tools(tool_config.tools)
    tool_use.ensure_tool_template(generator.tokenizer)
    options = dict(generator._options(), seed=generator.config.seed + sample)
    produced = [0]
    seen = [None]  # messages already shown: the first call's are the prompt

    def reply(messages: list[dict]) -> str:
        if on_message is not None:
            for message in messages[len(messages) if seen[0] is None else seen[0]:]:
                if message.get("role") == "tool":
                    on_message(message)
            seen[0] = len(messages)
        first = not any(m.get("role") == "assistant" for m in messages)
        prefix = generator.config.assistant_prefix if first else ""
        text = generator.tokenizer.apply_chat_template(messages, tools=funcs, tokenize=False,
                                                       add_generation_prompt=True) + prefix
        ids = generator.tokenizer(text, add_special_tokens=False)["input_ids"]
        budget = max(1, generator.config.max_new_tokens - produced[0])
        with generator.lock:
            [[out]] = hf_generate_ids(generator.model, [ids], batch_size=1, **dict(options, max_new_tokens=budget))
        produced[0] += len(out)
        text = prefix + generator.tokenizer.decode(without_eos(out, generator.eos_ids), skip_special_tokens=True)
        if on_message is not None:
            on_message({"role": "assistant", "content": text})
        return text

    trajectory = tool_use.run_tool_loop(reply, tool_use.tool_prompt(prompt), funcs, tool_config.max_tool_calls,
                                        case_text=case_text, case_id=case_id)
    return trajectory, produced[0]


def case_text_for_guard(prompt: list[dict]) -> str:
    """Return the text the leakage guard keeps out of tool results: the case's user message(s)."""
    return "\n".join(m["content"] for m in prompt if m.get("role") == "user" and isinstance(m.get("content"), str))


def tool_record(generator: HFGenerator, tool_config: ToolConfig, to_record, case_id: str, sample: int,
                prompt: list[dict]) -> dict:
    """Return `to_record`'s line for one case and sample run through the tool loop (with `trajectory=`)."""
    # an id of a few characters (e.g. "7") would blank every such digit run in the results (ORPHA codes)
    guarded_id = case_id if len(str(case_id)) >= 4 else None
    trajectory, num_tokens = generate_with_tools(generator, prompt, tool_config, sample,
                                                           case_text=case_text_for_guard(prompt), case_id=guarded_id)
    return to_record(case_id, sample, prompt, trajectory["final_answer"], num_tokens, trajectory=trajectory)
