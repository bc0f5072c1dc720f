"""Generation, done one way for every verb: the same model and prompt give the same text everywhere.

`train` validation, `evaluate`, `evaluate-mcq`, `diagnose` and `browse` (pasted cases) all render a
prompt with `render_prompt` (the tokenizer's chat template, then the assistant prefix) and decode
with `hf_generate_ids` (transformers) or `VLLMGenerator` (vLLM) under the same explicit decoding
settings: the model's own `generation_config.json` (e.g. Qwen2.5's repetition_penalty 1.05 and
top_k 20) is not applied, as vLLM and TRL's validation do not apply it either.

A training run carries its own prompting: `train` writes `RUN_FILE` (docs/formats.md) into the run
folder and into each `checkpoint-N`. Given a run or checkpoint, `resolve_decoding` defaults the
template, assistant prefix and generation length to what the run used; an explicit flag wins.

Also here: LoRA adapter base resolution (`adapter_base`, `checkpoint_sources`), and resumable output
files (`generate_into`, `record_key`, `model_label`; reading one back is `io.resume_jsonl`).
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from diagnosis_zero import rarearena
from diagnosis_zero.errors import ConfigError, InputFileError
from diagnosis_zero.io import append_jsonl, resume_jsonl  # resume_jsonl: io's torn-tail policy

log = logging.getLogger(__name__)

BACKENDS = ("auto", "hf", "vllm")
RUN_FILE = "diagnosis_zero_run.json"  # a run's resolved recipe and prompting (docs/formats.md)
VALIDATION_FILE = "validation.jsonl"  # train's greedy validation completions (docs/formats.md)
DEFAULT_MAX_NEW_TOKENS = 1024
VLLM_MIN_BATCH = 256  # prompts handed to vLLM per written batch
CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)$")


# ---------------------------------------------------------------------------------------------
# Configuration and its defaults


@dataclass
class DecodingConfig:
    """How one completion is decoded (the flags of every verb that generates)."""

    backend: str = field(default="auto", metadata={
        "choices": BACKENDS, "help": "auto = vllm when vLLM is installed and a GPU is present, else hf"})
    batch_size: int = field(default=8, metadata={
        "help": "prompts per generate call (hf) or per written batch (vllm: at least 256); a crash loses at "
                "most one batch"})
    max_new_tokens: int | None = field(default=None, metadata={
        "help": "completion length limit in tokens; default: a training run's own (validation_max_tokens or "
                "max_completion_length), 4096 for --template rarearena, else 1024 (the original study)"})
    temperature: float | None = field(default=None, metadata={
        "help": "sampling temperature; 0 = greedy decoding (the default, as the original study's validation; "
                "0.1 for --template rarearena)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (when temperature > 0)"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    dtype: str = field(default="auto", metadata={
        "choices": ("auto", "float32", "bfloat16", "float16"),
        "help": "weights dtype; auto = bfloat16 on a GPU, float32 on the CPU"})
    assistant_prefix: str | None = field(default=None, metadata={
        "help": "text opening the assistant turn, e.g. '<think>'; it is part of the scored completion. "
                "Default: a training run's own prefix, else none"})
    gpu_memory_utilization: float = field(default=0.6, metadata={
        "help": "vllm: fraction of GPU memory for weights and KV cache (the original study: 0.6)"})


@dataclass
class GenerationConfig(DecodingConfig):
    """Decoding plus the number of samples per prompt (verbs that write one line per sample)."""

    num_samples: int = field(default=1, metadata={
        "help": "completions per prompt (needs temperature > 0 to differ); each is one output line"})


# A template whose protocol fixes its own decoding (RareArena's `eval/run.py`: no prefill either).
TEMPLATE_DEFAULTS: dict[str, dict] = {
    "rarearena": {"temperature": rarearena.INFERENCE_TEMPERATURE, "max_new_tokens": rarearena.INFERENCE_MAX_TOKENS,
                  "assistant_prefix": ""},
}


def saved_run(model_spec: str | os.PathLike | None) -> dict:
    """Return the `RUN_FILE` of a run folder or of a `checkpoint-N` (its own, else its run's); {} if none."""
    if not model_spec:
        return {}
    path = Path(os.path.expanduser(str(model_spec)))
    candidates = [path / RUN_FILE]
    if CHECKPOINT_RE.match(path.name):
        candidates.append(path.parent / RUN_FILE)
    for candidate in candidates:
        if candidate.is_file():
            try:
                saved = json.loads(candidate.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise InputFileError(candidate, None, None, f"not valid JSON ({exc})") from None
            if not isinstance(saved, dict) or not isinstance(saved.get("prompting"), dict):
                raise InputFileError(candidate, None, "prompting", "missing (not a diagnosis-zero run file)")
            return saved
    return {}


def resolve_decoding(config, model_spec: str | os.PathLike | None, template: str | None = None,
                     default_template: str | None = None):
    """Return (config, template) with the unset template, assistant prefix, length and temperature filled.

    Precedence: an explicit flag; then the decoding of an explicitly chosen template's protocol
    (`rarearena`: RareArena's temperature and length, no prefix); then the training run's own
    prompting (`RUN_FILE` of `model_spec`); then the defaults (no prefix, 1024 tokens, greedy).
    """
    prompting = saved_run(model_spec).get("prompting", {})
    protocol = TEMPLATE_DEFAULTS.get(template or "", {})
    if template is None:
        template = prompting.get("template") or default_template
    fill = {}
    for name, default in (("assistant_prefix", ""), ("max_new_tokens", DEFAULT_MAX_NEW_TOKENS),
                          ("temperature", 0.0)):
        if getattr(config, name) is None:
            value = protocol.get(name, prompting.get(name))
            fill[name] = default if value is None else value
    return dataclasses.replace(config, **fill), template


def prompting_record(config, template: str | None) -> dict:
    """Return what an output line records about how it was generated (docs/formats.md `generation`)."""
    return {"template": template, "assistant_prefix": config.assistant_prefix,
            "max_new_tokens": config.max_new_tokens, "temperature": config.temperature}


# ---------------------------------------------------------------------------------------------
# Models, prompts and the one transformers decoding loop


def adapter_base(path: str | os.PathLike) -> str | None:
    """Return the base model a LoRA adapter folder names, or None when `path` is not an adapter."""
    adapter_config = Path(path) / "adapter_config.json"
    if not adapter_config.is_file():
        return None
    try:
        base = json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputFileError(adapter_config, None, None, f"not valid JSON ({exc})") from None
    if not base:
        raise InputFileError(adapter_config, None, "base_model_name_or_path", "missing")
    return base


def checkpoint_sources(model_spec: str) -> tuple[str, str | None, str]:
    """Return (weights path, resolved base model or None, tokenizer source) for a model spec.

    A LoRA adapter folder loads onto the base it names; its tokenizer is its own if saved, else the base's.
    """
    from diagnosis_zero.models import resolve_model

    path = resolve_model(model_spec)
    base = adapter_base(path) if Path(path).is_dir() else None
    if base is None:
        return path, None, path
    base = resolve_model(base)
    return path, base, path if (Path(path) / "tokenizer_config.json").is_file() else base


def render_prompt(tokenizer, prompt: list[dict] | str, assistant_prefix: str = "") -> str:
    """Return the model's input text: the chat template with an open assistant turn, then the prefix.

    A string prompt was rendered already (TRL's rows with a prefilled assistant turn) and is kept as is.
    """
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) + assistant_prefix


def eos_token_ids(model, tokenizer) -> list[int]:
    """Return the ids that end a completion: the model's generation eos ids and the tokenizer's (as TRL)."""
    eos = model.generation_config.eos_token_id
    ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.insert(0, tokenizer.eos_token_id)
    return ids


def _hf_generation_config(max_new_tokens: int, temperature: float, top_p: float, num_samples: int,
                          pad_id: int, eos_ids: list[int]):
    from transformers import GenerationConfig as HFGenerationConfig

    # Every knob explicit: transformers fills unset ones from the model's generation_config.json,
    # which vLLM (given explicit SamplingParams) and TRL's validation do not.
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} if temperature > 0 \
        else {"do_sample": False}
    return HFGenerationConfig(max_new_tokens=max_new_tokens, num_return_sequences=num_samples, pad_token_id=pad_id,
                              eos_token_id=eos_ids, repetition_penalty=1.0, **sampling)


