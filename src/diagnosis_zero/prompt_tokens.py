"""Prompt lengths in tokens after the chat template, for `prepare --max-prompt-tokens`.

The original study dropped prompts over 1,024 tokens, counted as verl's dataset filter counts them:
the tokenizer's chat template applied to the one user message (Qwen adds its default system
prompt). The counts here are exactly those (tests/test_data_tokens.py), only faster: the template
is rendered once around a marker, short prompts are decided by their byte length, and the rest are
encoded in batches by the tokenizer's own Rust encoder.

There was a tiktoken twin of the Qwen2.5 tokenizer here, rebuilt from the tokenizer's state; it is
gone (issue 12): `benchmarks/bench_prepare.py` measured the filter at 1,515 records/s without it
on the 2-core machine (3,669 with it), above the 1,000 records/s target, so it did not earn its
place.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

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


def prompt_token_counts(prompts: list[str], tokenizer, *, progress: bool = False) -> list[int]:
    """Return the token count of each user prompt after the tokenizer's chat template is applied.

    Qwen's template adds its default system prompt to a lone user message, and that is counted,
    as verl's overlong-prompt filter did in the original study. The chat template is rendered
    once; fast tokenizers then encode whole batches in Rust (with TOKENIZERS_PARALLELISM off, one
    thread per core; the Rust call releases the GIL).
    """
    from tqdm import tqdm

    if not prompts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    workers = min(os.cpu_count() or 1, 8)

    def count(texts):
        if backend is None:
            return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        # No offsets and no BatchEncoding: about twice as fast as tokenizer(texts).
        return [len(enc) for enc in backend.encode_batch_fast(texts, add_special_tokens=False)]

    threads = workers if backend is not None and _rayon_disabled() else 1
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
