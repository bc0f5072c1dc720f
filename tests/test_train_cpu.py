"""The CPU speed-ups of `train` change no number: TRL's fused LM head scoring only completion rows on
the CPU gives the same log-probabilities, entropies and gradients as scoring every row."""

from __future__ import annotations

import pytest
import torch

trl_utils = pytest.importorskip("trl.trainer.utils")


def _fused_outputs(model, input_ids, attention_mask, labels):
    model.zero_grad()
    out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
    out.log_probs.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.log_probs.detach(), out.entropy.detach(), grads


def test_completion_only_scoring_matches_every_row(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM
    from trl.kernels import chunked_logprob

    from diagnosis_zero.train_cpu import score_completions_only

    # start from TRL's own choice (an earlier `train` in this process has applied the fix); restored after
    monkeypatch.setattr(trl_utils, "_use_triton", chunked_logprob._use_triton)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    trl_utils.add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
    input_ids = torch.randint(10, 400, (3, 20))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :5] = 0  # left padding, as TRL's batches have
    completion = 6
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :-completion] = -100  # prompt rows carry no label: TRL scores only the completion

    assert trl_utils._use_triton(torch.device("cpu")) is False  # TRL's own choice: score every row
    every_row = _fused_outputs(model, input_ids, attention_mask, labels)
    score_completions_only()
    score_completions_only()  # idempotent
    assert trl_utils._use_triton(torch.device("cpu")) is True
    assert chunked_logprob._use_triton(torch.device("cpu")) is False  # the kernel keeps its CPU path
    completion_rows = _fused_outputs(model, input_ids, attention_mask, labels)

    torch.testing.assert_close(completion_rows[0], every_row[0])
    torch.testing.assert_close(completion_rows[1], every_row[1])
    assert completion_rows[2].keys() == every_row[2].keys() and every_row[2]
    for name in every_row[2]:
        torch.testing.assert_close(completion_rows[2][name], every_row[2][name], msg=name)
    # and both are the plain log-softmax of the model's logits at temperature 0.7
    with torch.no_grad():  # without fused_lm_head=True the patched forward is the model's own
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1] / 0.7
    reference = torch.log_softmax(logits.float(), -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    scored = labels[:, 1:] != -100
    torch.testing.assert_close(completion_rows[0][scored], reference[scored], rtol=1e-4, atol=1e-4)
    assert (completion_rows[0][~scored] == 0).all()