def hf_generate_ids(model, prompt_ids: list[list[int]], *, pad_id: int, eos_ids: list[int], max_new_tokens: int,
                    batch_size: int, temperature: float = 0.0, top_p: float = 1.0, num_samples: int = 1,
                    seed: int = 0, streamer=None) -> list[list[list[int]]]:
    """Return, per prompt, `num_samples` completions as token ids, cut after the first eos (kept).

    Prompts are batched by length (little left padding); greedy when `temperature` is 0.
    """
    import torch

    config = _hf_generation_config(max_new_tokens, temperature, top_p, num_samples, pad_id, eos_ids)
    device = model.device
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    results: list[list[list[int]]] = [[] for _ in prompt_ids]
    eos = set(eos_ids)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = max(len(prompt_ids[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids = prompt_ids[i]
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids):] = 1
        torch.manual_seed(seed)
        with torch.no_grad():
            output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                    generation_config=config, streamer=streamer)
        rows = output[:, width:].tolist()
        for row, i in enumerate(batch):
            for sample in rows[row * num_samples:(row + 1) * num_samples]:
                end = next((k + 1 for k, token in enumerate(sample) if token in eos), len(sample))
                results[i].append(sample[:end])
    return results


def without_eos(ids: list[int], eos_ids) -> list[int]:
    """Return completion ids without their closing eos token."""
    return ids[:-1] if ids and ids[-1] in eos_ids else ids


