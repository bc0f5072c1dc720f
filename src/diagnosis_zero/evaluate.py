"""`diagnosis-zero evaluate`: generate completions for a test split and score them with the reward.

Each output line (docs/formats.md) holds the completion, the extracted prediction (a ranked list
for the `rarearena-top5` template), the rule-based score/acc/format, the behaviour flags
(think present, mixed language), the completion length, and the model and step.

Decoding is greedy by default, as in the original study's validation. Two backends:
- `hf`: transformers `generate`, batched with left padding; runs on the CPU (or a GPU if present);
- `vllm`: used when vLLM is installed and a GPU is present (`--backend auto`, the default).

The output is resumable: ids already in it are skipped, and every batch is appended and flushed,
so a crash loses at most one batch. `--checkpoints RUN_DIR` evaluates every `checkpoint-N` of a
training run (and step 0, the base model) into `OUTPUT_DIR/step-N.jsonl`: the original study's
step 0/500/1000/1500 table.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from diagnosis_zero.errors import ConfigError
from diagnosis_zero.io import append_jsonl, iter_jsonl

log = logging.getLogger(__name__)

BACKENDS = ("auto", "hf", "vllm")
TEMPLATE_CHOICES = ("auto", "r1-zero", "rarearena-top5")
TOPK = 5  # RareArena's ranked list
VLLM_MIN_BATCH = 256  # prompts handed to vLLM per written batch
_CHECKPOINT = re.compile(r"checkpoint-(\d+)$")


# ---------------------------------------------------------------------------------------------
# Config plumbing shared by evaluate, evaluate-mcq, diagnose and judge

_ARG_TYPES = {"int": int, "float": float, "str": str}


def add_config_arguments(parser: argparse.ArgumentParser, config_cls) -> None:
    """Add one `--flag` per field of a config dataclass, with the field's default and help."""
    for config_field in dataclasses.fields(config_cls):
        flag = "--" + config_field.name.replace("_", "-")
        type_name = str(config_field.type).replace(" | None", "")
        help_text = config_field.metadata.get("help", "")
        default = (config_field.default_factory() if config_field.default_factory is not dataclasses.MISSING
                   else config_field.default)
        if config_field.metadata.get("required"):
            parser.add_argument(flag, dest=config_field.name, required=True, help=help_text,
                                type=_ARG_TYPES[type_name])
        elif type_name == "bool":
            parser.add_argument(flag, dest=config_field.name, default=default,
                                action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag, dest=config_field.name, default=default, type=_ARG_TYPES[type_name],
                                choices=config_field.metadata.get("choices"),
                                help=f"{help_text} (default: {default})")


def config_from_args(config_cls, args: argparse.Namespace):
    """Build a config dataclass from the parsed CLI arguments of `add_config_arguments`."""
    return config_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)})


# ---------------------------------------------------------------------------------------------
# Resumable outputs


def resume_jsonl(path: str | os.PathLike) -> list[dict]:
    """Return the records already in a resumable output file (none if it does not exist).

    A crash can leave a last line without its newline: that partial line is cut off the file
    (and its case redone), so appending never glues a new record onto it.
    """
    path = Path(path)
    if not path.exists():
        return []
    with open(path, "rb+") as fh:
        content = fh.read()
        if content and not content.endswith(b"\n"):
            keep = content.rfind(b"\n") + 1
            log.warning("%s: dropping a partial last line left by an interrupted run (%d bytes)",
                        path, len(content) - keep)
            fh.truncate(keep)
    return [record for _, record in iter_jsonl(path)]


def record_key(record: dict) -> tuple[str, int]:
    """The identity of an output line: case id and sample index."""
    return str(record.get("id")), int(record.get("sample") or 0)


# ---------------------------------------------------------------------------------------------
# Generation backends


