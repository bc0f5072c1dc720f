"""Training with tools (issue 14): what `train` adds when a recipe sets `tools`.

The tools themselves are `diagnosis_zero.tools`; the tool loop, prompt and reward shaping are
`diagnosis_zero.tool_use`. Here: the tool prompts of the training data, the greedy tool loop of
validation, and the reward functions TRL gets for tool rollouts.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from diagnosis_zero import configs

if TYPE_CHECKING:
    from diagnosis_zero.train import TrainPlan

logger = logging.getLogger(__name__)


def tool_funcs(recipe: configs.RecipeConfig) -> list:
    """Return the recipe's tool functions (`tools.resolve_tools`), as TRL's `tools=` takes them."""
    from diagnosis_zero import tools

    return tools.resolve_tools(recipe.tools)


def set_up_tools(recipe: configs.RecipeConfig, tokenizer) -> None:
    """Point the tools at the recipe's Orphanet files and give the tokenizer a tool-call chat template."""
    from diagnosis_zero import tool_use, tools

    if recipe.orphanet:
        tools.configure(orphanet=[os.path.expanduser(p) for p in recipe.orphanet])
    logger.info("tools %s with the %s chat template", ", ".join(recipe.tools),
                tool_use.ensure_tool_template(tokenizer))


def render_tool_prompt(tokenizer, prompt: list[dict], recipe: configs.RecipeConfig) -> tuple[list[dict], str]:
    """Return (the prompt with the tool system message, its rendered text): the tools' schemas are in
    the chat template's rendering (`generation.render_prompt` has neither)."""
    from diagnosis_zero import tool_use

    messages = tool_use.tool_prompt(prompt)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         tools=tool_funcs(recipe)) + recipe.assistant_prefix
    return messages, text


def validate_with_tools(trainer, cases: list[dict], recipe: configs.RecipeConfig, max_new_tokens: int):
    """Return (final answers, completion token ids, tool calls) of greedy tool loops (`tool_use.run_tool_loop`).

    One case at a time: each turn depends on the previous tool result. The token ids are those of all the
    model's turns, the final answer is the last turn's text.
    """
    from diagnosis_zero import tool_use
    from diagnosis_zero.train_validation import greedy_hf

    tokenizer = trainer.processing_class
    funcs = tool_funcs(recipe)
    answers, ids_out, calls = [], [], []
    for case in cases:
        produced: list[int] = []

        def generate(messages, produced=produced):
            text = tokenizer.apply_chat_template(messages, tools=funcs, tokenize=False, add_generation_prompt=True)
            prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids = greedy_hf(trainer, [prompt], max(1, max_new_tokens - len(produced)), 1)[0]
            produced.extend(ids)
            return tokenizer.decode(ids, skip_special_tokens=True)

        trajectory = tool_use.run_tool_loop(generate, case["prompt"], funcs, recipe.max_tool_calls or 4)
        answers.append(trajectory["final_answer"])
        ids_out.append(produced)
        calls.append(len(trajectory["calls"]))
    return answers, ids_out, calls


def tool_reward_funcs(reward_funcs, weights, plan: TrainPlan):
    """Return the reward functions on the final answer, the optional tool shaping, and the tool metrics."""
    from diagnosis_zero import reward, tool_use

    recipe = plan.recipe

    def accuracies(answers, columns):
        kept = {k: v for k, v in columns.items() if k in ("reward_model", "extra_info")}
        return [r["acc"] for r in reward.score_batch(answers, plan.reward_config, **kept)]

    return tool_use.make_tool_reward_funcs(reward_funcs, weights, free_tool_calls=recipe.free_tool_calls,
                                           tool_call_cost=recipe.tool_call_cost,
                                           tool_format_penalty=recipe.tool_format_penalty, score=accuracies)