class HFGenerator:
    """transformers `generate`, batched with left padding; also streams one prompt (browse)."""

    def __init__(self, model_spec: str, config: GenerationConfig):
        import torch

        from diagnosis_zero.models import load_model_and_tokenizer

        self.config = config
        dtype = None if config.dtype == "auto" else getattr(torch, config.dtype)
        self.model, self.tokenizer = load_model_and_tokenizer(model_spec, dtype=dtype)
        if torch.cuda.is_available():
            self.model.to("cuda")
        self.eos_ids = eos_token_ids(self.model, self.tokenizer)
        self.lock = threading.Lock()

    def _ids(self, prompts: list[list[dict]]) -> list[list[int]]:
        return [self.tokenizer(render_prompt(self.tokenizer, p, self.config.assistant_prefix),
                               add_special_tokens=False)["input_ids"] for p in prompts]

    def _options(self) -> dict:
        c = self.config
        return {"pad_id": self.tokenizer.pad_token_id, "eos_ids": self.eos_ids, "max_new_tokens": c.max_new_tokens,
                "temperature": c.temperature, "top_p": c.top_p, "seed": c.seed}

    def generate(self, prompts: list[list[dict]]) -> list[list[tuple[str, int]]]:
        """Return, per prompt, `num_samples` (completion text after the prefix, completion tokens)."""
        with self.lock:
            ids = hf_generate_ids(self.model, self._ids(prompts), batch_size=len(prompts),
                                  num_samples=getattr(self.config, "num_samples", 1), **self._options())
        return [[(self.tokenizer.decode(without_eos(sample, self.eos_ids), skip_special_tokens=True), len(sample))
                 for sample in samples] for samples in ids]

    def stream(self, prompt: list[dict]) -> Iterator[str]:
        """Yield the completion of one prompt piece by piece, starting with the assistant prefix."""
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300)
        [ids] = self._ids([prompt])
        with self.lock:
            worker = threading.Thread(target=hf_generate_ids, daemon=True, args=(self.model, [ids]),
                                      kwargs={"batch_size": 1, "streamer": streamer, **self._options()})
            worker.start()
            if self.config.assistant_prefix:
                yield self.config.assistant_prefix
            yield from (text for text in streamer if text)
            worker.join()

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

        from diagnosis_zero.models import load_tokenizer

        self.config = config
        path, base, tokenizer_source = checkpoint_sources(model_spec)
        engine = {"dtype": config.dtype, "seed": config.seed, "gpu_memory_utilization": config.gpu_memory_utilization}
        self.lora = None
        if base is not None:
            from vllm.lora.request import LoRARequest

            rank = json.loads((Path(path) / "adapter_config.json").read_text()).get("r", 8)
            engine.update(enable_lora=True, max_lora_rank=max(8, int(rank)))
            self.lora = LoRARequest("checkpoint", 1, path)
        self.tokenizer = load_tokenizer(tokenizer_source)
        self.llm = LLM(model=base or path, tokenizer=tokenizer_source, **engine)
        self.params = SamplingParams(n=getattr(config, "num_samples", 1), temperature=config.temperature,
                                     top_p=config.top_p, max_tokens=config.max_new_tokens, seed=config.seed)

    def generate(self, prompts: list[list[dict]]) -> list[list[tuple[str, int]]]:
        """Return, per prompt, `num_samples` (completion text after the prefix, completion tokens)."""
        texts = [render_prompt(self.tokenizer, p, self.config.assistant_prefix) for p in prompts]
        outputs = self.llm.generate(texts, self.params, lora_request=self.lora, use_tqdm=False)
        return [[(c.text, len(c.token_ids)) for c in out.outputs] for out in outputs]

    def close(self) -> None:
        del self.llm
        gc.collect()


def load_generator(model_spec: str, config: GenerationConfig):
    """Return the generator of the configured backend for a model spec (config already resolved)."""
    num_samples = getattr(config, "num_samples", 1)
    if num_samples < 1:
        raise ConfigError("num_samples", "must be at least 1")
    if num_samples > 1 and config.temperature <= 0:
        raise ConfigError("num_samples", "several samples need --temperature > 0 (greedy gives one answer)")
    backend = config.backend
    if backend == "auto":
        import torch

        backend = "vllm" if importlib.util.find_spec("vllm") and torch.cuda.is_available() else "hf"
    log.info("loading %s with the %s backend", model_spec, backend)
    return VLLMGenerator(model_spec, config) if backend == "vllm" else HFGenerator(model_spec, config)


# ---------------------------------------------------------------------------------------------
# Resumable outputs and record keys

def record_key(record: dict) -> tuple[str, int]:
    """The identity of an output line: case id and sample index."""
    return str(record.get("id")), int(record.get("sample") or 0)


def model_label(model_spec: str) -> tuple[str, int | None]:
    """Return (model, step) for output lines: a `RUN/checkpoint-N` folder is (RUN, N)."""
    path = Path(os.path.expanduser(model_spec))
    match = CHECKPOINT_RE.match(path.name)
    if match and path.is_dir():
        return path.resolve().parent.name, int(match.group(1))
    return model_spec, None


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