@dataclass
class GenerationConfig:
    backend: str = field(default="auto", metadata={
        "choices": BACKENDS, "help": "auto = vllm when vLLM is installed and a GPU is present, else hf"})
    batch_size: int = field(default=8, metadata={
        "help": "prompts per generate call (hf) or per written batch (vllm: at least 256); a crash loses at "
                "most one batch"})
    max_new_tokens: int = field(default=1024, metadata={
        "help": "completion length limit in tokens (the original study: 1024)"})
    temperature: float = field(default=0.0, metadata={
        "help": "sampling temperature; 0 = greedy decoding (the original study's validation)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (when temperature > 0)"})
    num_samples: int = field(default=1, metadata={
        "help": "completions per prompt (needs temperature > 0 to differ); each is one output line"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    dtype: str = field(default="auto", metadata={
        "choices": ("auto", "float32", "bfloat16", "float16"),
        "help": "weights dtype; auto = bfloat16 on a GPU, float32 on the CPU"})
    assistant_prefix: str = field(default="", metadata={
        "help": "text opening the assistant turn, e.g. '<think>' if the model was trained so; it is "
                "part of the scored completion"})
    gpu_memory_utilization: float = field(default=0.6, metadata={
        "help": "vllm: fraction of GPU memory for weights and KV cache (the original study: 0.6)"})


def _chat_texts(tokenizer, prompts: list[list[dict]], prefix: str) -> list[str]:
    return [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) + prefix
            for p in prompts]


class HFGenerator:
    """transformers `generate`, batched with left padding."""

    def __init__(self, model_spec: str, config: GenerationConfig):
        import torch

        from diagnosis_zero.models import load_model_and_tokenizer

        self.config = config
        dtype = None if config.dtype == "auto" else getattr(torch, config.dtype)
        self.model, self.tokenizer = load_model_and_tokenizer(model_spec, dtype=dtype)
        if torch.cuda.is_available():
            self.model.to("cuda")
        self.tokenizer.padding_side = "left"
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        self.eos_ids.discard(None)

    def generate(self, prompts: list[list[dict]]) -> list[list[tuple[str, int]]]:
        """Return, per prompt, `num_samples` (completion text, completion tokens)."""
        import torch

        config = self.config
        texts = _chat_texts(self.tokenizer, prompts, config.assistant_prefix)
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        batch = batch.to(self.model.device)
        sampling = config.temperature > 0
        options = {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p} if sampling \
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        torch.manual_seed(config.seed)
        with torch.no_grad():
            output = self.model.generate(**batch, max_new_tokens=config.max_new_tokens,
                                         num_return_sequences=config.num_samples,
                                         pad_token_id=self.tokenizer.pad_token_id, **options)
        new_tokens = output[:, batch["input_ids"].shape[1]:].tolist()
        completions = []
        for row in new_tokens:
            length = next((i + 1 for i, token in enumerate(row) if token in self.eos_ids), len(row))
            completions.append((self.tokenizer.decode(row[:length], skip_special_tokens=True), length))
        k = config.num_samples
        return [completions[i * k:(i + 1) * k] for i in range(len(prompts))]

    def close(self) -> None:
        del self.model
        gc.collect()


class VLLMGenerator:
    """vLLM offline inference; a LoRA checkpoint is served as an adapter on its base model."""

    def __init__(self, model_spec: str, config: GenerationConfig):
        if importlib.util.find_spec("vllm") is None:
            raise ConfigError("backend", "vLLM is not installed: pip install 'diagnosis-zero[vllm]' on a CUDA "
                              "machine, or use --backend hf")
        from vllm import LLM, SamplingParams

        from diagnosis_zero.models import load_tokenizer, resolve_model

        self.config = config
        path = resolve_model(model_spec)
        adapter_config = Path(path) / "adapter_config.json"
        self.lora = None
        engine = {"dtype": config.dtype, "seed": config.seed, "gpu_memory_utilization": config.gpu_memory_utilization}
        if adapter_config.is_file():
            from vllm.lora.request import LoRARequest

            adapter = json.loads(adapter_config.read_text())
            base = resolve_model(adapter["base_model_name_or_path"])
            engine.update(enable_lora=True, max_lora_rank=max(8, int(adapter.get("r", 8))))
            self.lora = LoRARequest("checkpoint", 1, path)
            tokenizer_source = path if (Path(path) / "tokenizer_config.json").is_file() else base
        else:
            base = tokenizer_source = path
        self.tokenizer = load_tokenizer(tokenizer_source)
        self.llm = LLM(model=base, tokenizer=tokenizer_source, **engine)
        self.params = SamplingParams(n=config.num_samples, temperature=config.temperature, top_p=config.top_p,
                                     max_tokens=config.max_new_tokens, seed=config.seed)

    def generate(self, prompts: list[list[dict]]) -> list[list[tuple[str, int]]]:
        texts = _chat_texts(self.tokenizer, prompts, self.config.assistant_prefix)
        outputs = self.llm.generate(texts, self.params, lora_request=self.lora, use_tqdm=False)
        return [[(c.text, len(c.token_ids)) for c in out.outputs] for out in outputs]

    def close(self) -> None:
        del self.llm
        gc.collect()


def load_generator(model_spec: str, config: GenerationConfig):
    """Return the generator of the configured backend for a model spec."""
    if config.num_samples < 1:
        raise ConfigError("num_samples", "must be at least 1")
    if config.num_samples > 1 and config.temperature <= 0:
        raise ConfigError("num_samples", "several samples need --temperature > 0 (greedy gives one answer)")
    backend = config.backend
    if backend == "auto":
        import torch

        backend = "vllm" if importlib.util.find_spec("vllm") and torch.cuda.is_available() else "hf"
    log.info("loading %s with the %s backend", model_spec, backend)
    return VLLMGenerator(model_spec, config) if backend == "vllm" else HFGenerator(model_spec, config)


def generate_into(output: str | os.PathLike, model_spec: str, prompts: list[tuple[str, list[dict]]],
                  to_record: Callable[[str, int, list[dict], str, int], dict],
                  config: GenerationConfig) -> list[dict]:
    """Generate completions for the `(id, prompt)` pairs not yet in `output`, appending per batch.

    `to_record(id, sample, prompt, completion, num_tokens)` builds each line; the completion starts
    with the configured assistant prefix, since the model continued it. Returns every line
    of the output, old and new. Nothing is loaded when there is nothing left to do.
    """
    from tqdm import tqdm

    done = resume_jsonl(output)
    done_keys = {record_key(r) for r in done}
    samples = range(config.num_samples)
    todo = [(case_id, prompt) for case_id, prompt in prompts
            if any((case_id, s) not in done_keys for s in samples)]
    if done:
        log.info("%s: %d cases already done, %d to go", output, len(prompts) - len(todo), len(todo))
    if not todo:
        return done
    generator = load_generator(model_spec, config)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    # vLLM schedules its own batches; feeding it a handful of prompts at a time would starve it
    step = config.batch_size if isinstance(generator, HFGenerator) else max(config.batch_size, VLLM_MIN_BATCH)
    written = []
    try:
        with open(output, "a", encoding="utf-8") as fh, tqdm(total=len(todo), unit="case", desc="generate") as bar:
            for start in range(0, len(todo), step):
                batch = todo[start:start + step]
                completions = generator.generate([prompt for _, prompt in batch])
                records = [to_record(case_id, s, prompt, config.assistant_prefix + text, num_tokens)
                           for (case_id, prompt), samples_out in zip(batch, completions, strict=True)
                           for s, (text, num_tokens) in enumerate(samples_out) if (case_id, s) not in done_keys]
                append_jsonl(fh, records)
                written += records
                bar.update(len(batch))
    finally:
        generator.close()
    return done + written


# ---------------------------------------------------------------------------------------------
# Scoring and records


def model_label(model_spec: str) -> tuple[str, int | None]:
    """Return (model, step) for output lines: a `RUN/checkpoint-N` folder is (RUN, N)."""
    path = Path(os.path.expanduser(model_spec))
    match = _CHECKPOINT.match(path.name)
    if match and path.is_dir():
        return path.resolve().parent.name, int(match.group(1))
    return model_spec, None


def answer_mode(template: str, prompt: list[dict]) -> str:
    """Return "list" when the case asks for a ranked top-5 list, else "single"."""
    if template == "auto":
        from diagnosis_zero.data import TEMPLATES

        lead = TEMPLATES["rarearena-top5"].split("{case}")[0]
        text = prompt[-1]["content"] if prompt else ""
        return "list" if text.startswith(lead) else "single"
    return "list" if template == "rarearena-top5" else "single"


def score_completion(case: dict, completion: str, mode: str, reward_options: dict) -> dict:
    """Return the rule-based fields of one output line (prediction, score, acc, format, flags)."""
    from diagnosis_zero.reward import compute_score, extract_answer, parse_ranked_list

    truth = {"diagnosis": case["references"], "orpha_id": case["orpha_id"]}
    options = dict(reward_options, topk=TOPK) if mode == "list" else reward_options
    result = compute_score(case["data_source"], completion, truth, None, **options)
    answer = extract_answer(completion)
    fields = {
        "prediction": parse_ranked_list(answer)[:TOPK] if mode == "list" else answer,
        "score": result["score"], "acc": int(result["acc"]), "format": int(result["format"]),
        "think_present": bool(result["think_present"]), "mixed_language": bool(result["mixed_language"]),
    }
    if mode == "list":
        fields["rank"] = int(result["rank"])  # 1-based rank of the first rule match; 0 = none in the top 5
    return fields


@dataclass
class EvaluateConfig:
    data: str = field(default="", metadata={"required": True, "help": "prepared split, e.g. DIR/test.parquet"})
    output: str = field(default="", metadata={"required": True, "help": (
        "results JSON Lines file (resumed if it exists); with --checkpoints, a folder of step-N.jsonl")})
    model: str | None = field(default=None, metadata={"help": (
        "model: local folder, hub id or bundled:NAME; with --checkpoints, the base model for step 0")})
    checkpoints: str | None = field(default=None, metadata={
        "help": "training output folder: evaluate each checkpoint-N in it (and step 0 = the base model)"})
    steps: str | None = field(default=None, metadata={
        "help": "with --checkpoints: comma-separated steps to evaluate, e.g. 0,500,1000,1500; default all"})
    limit: int | None = field(default=None, metadata={"help": "evaluate the first N cases only"})
    template: str = field(default="auto", metadata={"choices": TEMPLATE_CHOICES, "help": (
        "answer format: rarearena-top5 = a ranked list (prediction is a list, top-5 scored); auto = from the prompt")})
    reward_preset: str = field(default="clinical", metadata={"choices": ("clinical", "original"), "help": (
        "rule scoring: clinical matcher, or the original study's (seed matcher, 1.0/0.1/0.0)")})
    lexicon: str | None = field(default=None, metadata={
        "help": "Orphanet en_product1.xml or orphanet_hypernym.json: synonyms that resolve to the orpha_id match"})


def evaluate_model(config: EvaluateConfig, generation: GenerationConfig, model_spec: str, output: str | Path,
                   cases: list[dict], model: str, step: int | None, checkpoint: str | None = None) -> list[dict]:
    """Evaluate one model on the cases into `output`; return every line of the output."""
    by_id = {case["id"]: case for case in cases}
    reward_options = {"preset": config.reward_preset}
    if config.lexicon:
        reward_options["lexicon"] = config.lexicon

    def to_record(case_id: str, sample: int, prompt: list[dict], completion: str, num_tokens: int) -> dict:
        case = by_id[case_id]
        record = {"id": case_id, "sample": sample, "prompt": prompt, "completion": completion,
                  "references": case["references"], "orpha_id": case["orpha_id"]}
        record.update(score_completion(case, completion, answer_mode(config.template, prompt), reward_options))
        record.update(num_tokens=num_tokens, model=model, step=step)
        if checkpoint:
            record["checkpoint"] = checkpoint
        return record

    return generate_into(output, model_spec, [(c["id"], c["prompt"]) for c in cases], to_record, generation)


def checkpoint_plan(run_dir: str, steps: str | None, base_model: str | None) -> list[tuple[int, str]]:
    """Return (step, model spec) for each step to evaluate: checkpoint-N folders, and 0 = the base."""
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise ConfigError("checkpoints", f"not a folder: {run_dir}")
    found = {int(m.group(1)): str(p) for p in run.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))}
    if base_model is None:  # a LoRA checkpoint names its base
        for path in found.values():
            adapter_config = Path(path) / "adapter_config.json"
            if adapter_config.is_file():
                base_model = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
                break
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, EvaluateConfig)
    add_config_arguments(parser, GenerationConfig)


