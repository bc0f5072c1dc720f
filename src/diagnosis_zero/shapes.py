"""Qwen2.5-Instruct architecture shapes, GPU peaks and a FLOP/bandwidth cost model of one GRPO step.

The shapes are the real config.json values of Qwen/Qwen2.5-{0.5B,1.5B,3B,7B}-Instruct, so a model
random-initialised from them has the exact parameter count and per-token cost of the real one (used by
benchmarks/bench_gpu.py, which needs no network). The cost model turns a step (8 prompts x 16
generations, prompt/completion lengths) into seconds from stated assumptions, or from measured figures
where a GPU benchmark has them; docs/train.md's cost table is `cost_table()` printed.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class QwenShape:
    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    tie_word_embeddings: bool

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


# From the models' config.json (rope_theta 1e6, rms_norm_eps 1e-6, max_position_embeddings 32768).
QWEN25 = {
    "0.5b": QwenShape("Qwen2.5-0.5B-Instruct", 896, 4864, 24, 14, 2, 151936, True),
    "1.5b": QwenShape("Qwen2.5-1.5B-Instruct", 1536, 8960, 28, 12, 2, 151936, True),
    "3b": QwenShape("Qwen2.5-3B-Instruct", 2048, 11008, 36, 16, 2, 151936, True),
    "7b": QwenShape("Qwen2.5-7B-Instruct", 3584, 18944, 28, 28, 4, 152064, False),
}
# A shape small enough for a CPU test of the same code path (tokenizer: the bundled Qwen2.5 one).
TINY = QwenShape("tiny-qwen2.5", 64, 128, 2, 4, 2, 151936, True)


def qwen2_config(shape: QwenShape, tokenizer) -> Any:
    """Return a transformers `Qwen2Config` of `shape` with the tokenizer's special token ids."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads, max_position_embeddings=32768, rope_theta=1000000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=shape.tie_word_embeddings, use_sliding_window=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def parameter_count(shape: QwenShape) -> int:
    """Return the number of parameters (tied embeddings counted once), as `model.num_parameters()`."""
    h, kv = shape.hidden_size, shape.num_kv_heads * shape.head_dim
    attention = h * h + 2 * h * kv + (h + 2 * kv) + h * h  # q, k, v (with biases), o (no bias)
    mlp = 3 * h * shape.intermediate_size
    layer = attention + mlp + 2 * h  # two RMSNorms
    embeddings = shape.vocab_size * h * (1 if shape.tie_word_embeddings else 2)
    return shape.num_layers * layer + embeddings + h


def matmul_parameters(shape: QwenShape) -> int:
    """Return the parameters that cost a multiply-add per token: all but the input embedding lookup
    (a tied embedding is the LM head, so it counts once). FLOPs per token: 2x forward, 6x with backward."""
    return parameter_count(shape) - (0 if shape.tie_word_embeddings else shape.vocab_size * shape.hidden_size)


@dataclasses.dataclass(frozen=True)
class GpuSpec:
    name: str
    bf16_flops: float        # dense bf16 peak, FLOP/s
    hbm_bytes_per_s: float   # memory bandwidth
    memory_gb: float


GPUS = {
    "H200": GpuSpec("H200", 989e12, 4.8e12, 141),
    "H100": GpuSpec("H100 SXM", 989e12, 3.35e12, 80),
    "H100 PCIe": GpuSpec("H100 PCIe", 756e12, 2.0e12, 80),
    "A100": GpuSpec("A100 SXM 80GB", 312e12, 2.0e12, 80),
    "L40S": GpuSpec("L40S", 362e12, 0.86e12, 48),
}


def gpu_spec(device_name: str) -> GpuSpec | None:
    """Return the spec whose key appears in a CUDA device name ("NVIDIA H100 80GB HBM3"), or None."""
    name = device_name.upper()
    if "H100" in name and "PCIE" in name:
        return GPUS["H100 PCIe"]
    for key in ("H200", "H100", "A100", "L40S"):
        if key in name:
            return GPUS[key]
    return None


# ---------------------------------------------------------------- the cost of one GRPO step

