"""`diagnosis-zero evaluate`: generate completions for a test split and score them with the reward.

Each output line (docs/formats.md) holds the completion, the extracted prediction (a ranked list
for the `rarearena-top5` and `rarearena` templates), the rule-based score/acc/format, the behaviour
flags (think present, mixed language), the completion length, the model and step, and how it was
generated (`generation`: template, assistant prefix, length limit, temperature).

Decoding is greedy by default, as in the original study's validation, and goes through
`diagnosis_zero.generation` like every verb's: `hf` (transformers, CPU or GPU) or `vllm` (when vLLM
is installed and a GPU is present: `--backend auto`, the default). Given a training run or one of its
checkpoints, the assistant prefix and generation length default to the run's own (its saved recipe).

With `--tools NAME...` (default: a training run's own `tools`), each case runs the same tool loop
as training (`tool_use.run_tool_loop`, hf backend): the model may call the tools up to
`--max-tool-calls` times; `completion` is its final answer, which alone is scored, and `trajectory`
keeps the calls, their results and the whole conversation (docs/formats.md).

`--template rarearena` is RareArena's own protocol: its inference prompt verbatim as the one user
message, built from each case's text; temperature 0.1 and 4,096 new tokens unless given; the raw
output is read as a ranked list (no tags), and each line says `answer_source: "raw"`.

The output is resumable: ids already in it are skipped, and every batch is appended and flushed,
so a crash loses at most one batch. `--checkpoints RUN_DIR` evaluates every `checkpoint-N` of a
training run (and step 0, the base model) into `OUTPUT_DIR/step-N.jsonl`: the original study's
step 0/500/1000/1500 table.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from diagnosis_zero import generation
from diagnosis_zero.cli import add_dataclass_arguments, dataclass_from_args
from diagnosis_zero.errors import ConfigError
from diagnosis_zero.generation import GenerationConfig, generate_into, model_label
from diagnosis_zero.tool_generation import ToolConfig, configure_tools, resolve_tools

log = logging.getLogger(__name__)

TEMPLATE_CHOICES = ("auto", "r1-zero", "rarearena-top5", "rarearena")
TOPK = 5  # RareArena's ranked list


# ---------------------------------------------------------------------------------------------
# Scoring and records


def answer_mode(template: str | None, prompt: list[dict]) -> str:
    """Return "raw" for RareArena's protocol (an untagged ranked list), "list" when the case asks for a
    ranked top-5 list in an answer block, else "single"."""
    if template == "rarearena":
        return "raw"
    if template in ("r1-zero", "rarearena-top5"):
        return "list" if template == "rarearena-top5" else "single"
    from diagnosis_zero.data import TEMPLATES

    lead = TEMPLATES["rarearena-top5"].split("{case}")[0]
    text = prompt[-1]["content"] if prompt else ""
    return "list" if text.startswith(lead) else "single"


def score_completion(case: dict, completion: str, mode: str, reward_options: dict, top_k: int = TOPK) -> dict:
    """Return the rule-based fields of one output line (prediction, score, acc, format, flags, answer source)."""
    from diagnosis_zero.reward import compute_score, extract_answer, parse_ranked_list

    if mode == "raw":
        return _score_raw_list(case, completion, reward_options, top_k)
    truth = {"diagnosis": case["references"], "orpha_id": case["orpha_id"]}
    options = dict(reward_options, topk=top_k) if mode == "list" else reward_options
    result = compute_score(case["data_source"], completion, truth, None, **options)
    answer = extract_answer(completion)
    fields = {
        "prediction": parse_ranked_list(answer)[:top_k] if mode == "list" else answer,
        "score": result["score"], "acc": int(result["acc"]), "format": int(result["format"]),
        "think_present": bool(result["think_present"]), "mixed_language": bool(result["mixed_language"]),
    }
    if mode == "list":
        fields["rank"] = int(result["rank"])  # 1-based rank of the first rule match; 0 = none in the top k
    fields["answer_source"] = "answer_block"
    return fields


def _score_raw_list(case: dict, completion: str, reward_options: dict, top_k: int) -> dict:
    """Score an untagged ranked list (RareArena's protocol) exactly as the reward scores a ranked answer
    block: the list is read from the raw text, then handed to `compute_score` in top-k mode (no format
    penalties: the protocol asks for no tags)."""
    from diagnosis_zero import reward

    # RareArena's requested format ends each line with ';' ("1. Disease A;"): not part of the name
    items = [item for raw in reward.parse_ranked_list(completion) if (item := raw.rstrip(";").strip())]
    block = "<answer>\n" + "\n".join(f"{n}. {item}" for n, item in enumerate(items, start=1)) + "\n</answer>"
    truth = {"diagnosis": case["references"], "orpha_id": case["orpha_id"]}
    result = reward.compute_score(case["data_source"], block, truth, None,
                                  **dict(reward_options, topk=top_k, strict_format=False))
    return {"prediction": items[:top_k], "score": result["score"], "acc": int(result["acc"]),
            "format": int(bool(items)), "think_present": bool(reward.parse_completion(completion).think_present),
            "mixed_language": bool(reward.is_mixed_language(completion)), "rank": int(result["rank"]),
            "answer_source": "raw"}


def case_text_of(case: dict, templates: list[str]) -> str:
    """Return a prepared case's own text, read back out of its prompt by the template that built it."""
    from diagnosis_zero.data import TEMPLATES

    content = case["prompt"][-1]["content"] if case["prompt"] else ""
    for template in [*templates, *TEMPLATES.values()]:
        if "{case}" not in template:
            continue
        lead, trail = template.split("{case}", 1)
        if content.startswith(lead) and content.endswith(trail) and len(content) >= len(lead) + len(trail):
            return content[len(lead):len(content) - len(trail)]
    raise ConfigError("template", f"case {case['id']}: its prompt was built with an unknown template, so the case "
                      "text for --template rarearena cannot be read back; prepare the data with a named template")


def rarearena_prompt(case_text: str) -> list[dict]:
    """Return RareArena's inference request for one case: its prompt verbatim, one user message."""
    from diagnosis_zero.rarearena import INFERENCE_PROMPT

    return [{"role": "user", "content": INFERENCE_PROMPT.replace("{case}", case_text)}]


@dataclass
class EvaluateConfig:
    data: str = field(default="", metadata={"required": True, "help": "prepared split, e.g. DIR/test.parquet"})
    output: str | None = field(default=None, metadata={
        "help": "results JSON Lines file for one --model (resumed if it exists)"})
    output_dir: str | None = field(default=None, metadata={
        "help": "with --checkpoints: the folder that gets one step-N.jsonl per step (resumed)"})
    model: str | None = field(default=None, metadata={"help": (
        "model: local folder (a run's checkpoint-N too), hub id or bundled:NAME; with --checkpoints, the base "
        "model for step 0 (default: the one the run names)")})
    checkpoints: str | None = field(default=None, metadata={
        "help": "training output folder: evaluate each checkpoint-N in it (and step 0 = the base model)"})
    steps: str | None = field(default=None, metadata={
        "help": "with --checkpoints: comma-separated steps to evaluate, e.g. 0,500,1000,1500; default all"})
    limit: int | None = field(default=None, metadata={"help": "evaluate the first N cases only"})
    template: str | None = field(default=None, metadata={"choices": TEMPLATE_CHOICES, "help": (
        "answer format: rarearena-top5 = a ranked list in <answer> (top-k scored); rarearena = RareArena's own "
        "prompt and an untagged ranked list; r1-zero = one diagnosis; default auto = from the prompt")})
    top_k: int = field(default=TOPK, metadata={"help": "items of a ranked-list prediction that count (RareArena: 5)"})
    reward_preset: str = field(default="clinical", metadata={"choices": ("clinical", "original"), "help": (
        "rule scoring: clinical matcher, or the original study's (seed matcher, 1.0/0.1/0.0)")})
    orphanet: list[str] | None = field(default=None, metadata={"aliases": ("--lexicon",), "help": (
        "Orphanet en_product1.xml and/or orphanet_hypernym.json: synonyms that resolve to the orpha_id match "
        "(names read from the XML when both are given)")})


def lexicon_path(paths: list[str] | None) -> str | None:
    """Return the Orphanet file to read names and synonyms from: en_product1.xml if given, else the first."""
    if not paths:
        return None
    return next((p for p in paths if p.lower().endswith(".xml")), paths[0])


def evaluate_model(config: EvaluateConfig, decoding: GenerationConfig, model_spec: str, output: str | Path,
                   cases: list[dict], model: str, step: int | None, checkpoint: str | None = None,
                   template: str | None = None, tool_config: ToolConfig | None = None) -> list[dict]:
    """Evaluate one model on the cases into `output`; return every line of the output.

    `decoding` is resolved (`generation.resolve_decoding`); `template` is what it records as used.
    With `tool_config.tools`, each line also keeps its `trajectory` and is scored on its final answer.
    """
    by_id = {case["id"]: case for case in cases}
    reward_options = {"preset": config.reward_preset}
    if config.orphanet:
        reward_options["lexicon"] = lexicon_path(config.orphanet)
    used = generation.prompting_record(decoding, template or config.template or "auto")
    if tool_config is not None and tool_config.tools:
        used.update(tools=tool_config.tools, max_tool_calls=tool_config.max_tool_calls)

    def to_record(case_id: str, sample: int, prompt: list[dict], completion: str, num_tokens: int,
                  trajectory: dict | None = None) -> dict:
        case = by_id[case_id]
        record = {"id": case_id, "sample": sample, "prompt": prompt, "completion": completion,
                  "references": case["references"], "orpha_id": case["orpha_id"]}
        mode = answer_mode(config.template, prompt)
        record.update(score_completion(case, completion, mode, reward_options, config.top_k))
        record.update(num_tokens=num_tokens, model=model, step=step, generation=used)
        if checkpoint:
            record["checkpoint"] = checkpoint
        if trajectory is not None:
            record["trajectory"] = trajectory
        return record

    return generate_into(output, model_spec, [(c["id"], c["prompt"]) for c in cases], to_record, decoding,
                         tool_config)


def checkpoint_plan(run_dir: str, steps: str | None, base_model: str | None) -> list[tuple[int, str]]:
    """Return (step, model spec) for each step to evaluate: checkpoint-N folders, and 0 = the base.

    Without `base_model`, step 0 is the base a LoRA checkpoint names, else the model the run's saved
    recipe names.
    """
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise ConfigError("checkpoints", f"not a folder: {run_dir}")
    found = {int(m.group(1)): str(p) for p in run.iterdir()
             if p.is_dir() and (m := generation.CHECKPOINT_RE.match(p.name))}
    if base_model is None:
        base_model = next((base for path in found.values() if (base := generation.adapter_base(path))), None)
    if base_model is None:
        base_model = generation.saved_run(run).get("recipe", {}).get("model")
    if base_model is not None:
        found.setdefault(0, base_model)
    if steps is None:
        if not found:
            raise ConfigError("checkpoints", f"no checkpoint-N folder in {run_dir}")
        if 0 not in found:
            log.warning("step 0 skipped: pass --model BASE to evaluate the base model too")
        return sorted(found.items())
    try:
        wanted = sorted({int(s) for s in steps.split(",") if s.strip()})
    except ValueError:
        raise ConfigError("steps", f"expected comma-separated integers, got {steps!r}") from None
    missing = [s for s in wanted if s not in found]
    if missing:
        hint = " (step 0 is the base model: pass --model BASE)" if 0 in missing else ""
        raise ConfigError("steps", f"no checkpoint for step(s) {', '.join(map(str, missing))} in {run_dir}; "
                          f"found {', '.join(map(str, sorted(found))) or 'none'}{hint}")
    return [(s, found[s]) for s in wanted]


def _run_source(run_dir: str) -> str:
    """Return where a run's saved prompting is read: the run folder, else its newest checkpoint."""
    run = Path(run_dir).expanduser()
    if (run / generation.RUN_FILE).is_file():
        return str(run)
    newest = max((p for p in run.iterdir() if generation.CHECKPOINT_RE.match(p.name)),
                 key=lambda p: int(generation.CHECKPOINT_RE.match(p.name).group(1)), default=run)
    return str(newest)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, EvaluateConfig)
    add_dataclass_arguments(parser, GenerationConfig)
    add_dataclass_arguments(parser, ToolConfig)


