"""`prepare --max-prompt-tokens`: exact prompt lengths with the real Qwen2.5 tokenizer and chat template."""

from pathlib import Path

import pytest

from diagnosis_zero import cli, data, prompt_tokens

FIXTURES = Path(__file__).parent / "fixtures" / "rarearena"


@pytest.fixture(scope="module")
def qwen(qwen_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_tokenizer_dir)


def reference_count(tokenizer, prompt: str) -> int:
    """What verl's overlong-prompt filter measures: the chat template applied, one call per prompt."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        tokenize=True, return_dict=False)
    return len(ids)


def fixture_prompts():
    cases = [data.case_from_record("rdc", line, r) for line, r in data.iter_records(FIXTURES / "rdc.jsonl")]
    prompts = [data.build_prompt(c.text)[0]["content"] for c in cases]
    # Non-ASCII (several tokens per character), text that NFC changes (o + combining diaeresis),
    # text that looks like special tokens, blank edges.
    prompts += [data.build_prompt(text)[0]["content"] for text in
                ("Syndrome de Sjögren: ξηροφθαλμία, 口干. Δ 3 mm³", "Sjo\u0308gren syndrome, A\u030a",
                 "ends <|im_end|> early <tool_call>", "  x  ")]
    return prompts


def test_counts_match_one_chat_template_call_per_prompt(qwen, monkeypatch):
    prompts = fixture_prompts()
    expected = [reference_count(qwen, p) for p in prompts]
    assert prompt_tokens.prompt_token_counts(prompts, qwen) == expected
    # Qwen adds its default system prompt to a lone user message, and it is counted.
    rendered = qwen.apply_chat_template([{"role": "user", "content": prompts[0]}], tokenize=False,
                                        add_generation_prompt=True)
    assert "You are Qwen, created by Alibaba Cloud." in rendered
    assert expected[0] > len(qwen(prompts[0], add_special_tokens=False)["input_ids"]) + 20
    # Small batches over a thread pool (the path taken when TOKENIZERS_PARALLELISM is off).
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setattr(prompt_tokens, "TOKENIZE_BATCH", 4)
    assert prompt_tokens.prompt_token_counts(prompts, qwen) == expected


def test_counts_match_over_every_prepared_prompt(qwen, tmp_path):
    """Every prompt `prepare` writes for the RareArena fixtures (both templates) and 300 HPO demo cases."""
    prompts = []
    for name in ("rdc.jsonl", "rds.jsonl", "rdc_benchmark.jsonl"):
        for template in data.TEMPLATES:
            out = tmp_path / f"{name}-{template}"
            data.prepare_rarearena(FIXTURES / name, out, template=template, progress=False)
            prompts += [c["prompt"][0]["content"] for split in data.SPLITS
                        for c in data.load_cases(out / f"{split}.parquet")]
    data.prepare_hpo(tmp_path / "hpo", num_cases=300, seed=0, progress=False)
    prompts += [c["prompt"][0]["content"] for split in data.SPLITS
                for c in data.load_cases(tmp_path / "hpo" / f"{split}.parquet")]
    assert len(prompts) > 300
    assert prompt_tokens.prompt_token_counts(prompts, qwen) == [reference_count(qwen, p) for p in prompts]


def test_a_template_that_changes_the_content_is_rendered_per_prompt(qwen, qwen_tokenizer_dir):
    from transformers import AutoTokenizer

    qwen_trim = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    qwen_trim.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n"
                               "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    prompts = ["  padded case  ", "plain case"]
    assert prompt_tokens._chat_affixes(qwen_trim, prompts[0]) is None
    assert prompt_tokens.prompt_token_counts(prompts, qwen_trim) == [reference_count(qwen_trim, p) for p in prompts]
    # The template trims, so wrapping the raw content would have counted the spaces too.
    assert reference_count(qwen_trim, "  padded case  ") == reference_count(qwen_trim, "padded case")


def test_within_budget_is_exact_at_the_boundary(qwen):
    prompts = fixture_prompts()
    counts = [reference_count(qwen, p) for p in prompts]
    for limit in sorted(set(counts)) + [min(counts) - 1, 10_000]:
        assert prompt_tokens.prompts_within(prompts, limit, qwen) == [count <= limit for count in counts]


def test_prepare_drops_long_prompts_after_the_split(qwen, tmp_path):
    prompts = fixture_prompts()[:12]
    counts = [reference_count(qwen, p) for p in prompts]
    limit = sorted(counts)[6]
    summary = data.prepare_rarearena(FIXTURES / "rdc.jsonl", tmp_path / "cut", max_prompt_tokens=limit,
                                     tokenizer=qwen)
    data.prepare_rarearena(FIXTURES / "rdc.jsonl", tmp_path / "all")
    dropped = sum(count > limit for count in counts)
    assert dropped > 0 and summary.dropped["too_long"] == dropped and summary.records_kept == 12 - dropped
    for split, kept_side in (("train", range(8)), ("test", range(8, 12))):
        full = [c["id"] for c in data.load_cases(tmp_path / "all" / f"{split}.parquet")]
        cut = data.load_cases(tmp_path / "cut" / f"{split}.parquet")
        # Same side as without the filter (the split comes first), order kept, index renumbered.
        assert [c["id"] for c in cut] == [full[i - kept_side.start] for i in kept_side if counts[i] <= limit]
        assert [c["index"] for c in cut] == list(range(len(cut)))


def test_cli_filter_with_a_tokenizer_folder(qwen_tokenizer_dir, tmp_path, capsys):
    code = cli.main(["prepare", "--no-progress", "--input", str(FIXTURES / "rdc.jsonl"), "--output-dir",
                     str(tmp_path), "--max-prompt-tokens", "200", "--tokenizer", str(qwen_tokenizer_dir)])
    out = capsys.readouterr().out
    assert code == 0
    assert "too long (> 200 prompt tokens)" in out
    too_long = int(out.split("duplicate ids, ")[1].split(" too long")[0])
    kept = len(data.load_cases(tmp_path / "train.parquet")) + len(data.load_cases(tmp_path / "test.parquet"))
    assert too_long > 0 and kept == 12 - too_long
    code = cli.main(["prepare", "--no-progress", "--input", str(FIXTURES / "rdc.jsonl"), "--output-dir",
                     str(tmp_path / "none"), "--max-prompt-tokens", "20", "--tokenizer", str(qwen_tokenizer_dir)])
    assert code == 2 and "every prompt is longer than 20 tokens" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_another_tokenizer_is_counted_by_itself(tmp_path):
    """A byte-level BPE trained here (not Qwen's vocabulary): same exact counts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    texts = [line for line in (FIXTURES / "rdc.jsonl").read_text().splitlines()]
    backend.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"],
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = ("{% for m in messages %}<s>{{ m.role }}: {{ m.content }}</s>{% endfor %}"
                               "{% if add_generation_prompt %}<s>assistant: {% endif %}")
    prompts = fixture_prompts()
    expected = [reference_count(tokenizer, p) for p in prompts]
    assert prompt_tokens.prompt_token_counts(prompts, tokenizer) == expected
    limit = sorted(expected)[len(expected) // 2]
    assert prompt_tokens.prompts_within(prompts, limit, tokenizer) == [count <= limit for count in expected]