@dataclasses.dataclass(frozen=True)
class Setup:
    """A way to run the recipe, with the assumptions that set its speed (all stated in the output)."""

    name: str
    gpu: str = "H100"
    gpus: int = 8
    train_mfu: float = 0.30          # model FLOPs (6N per token) / peak, forward + backward
    forward_mfu: float = 0.40        # reference / old log-prob forward passes
    scaling_efficiency: float = 0.85  # data-parallel efficiency over `gpus` (gradient all-reduce, stragglers)
    old_logprob_pass: bool = False   # verl recomputes the old log-probs with the actor (one more forward)
    decode_efficiency: float = 0.5   # fraction of HBM bandwidth a vLLM decode step reaches at batch 16-32
    decode_floor_s: float = 0.005    # per decode step: scheduling, sampling, kernel launches (CUDA graphs on)
    sync_s_per_billion: float = 0.3  # weight sync into the inference engine, per step
    cpu_offload: bool = False        # FSDP parameter, gradient and optimizer offload (verl 0.1 original)
    pcie_bytes_per_s: float = 20e9
    cpu_adam_params_per_s: float = 0.3e9  # per rank, torch AdamW on the CPU


SETUPS = {
    "trl": Setup("TRL 1.16 + vLLM colocate, 8xH100", train_mfu=0.25),
    "verl": Setup("verl 0.9 (FSDP, vLLM), 8xH100", train_mfu=0.35, old_logprob_pass=True,
                  sync_s_per_billion=0.2),
    "original": Setup("verl 0.1, FSDP full offload (original)", gpu="A100", train_mfu=0.25,
                      old_logprob_pass=True, decode_efficiency=0.35, sync_s_per_billion=1.0, cpu_offload=True,
                      decode_floor_s=0.02),  # verl 0.1 ran vLLM 0.6.3 eager (enforce_eager): no CUDA graphs
}
# The original's GPU count per size (REFERENCE.md section 1); its GPU type was never reported.
ORIGINAL_GPUS = {"1.5b": 4, "3b": 4, "7b": 8}


@dataclasses.dataclass(frozen=True)
class Lengths:
    prompts: int = 8
    generations: int = 16
    prompt_tokens: int = 1024       # the recipe's caps; real means are shorter, so these are upper bounds
    completion_tokens: int = 1024
    steps: int = 1500


def step_seconds(shape: QwenShape, setup: Setup, lengths: Lengths = Lengths(), *, decode_step_s: float | None = None,
                 train_mfu: float | None = None, gradient_checkpointing: bool = True, kl: bool = True) -> dict:
    """Return the seconds of one GRPO step by phase (generation, log-probs, update, sync, offload, total).

    Generation: every GPU decodes its share of the sequences for `completion_tokens` steps (the longest
    sample of a batch sets the pace); a decode step reads the bf16 weights once (memory-bound) unless a
    measured `decode_step_s` is given; prefill is compute at `forward_mfu`. Training: 6N FLOPs per token
    (+2N recomputed with gradient checkpointing), 2N per forward for the reference (and verl's old)
    log-probs, at the setup's MFU (or a measured `train_mfu`; model FLOPs, so the recompute of gradient
    checkpointing shows as a lower MFU) and data-parallel efficiency.
    """
    gpu = GPUS[setup.gpu]
    n = matmul_parameters(shape)
    sequences = lengths.prompts * lengths.generations
    per_gpu = sequences / setup.gpus
    tokens = sequences * (lengths.prompt_tokens + lengths.completion_tokens)
    if decode_step_s is None:
        decode_step_s = max(2 * parameter_count(shape) / (gpu.hbm_bytes_per_s * setup.decode_efficiency),
                            setup.decode_floor_s)
    prefill = 2 * n * per_gpu * lengths.prompt_tokens / (gpu.bf16_flops * setup.forward_mfu)
    generation = lengths.completion_tokens * decode_step_s + prefill
    cluster = setup.gpus * gpu.bf16_flops * setup.scaling_efficiency
    forwards = (1 if kl else 0) + (1 if setup.old_logprob_pass else 0)
    logprobs = forwards * 2 * n * tokens / (cluster * setup.forward_mfu)
    # MFU counts model FLOPs (6N per token): the recompute of gradient checkpointing lowers the MFU.
    update = 6 * n * tokens / (cluster * (train_mfu or setup.train_mfu))
    sync = setup.sync_s_per_billion * parameter_count(shape) / 1e9
    offload = 0.0
    if setup.cpu_offload:
        shard = parameter_count(shape) / setup.gpus
        micro_batches = max(1, round(per_gpu / 8))
        # fp32 parameter shards in for every forward/backward/recompute and forward-only pass, fp32
        # gradient shards out, then AdamW on the CPU over each rank's shard.
        passes = micro_batches * ((3 if gradient_checkpointing else 2) + forwards)
        offload = (passes + micro_batches) * 4 * shard / setup.pcie_bytes_per_s + shard / setup.cpu_adam_params_per_s
    total = generation + logprobs + update + sync + offload
    return {"generation_s": generation, "logprobs_s": logprobs, "update_s": update, "sync_s": sync,
            "offload_s": offload, "step_s": total, "hours": total * lengths.steps / 3600}