def _print_summary(records: list[dict], output) -> None:
    from diagnosis_zero.metrics import format_value, summarize

    summary = summarize(records)
    figures = ", ".join(f"{name} {format_value(name, summary[name])}" for name in
                        ("top1_rule", "top5_rule", "format_rate", "think_rate", "mixed_language_rate", "tokens_mean")
                        if summary[name] is not None)
    with_tools = [r for r in records if "trajectory" in r]
    if with_tools:
        calls = sum(len(r["trajectory"].get("calls") or []) for r in with_tools)
        used = sum(bool(r["trajectory"].get("calls")) for r in with_tools)
        figures += f", tool calls per case {calls / len(with_tools):.2f}, tool use {used / len(with_tools):.1%}"
    print(f"{output}: {summary['n']} lines; {figures}")


def describe_generation(used: dict) -> str:
    """Return a one-line account of how completions were generated (printed by the verbs)."""
    template = used["template"] if used["template"] is None or len(used["template"]) <= 40 else \
        repr(used["template"][:37] + "...")
    decoding = "greedy" if not used["temperature"] else f"temperature {used['temperature']}"
    tools = f", tools {', '.join(used['tools'])} (up to {used['max_tool_calls']} calls)" if used.get("tools") else ""
    return (f"generation: template {template}, assistant prefix {used['assistant_prefix']!r}, "
            f"up to {used['max_new_tokens']} new tokens, {decoding}{tools}")


