"""Tool use around the reward and the generators: chat template, trajectories, metrics, shaping, a tool loop.

Training (`train` with `tools:` in the recipe): TRL's `GRPOTrainer(tools=...)` runs the calls and masks
the tool results out of the loss; this module supplies what TRL leaves to us:

- `ensure_tool_template`: the model's own chat template when it renders tool calls (Qwen2.5's does),
  else TRL's bundled Qwen2.5 template as a documented fallback (ChatML with Hermes-style
  `<tool_call>{json}</tool_call>`; SmolLM2's template has no tool support but the same ChatML tokens);
- `make_tool_reward_funcs`: the final-answer reward on the last assistant message only (tool results
  never count as an answer), optional shaping (a cost per call beyond `free_tool_calls`, a fault for a
  malformed call), and the per-step tool metrics for `metrics.jsonl`;
- `run_tool_loop`: the same loop for any generator (`evaluate`, `diagnose`), returning a trajectory
  (docs/formats.md, "Tool trajectories").
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

# Given to the model as the system message when tools are on; the instruction in the prompt still
# says how to answer.
TOOL_SYSTEM_PROMPT = (
    "You are an expert in rare diseases. You may call tools to look up phenotypes and diseases before "
    "you answer. When you are done, give your final answer as <think>your reasoning</think>"
    "<answer>disease name</answer>.")
TOOL_CALL_OPEN = "<tool_call>"
_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
TRL_ERROR_PREFIX = "{'error'"  # TRL's str({"error": ...}) for a call that raised or named no tool


def ensure_tool_template(tokenizer) -> str:
    """Give `tokenizer` a chat template that renders tool calls; return 'model' or 'qwen2.5-fallback'.

    The fallback is TRL's own copy of Qwen2.5's template (`trl.chat_template_utils`), so TRL also knows
    how to parse its tool calls. It fits ChatML tokenizers (`<|im_start|>`/`<|im_end|>`, e.g. SmolLM2's).
    Without a system message it writes Qwen's default one; `tool_prompt` always gives one.
    """
    from trl.chat_template_utils import qwen2_5_chat_template, supports_tool_calling

    if supports_tool_calling(tokenizer):
        return "model"
    tokenizer.chat_template = qwen2_5_chat_template
    return "qwen2.5-fallback"


def tool_prompt(messages: Sequence[dict]) -> list[dict]:
    """Return the chat messages with `TOOL_SYSTEM_PROMPT` as the system message (an existing one is kept)."""
    messages = [dict(m) for m in messages]
    if messages and messages[0].get("role") == "system":
        return messages
    return [{"role": "system", "content": TOOL_SYSTEM_PROMPT}, *messages]


# ---------------------------------------------------------------- reading a completion

def _text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return "" if content is None else str(content)


def final_answer(completion) -> str:
    """Return the text of the last assistant message of a (multi-turn) completion: what the reward scores."""
    if isinstance(completion, str):
        return completion
    for message in reversed(list(completion)):
        if message.get("role", "assistant") == "assistant":
            return _text(message.get("content"))
    return ""


def is_tool_error(content) -> bool:
    """True for a tool result that reports a failure: ours ('Error: ...') or TRL's ({'error': ...})."""
    from diagnosis_zero.tools import ERROR_PREFIX

    text = _text(content).lstrip()
    return text.startswith(ERROR_PREFIX) or text.startswith(TRL_ERROR_PREFIX)


def tool_usage(completion) -> dict:
    """Return {'calls', 'errors', 'malformed'} counts of one completion (TRL's list of messages).

    `calls` counts executed calls (one tool message each; a call left in the last turn when the turn
    limit is reached is not run). A malformed call is a `<tool_call>` TRL could not parse: it stays in
    an assistant message's text.
    """
    if isinstance(completion, str):
        return {"calls": 0, "errors": 0, "malformed": completion.count(TOOL_CALL_OPEN)}
    calls = errors = malformed = 0
    for message in completion:
        role = message.get("role")
        if role == "assistant":
            malformed += _text(message.get("content")).count(TOOL_CALL_OPEN)
        elif role == "tool":
            calls += 1
            errors += is_tool_error(message.get("content"))
    return {"calls": calls, "errors": errors, "malformed": malformed}


# ---------------------------------------------------------------- reward and metrics

def make_tool_reward_funcs(funcs: list[Callable], weights: list[float], *, free_tool_calls: int = 0,
                           tool_call_cost: float = 0.0, tool_format_penalty: float = 0.0,
                           score: Callable[[list[str], dict], list[float]] | None = None):
    """Return (reward functions, weights) for tool rollouts: `funcs` on the final answers, plus shaping.

    Each of `funcs` sees only the last assistant message of each completion (and the whole
    conversations as the `tool_completions` column, e.g. for completions.jsonl). When `tool_call_cost` or
    `tool_format_penalty` is non-zero, a `tools` reward (weight 1) adds `-tool_call_cost` per call
    beyond `free_tool_calls` and `-tool_format_penalty` per malformed call. The first synchronous function logs,
    through TRL's `log_metric`: `tool_calls_per_completion`, `tool_error_rate` (failed results / calls),
    `tool_use_rate` (share of completions with a call), and, given `score(final_answers, columns) ->
    accuracies`, `accuracy_with_tools` / `accuracy_without_tools` (only for groups that are not empty).
    """
    import inspect

    first_sync = next((func for func in funcs if not inspect.iscoroutinefunction(func)), None)
    wrapped = []
    for func in funcs:
        if inspect.iscoroutinefunction(func):  # e.g. the judge reward: TRL awaits it on its event loop
            async def on_final(prompts=None, completions=(), _func=func, **columns):
                finals = [[{"role": "assistant", "content": final_answer(c)}] for c in completions]
                return await _func(prompts=prompts, completions=finals, tool_completions=completions, **columns)
        else:
            def on_final(prompts=None, completions=(), _func=func, _first=func is first_sync, **columns):
                finals = [[{"role": "assistant", "content": final_answer(c)}] for c in completions]
                if _first:
                    _log_tool_metrics(completions, finals, columns, score)
                return _func(prompts=prompts, completions=finals, tool_completions=completions, **columns)

        on_final.__name__ = on_final.__qualname__ = func.__name__
        wrapped.append(on_final)
    weights = list(weights)
    if tool_call_cost or tool_format_penalty:
        def tools(prompts=None, completions=(), **columns) -> list[float]:
            usage = [tool_usage(c) for c in completions]
            return [-tool_call_cost * max(0, u["calls"] - free_tool_calls) - tool_format_penalty * u["malformed"]
                    for u in usage]

        wrapped.append(tools)
        weights.append(1.0)
    return wrapped, weights


def _log_tool_metrics(completions, finals, columns, score) -> None:
    log_metric = columns.get("log_metric")
    if not callable(log_metric) or not completions:
        return
    usage = [tool_usage(c) for c in completions]
    calls = sum(u["calls"] for u in usage)
    used = [u["calls"] > 0 for u in usage]
    log_metric("tool_calls_per_completion", calls / len(usage))
    log_metric("tool_error_rate", sum(u["errors"] for u in usage) / calls if calls else 0.0)
    log_metric("tool_use_rate", sum(used) / len(used))
    log_metric("tool_malformed_rate", sum(u["malformed"] > 0 for u in usage) / len(usage))
    if score is None:
        return
    accuracies = score([f[0]["content"] for f in finals], columns)
    with_tools = [a for a, u in zip(accuracies, used, strict=True) if u]
    without = [a for a, u in zip(accuracies, used, strict=True) if not u]
    if with_tools:
        log_metric("accuracy_with_tools", sum(with_tools) / len(with_tools))
    if without:
        log_metric("accuracy_without_tools", sum(without) / len(without))


# ---------------------------------------------------------------- a tool loop for any generator

def parse_tool_calls(text: str) -> tuple[list[dict], int]:
    """Return (calls, malformed count) of Hermes-style `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`."""
    calls, malformed = [], 0
    for body in _TOOL_CALL.findall(text):
        try:
            call = json.loads(body)
        except ValueError:
            malformed += 1
            continue
        arguments = call.get("arguments", {}) if isinstance(call, dict) else None
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                arguments = None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not isinstance(arguments, dict):
            malformed += 1
            continue
        calls.append({"name": call["name"], "arguments": arguments})
    return calls, malformed


def call_tool(tools: dict[str, Callable], name: str, arguments: dict) -> str:
    """Run one tool call; an unknown tool or wrong argument names give an error text, never an exception."""
    from diagnosis_zero.tools import ERROR_PREFIX

    tool = tools.get(name)
    if tool is None:
        return f"{ERROR_PREFIX} unknown tool; available: {', '.join(sorted(tools))}."
    try:
        return str(tool(**arguments))
    except TypeError:
        return f"{ERROR_PREFIX} wrong arguments for {name}; see its parameters."


def run_tool_loop(generate_fn: Callable[[list[dict]], str], messages: Sequence[dict],
                  tools: Sequence[Callable], max_calls: int = 4, *, case_text: str | None = None,
                  case_id: str | None = None) -> dict:
    """Return the trajectory of one case: generate, run the tool calls, feed the results back, repeat.

    `generate_fn(messages) -> assistant text` renders the conversation itself (with the tools' schemas,
    e.g. `tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True)`). The loop
    stops at a reply without tool calls; after `max_calls` calls, further calls get an error result and
    the model one more turn to answer. `case_text`/`case_id`, when given, are redacted from every
    tool result (`redact_case`). The trajectory (docs/formats.md): `messages` (the whole conversation),
    `calls` ([{name, arguments, result, error}]), `malformed_calls`, `final_answer` (the last reply).
    """
    table = {tool.__name__: tool for tool in tools}
    conversation = [dict(m) for m in messages]
    calls: list[dict] = []
    malformed = 0
    limit_reached = False
    while True:
        reply = generate_fn(conversation)
        found, bad = parse_tool_calls(reply)
        malformed += bad
        assistant = {"role": "assistant", "content": reply}
        if found:
            assistant["tool_calls"] = [{"type": "function", "function": c} for c in found]
        conversation.append(assistant)
        if not found or limit_reached:
            break
        for call in found:
            if len(calls) < max_calls:
                result = redact_case(call_tool(table, call["name"], call["arguments"]), case_text, case_id)
            else:
                from diagnosis_zero.tools import ERROR_PREFIX

                result = f"{ERROR_PREFIX} tool call limit ({max_calls}) reached; give your final answer."
                limit_reached = True
            calls.append({**call, "result": result, "error": is_tool_error(result)})
            conversation.append({"role": "tool", "name": call["name"], "content": result})
    return {"messages": conversation, "calls": calls, "malformed_calls": malformed, "final_answer": reply}


# ---------------------------------------------------------------- leakage guard

REDACTED = "[redacted]"
CASE_SPAN_WORDS = 8  # a run of this many words of the case text in a tool result is the case, not knowledge


def redact_case(result: str, case_text: str | None, case_id: str | None) -> str:
    """Return a tool result with the case's id and any run of `CASE_SPAN_WORDS`+ words of its text removed.

    The tools answer from the knowledge base only, so this never fires on their own output; it guards
    a loop that holds per-case context (evaluation) against a future tool that would echo it.
    """
    if case_id and str(case_id).strip():
        result = re.sub(re.escape(str(case_id).strip()), REDACTED, result, flags=re.IGNORECASE)
    if not case_text:
        return result
    words = re.findall(r"\S+", case_text)
    if len(words) < CASE_SPAN_WORDS:
        return result
    spans = {" ".join(words[i:i + CASE_SPAN_WORDS]).lower() for i in range(len(words) - CASE_SPAN_WORDS + 1)}
    tokens = list(re.finditer(r"\S+", result))
    cut: list[tuple[int, int]] = []
    for i in range(len(tokens) - CASE_SPAN_WORDS + 1):
        window = " ".join(t.group() for t in tokens[i:i + CASE_SPAN_WORDS]).lower()
        if window in spans:
            cut.append((tokens[i].start(), tokens[i + CASE_SPAN_WORDS - 1].end()))
    for start, end in reversed(_merge(cut)):
        result = result[:start] + REDACTED + result[end:]
    return result


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


# ---------------------------------------------------------------- verl

_LAST_TOOL_RESPONSE = re.compile(r"^.*</tool_response>\s*(?:assistant\s*\n)?", re.DOTALL)


def compute_score_final_turn(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    """verl reward for multi-turn tool rollouts: `reward.compute_score` on the text after the last tool result.

    verl decodes a multi-turn response as one string, tool results (`<tool_response>...`) included;
    only the model's last turn is its answer (recipes/verl/run_qwen2.5-7b-tools.sh).
    """
    from diagnosis_zero import reward

    return reward.compute_score(data_source, _LAST_TOOL_RESPONSE.sub("", solution_str, count=1), ground_truth,
                                extra_info, **kwargs)
