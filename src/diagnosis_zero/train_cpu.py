"""What `train` adjusts in its libraries when it trains on CPUs, and why; GPUs never see either."""


def score_completions_only() -> None:
    """Make TRL's fused LM head score only the completion tokens on the CPU, as it does on CUDA.

    TRL 1.16 (`trainer/utils.py`) scores only the labelled positions where Triton runs and every
    position elsewhere, so that Neuron does not recompile for each batch size. On a CPU that means the
    vocabulary projection and its backward run over the prompt too, then are masked out: for the demo
    (about 140 prompt and 48 completion tokens) that was 55% of the update (BENCHMARKS.md). The
    log-probabilities are identical either way (tests/test_train_cpu.py); the chunked kernel keeps its
    own CPU code path, since this only changes which rows `trainer/utils.py` hands it.
    """
    import trl.trainer.utils as trl_utils

    pick = getattr(trl_utils, "_use_triton", None)
    if pick is None or getattr(pick, "diagnosis_zero", False):
        return  # another TRL layout: nothing to change; or already done

    def compact_rows(device) -> bool:
        return device.type == "cpu" or pick(device)

    compact_rows.diagnosis_zero = True
    trl_utils._use_triton = compact_rows


def load_indexed_cpu_locations(torch) -> None:
    """Let torch.load map to "cpu:N". On several CPU processes accelerate's device is torch.device("cpu", 0)
    and transformers loads the optimizer state with that map_location on resume, which torch rejects
    ("don't know how to restore data location ... cpu:0"); CPU memory has no index, so it is the CPU."""
    if getattr(load_indexed_cpu_locations, "done", False):
        return

    def deserialize(storage, location: str):
        return storage if location.startswith("cpu:") else None

    torch.serialization.register_package(30, lambda storage: None, deserialize)
    load_indexed_cpu_locations.done = True