def _outputs(config: EvaluateConfig) -> None:
    """Check --output/--output-dir against the mode; an old `--checkpoints R --output DIR` still works."""
    if config.checkpoints is None:
        if not config.output:
            raise ConfigError("output", "give --output FILE (--output-dir is for --checkpoints)")
        return
    if config.output_dir is None:
        if not config.output:
            raise ConfigError("output_dir", "give --output-dir DIR: it gets one step-N.jsonl per step")
        if Path(config.output).suffix == ".jsonl":
            raise ConfigError("output", "with --checkpoints, give --output-dir DIR (it gets one step-N.jsonl per step)")
        print("warning: --output DIR with --checkpoints is deprecated; use --output-dir DIR", file=sys.stderr)
        config.output_dir = config.output


def _prompts_for(cases: list[dict], template: str | None, run_template: str | None) -> None:
    """With RareArena's protocol, replace each prepared prompt by RareArena's own, built from the case text."""
    if template != "rarearena":
        return
    known = [run_template] if run_template else []
    for case in cases:
        case["prompt"] = rarearena_prompt(case_text_of(case, known))


def run(args) -> int:
    from diagnosis_zero.data import load_cases

    config = dataclass_from_args(EvaluateConfig, args)
    decoding = dataclass_from_args(GenerationConfig, args)
    if config.checkpoints is None and not config.model:
        raise ConfigError("model", "give --model, or --checkpoints RUN_DIR")
    if config.steps and not config.checkpoints:
        raise ConfigError("steps", "--steps selects checkpoints: give --checkpoints RUN_DIR too")
    if config.top_k < 1:
        raise ConfigError("top_k", f"must be at least 1, got {config.top_k}")
    _outputs(config)
    if config.orphanet:
        from diagnosis_zero.reward import load_lexicon

        load_lexicon(lexicon_path(config.orphanet))  # a bad file fails now, not after the model has loaded
    source = config.model if config.checkpoints is None else _run_source(config.checkpoints)
    decoding, template = generation.resolve_decoding(decoding, source, config.template)
    generation.generation_kwargs(decoding)  # bad JSON fails now, not after the model has loaded
    tool_config = resolve_tools(dataclass_from_args(ToolConfig, args), source)
    configure_tools(tool_config, config.orphanet, source)
    cases = load_cases(config.data)[:config.limit]
    _prompts_for(cases, config.template, generation.saved_run(source).get("prompting", {}).get("template"))
    used = generation.prompting_record(decoding, template or "auto")
    if tool_config.tools:
        used.update(tools=tool_config.tools, max_tool_calls=tool_config.max_tool_calls)
    print(describe_generation(used))
    if config.checkpoints is None:
        model, step = model_label(config.model)
        checkpoint = config.model if step is not None else None
        records = evaluate_model(config, decoding, config.model, config.output, cases, model, step, checkpoint,
                                 template, tool_config)
        _print_summary(records, config.output)
        return 0
    run_name = Path(config.checkpoints).expanduser().resolve().name
    for step, spec in checkpoint_plan(config.checkpoints, config.steps, config.model):
        output = Path(config.output_dir) / f"step-{step}.jsonl"
        records = evaluate_model(config, decoding, spec, output, cases, run_name, step, spec if step else None,
                                 template, tool_config)
        _print_summary(records, output)
    return 0