def _print_summary(records: list[dict], output) -> None:
    from diagnosis_zero.metrics import format_value, summarize

    summary = summarize(records)
    figures = ", ".join(f"{name} {format_value(name, summary[name])}" for name in
                        ("top1_rule", "top5_rule", "format_rate", "think_rate", "mixed_language_rate", "tokens_mean")
                        if summary[name] is not None)
    print(f"{output}: {summary['n']} lines; {figures}")


def run(args) -> int:
    from diagnosis_zero.data import load_cases

    config = config_from_args(EvaluateConfig, args)
    generation = config_from_args(GenerationConfig, args)
    if config.checkpoints is None and not config.model:
        raise ConfigError("model", "give --model, or --checkpoints RUN_DIR")
    if config.steps and not config.checkpoints:
        raise ConfigError("steps", "--steps selects checkpoints: give --checkpoints RUN_DIR too")
    if config.lexicon:
        from diagnosis_zero.reward import load_lexicon

        load_lexicon(config.lexicon)  # a bad lexicon fails now, not after the model has loaded
    cases = load_cases(config.data)[:config.limit]
    if config.checkpoints is None:
        model, step = model_label(config.model)
        checkpoint = config.model if step is not None else None
        records = evaluate_model(config, generation, config.model, config.output, cases, model, step, checkpoint)
        _print_summary(records, config.output)
        return 0
    if Path(config.output).suffix == ".jsonl":
        raise ConfigError("output", "with --checkpoints, --output is a folder (it gets one step-N.jsonl per step)")
    run_name = Path(config.checkpoints).expanduser().resolve().name
    for step, spec in checkpoint_plan(config.checkpoints, config.steps, config.model):
        output = Path(config.output) / f"step-{step}.jsonl"
        records = evaluate_model(config, generation, spec, output, cases, run_name, step,
                                 spec if step else None)
        _print_summary(records, output)
    return 0