def original_setup(size: str) -> Setup:
    return dataclasses.replace(SETUPS["original"], gpus=ORIGINAL_GPUS[size],
                               name=f"verl 0.1, FSDP full offload, {ORIGINAL_GPUS[size]}xA100 (assumed)")


def cost_table(lengths: Lengths = Lengths()) -> list[dict]:
    """Return one row per recipe (1.5B/3B/7B) and setup: seconds per step and hours for `lengths.steps`."""
    rows = []
    for size in ("1.5b", "3b", "7b"):
        for key in ("trl", "verl", "original"):
            setup = original_setup(size) if key == "original" else SETUPS[key]
            rows.append({"recipe": f"qwen2.5-{size}-instruct", "setup": setup.name,
                         **step_seconds(QWEN25[size], setup, lengths)})
    return rows


def describe_assumptions(lengths: Lengths = Lengths()) -> list[str]:
    """Return the assumptions behind `step_seconds`, one line each, for printing beside its figures."""
    lines = [f"step: {lengths.prompts} prompts x {lengths.generations} generations, {lengths.prompt_tokens} prompt + "
             f"{lengths.completion_tokens} completion tokens each (the caps: an upper bound), {lengths.steps} steps",
             "FLOPs: 2N per token forward, 6N forward+backward (MFU = model FLOPs / peak, so gradient "
             "checkpointing's recompute lowers it; N = matmul parameters; attention FLOPs ignored)"]
    for key, setup in SETUPS.items():
        lines.append(f"{key}: {setup.name}: train MFU {setup.train_mfu:.2f}, forward MFU {setup.forward_mfu:.2f}, "
                     f"DP efficiency {setup.scaling_efficiency:.2f}, vLLM decode at {setup.decode_efficiency:.0%} of "
                     f"HBM bandwidth (at least {setup.decode_floor_s * 1e3:.0f} ms a token), weight sync {setup.sync_s_per_billion} s/B params"
                     + (", old log-probs recomputed" if setup.old_logprob_pass else "")
                     + (f", CPU offload over PCIe {setup.pcie_bytes_per_s / 1e9:.0f} GB/s, CPU AdamW "
                        f"{setup.cpu_adam_params_per_s / 1e9:.1f}B params/s per rank" if setup.cpu_offload else ""))
    return lines


def format_cost_table(lengths: Lengths = Lengths()) -> str:
    """Return `cost_table` as the markdown table in docs/train.md (a test keeps the two equal)."""
    lines = ["| recipe | setup | generation s | log-probs s | update s | sync + offload s | s/step | "
             f"hours for {lengths.steps:,} steps |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in cost_table(lengths):
        lines.append(f"| {row['recipe']} | {row['setup']} | {row['generation_s']:.1f} | {row['logprobs_s']:.1f} | "
                     f"{row['update_s']:.1f} | {row['sync_s'] + row['offload_s']:.1f} | {row['step_s']:.1f} | "
                     f"{row['hours']:.1f} |")
    return "\n".join(lines)
