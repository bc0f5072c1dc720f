"""The run around TRL's loop: one callback and the state it shares with the reward wrapper.

- `metrics.jsonl`: one line per logged step in docs/formats.md's names (TRL's logs renamed in place,
  so TensorBoard and the other loggers show the same names), never a duplicate step on resume;
- greedy validation (`train_validation.validate`) at step 0 and every `validation_steps` steps;
- a sample of scored completions in `completions.jsonl`; live training-health warnings;
- Ctrl-C: a checkpoint after the current step, then a clean stop;
- the run file (resolved recipe and prompting) in the run folder and each checkpoint;
- the end-of-run summary (`format_summary`) read from the logged rows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diagnosis_zero.io import append_jsonl, read_jsonl, write_text_atomic
from diagnosis_zero.train_validation import validate

if TYPE_CHECKING:
    from diagnosis_zero.train import TrainPlan

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
COMPLETIONS_FILE = "completions.jsonl"

# TRL log key -> metrics.jsonl key (docs/formats.md); other finite numbers keep TRL's names. The
# callback renames TRL's logs in place before the reporting integrations see them, so TensorBoard
# (as `train/KEY`), W&B and the others show metrics.jsonl's names too.
METRIC_NAMES = {
    "reward": "reward_mean",
    "completions/mean_length": "completion_length_mean",
    "completions/clipped_ratio": "clipped_ratio",
}
# Keys of TRL's end-of-training summary, which is not a step.
SUMMARY_KEYS = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos"}


# ---------------------------------------------------------------- the run's own prompting

def run_file(plan: TrainPlan) -> dict:
    """Return the run's resolved recipe and prompting, as saved in the run folder and each checkpoint.

    `prompting` is what `evaluate`, `browse`, `diagnose` and `evaluate-mcq` default to for this run
    (docs/formats.md): the template of the demo data (None when `prepare` built the prompts), the
    assistant prefix, and validation's generation length.
    """
    from diagnosis_zero import __version__

    recipe, args = plan.recipe, plan.args
    template = None if recipe.data is not None else (recipe.template or "r1-zero")
    grpo = {name: getattr(args, name) for name in
            ("max_completion_length", "temperature", "top_p", "top_k", "repetition_penalty", "num_generations",
             "max_steps", "learning_rate", "beta", "use_vllm", "output_dir")}
    return {
        "diagnosis_zero": __version__, "recipe_path": str(plan.recipe_path),
        "recipe": dataclasses.asdict(recipe), "grpo": grpo,
        "prompting": {"model": recipe.model, "template": template, "assistant_prefix": recipe.assistant_prefix,
                      "max_new_tokens": recipe.validation_max_tokens or args.max_completion_length,
                      "temperature": 0.0},
    }


def make_run_file_callback(plan: TrainPlan):
    """Return a callback writing the run file into the run folder now and into each checkpoint it saves."""
    from transformers import TrainerCallback

    from diagnosis_zero.generation import RUN_FILE

    text = json.dumps(run_file(plan), indent=2, ensure_ascii=False, default=str) + "\n"

    class RunFileCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                write_text_atomic(plan.output_dir / RUN_FILE, text)

        def on_save(self, args, state, control, **kwargs):
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and checkpoint.is_dir():
                write_text_atomic(checkpoint / RUN_FILE, text)

    return RunFileCallback()


# ---------------------------------------------------------------- logs

def metric_name(key: str) -> str:
    """Return the metrics.jsonl name of a TRL log key (docs/formats.md); our own names map to themselves."""
    if key.startswith("rewards/") and key.endswith("/mean"):
        return key[:-len("/mean")]
    if key.startswith("rewards/") and key.endswith("/std"):
        return key[:-len("/std")] + "_std"
    return METRIC_NAMES.get(key, key)


def rename_logs(logs: dict) -> None:
    """Rename TRL's log keys in place to metrics.jsonl's names (for the loggers that read `logs` next)."""
    for key in list(logs):
        name = metric_name(key)
        if name != key:
            logs[name] = logs.pop(key)


def metrics_row(logs: dict, step: int, elapsed: float) -> dict:
    """Return the metrics.jsonl line for TRL's `logs` at `step` (docs/formats.md names; no NaN)."""
    row: dict[str, Any] = {"step": step}
    for key, value in logs.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        row[metric_name(key)] = value
    row["time"] = round(elapsed, 3)
    return row


def read_rows(path: Path) -> list[dict]:
    """Return the JSON objects of a JSON Lines log (io.read_jsonl's torn-tail policy; other bad lines
    are skipped with a warning: the log is rewritten from the good ones on resume)."""
    if not path.is_file():
        return []
    lines = read_jsonl(path, skip_bad=True)
    for error in lines.bad_lines:
        logger.warning("%s (line skipped)", error)
    return lines.records


def truncate_log(path: Path, last_step: int) -> list[dict]:
    """Keep only lines with step <= last_step (steps after the checkpoint are redone); return them."""
    rows = read_rows(path)
    kept = [row for row in rows if isinstance(row.get("step"), int) and row["step"] <= last_step]
    if path.is_file() and (len(kept) != len(rows) or path.read_bytes()[-1:] not in (b"", b"\n")):
        write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept))
    return kept


def make_callback(run: RunState):
    from transformers import TrainerCallback

    class DiagnosisZeroCallback(TrainerCallback):
        """metrics.jsonl, validation, completion samples, health warnings and Ctrl-C, around TRL's loop."""

        def on_train_begin(self, args, state, control, **kwargs):
            if state.global_step == 0 and run.recipe.validation_steps:
                row = {"step": 0, **run.validate(), "time": round(run.elapsed(), 3)}
                if state.is_world_process_zero:
                    run.write_row(row)

        def on_step_end(self, args, state, control, **kwargs):
            step = state.global_step
            if state.is_world_process_zero:
                run.write_samples(step)
            every = run.recipe.validation_steps
            if every and (step % every == 0 or step == state.max_steps):
                run.pending_validation = run.validate()
                control.should_log = True  # the validation joins this step's metrics line
            if step == state.max_steps:
                control.should_save = True  # always end with a checkpoint
            if run.stop_requested(run.trainer):
                control.should_save = True
                control.should_training_stop = True
                run.interrupted = True
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs if logs is not None else {}
            if not state.is_world_process_zero or SUMMARY_KEYS & set(logs):
                return
            # In place, before the reporting callbacks (see log_names_first): TensorBoard and the
            # others log metrics.jsonl's names, validation included.
            rename_logs(logs)
            if run.pending_validation:
                logs.update(run.pending_validation)
                run.pending_validation = None
            row = metrics_row(logs, state.global_step, run.elapsed())
            run.write_row(row)
            if "reward_mean" in row:
                logger.info("step %d: reward %.3f, format %.2f, think %.2f, accuracy %.2f, %.0f tokens, %.1f s",
                            row["step"], row["reward_mean"], row.get("format_rate", math.nan),
                            row.get("think_rate", math.nan), row.get("accuracy", math.nan),
                            row.get("completion_length_mean", math.nan), row.get("step_time", math.nan))

    return DiagnosisZeroCallback()


class RunState:
    """What the callback and the reward wrapper share during one `train` call."""

    def __init__(self, plan: TrainPlan, val_cases: list[dict], rows: list[dict]):
        from diagnosis_zero import health

        self.plan = plan
        self.recipe = plan.recipe
        self.val_cases = val_cases
        self.rows = rows
        self.last_step = max((row["step"] for row in rows), default=-1)
        self.time_offset = max((row.get("time", 0.0) for row in rows), default=0.0)
        self.started = time.monotonic()
        self.pending_validation: dict | None = None
        self.samples: list[dict] = []
        self.samples_step = -1
        self.trainer = None
        self.interrupted = False
        self.sigint = False
        self.health_raised: set = set()
        health.new_flags(rows, self.health_raised)  # already reported in an earlier session

    def elapsed(self) -> float:
        return self.time_offset + time.monotonic() - self.started

    def validate(self) -> dict:
        if not self.val_cases:
            return {}
        began = time.monotonic()
        metrics = validate(self.trainer, self.val_cases, self.recipe, self.plan.reward_config)
        if metrics:
            logger.info("validation at step %d: score %.3f, accuracy %.3f, format %.3f (%.0f s)",
                        self.trainer.state.global_step, metrics["val_score"], metrics["val_accuracy"],
                        metrics["val_format_rate"], time.monotonic() - began)
        return metrics

    def write_row(self, row: dict) -> None:
        from diagnosis_zero import health

        if row["step"] <= self.last_step:
            return
        with open(self.plan.output_dir / METRICS_FILE, "a", encoding="utf-8") as fh:
            append_jsonl(fh, [row])
        self.last_step = row["step"]
        self.rows.append(row)
        for flag in health.new_flags(self.rows, self.health_raised):
            logger.warning("training health: %s", flag)

    def on_reward_batch(self, prompts, completions, columns) -> None:
        """Keep a few scored completions of the batch being generated (for step global_step + 1)."""
        every = self.recipe.completions_log_steps
        state = columns.get("trainer_state")
        step = (state.global_step if state is not None else 0) + 1
        if not every or not (step == 1 or step % every == 0):
            return
        from diagnosis_zero import reward

        count = min(self.recipe.completions_log_count, len(completions))
        picks = [round(k * (len(completions) - 1) / max(count - 1, 1)) for k in range(count)]
        results = reward.score_batch(completions, self.plan.reward_config,
                                     **{k: v for k, v in columns.items() if k in ("reward_model", "extra_info")})
        self.samples = []
        for i in dict.fromkeys(picks):
            truth = columns["reward_model"][i]["ground_truth"]
            result = results[i]
            self.samples.append({
                "step": step, "id": columns["extra_info"][i].get("id"),
                "prompt": prompts[i] if prompts is not None else None,
                "completion": completion_text(completions[i]), "references": list(truth["diagnosis"]),
                "orpha_id": truth["orpha_id"], "score": result["score"], "acc": result["acc"],
                "format": result["format"], "think_present": result["think_present"],
                "mixed_language": result["mixed_language"], "prediction": result["pred"],
            })
            if columns.get("tool_completions") is not None:  # tool rollouts: the whole conversation too
                self.samples[-1]["trajectory"] = list(columns["tool_completions"][i])
        self.samples_step = step

    def write_samples(self, step: int) -> None:
        if self.samples and self.samples_step == step:
            with open(self.plan.output_dir / COMPLETIONS_FILE, "a", encoding="utf-8") as fh:
                append_jsonl(fh, self.samples)
        self.samples = []

    def stop_requested(self, trainer) -> bool:
        """True once Ctrl-C was pressed on any process (all processes stop at the same step)."""
        if trainer is None or trainer.accelerator.num_processes == 1:
            return self.sigint
        import torch

        flag = torch.tensor([1.0 if self.sigint else 0.0], device=trainer.accelerator.device)
        return bool(trainer.accelerator.reduce(flag, reduction="sum").item() > 0)


def completion_text(completion) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion)


def log_names_first(trainer, callback) -> None:
    """Put our callback first, so its on_log renames TRL's keys before the reporting integrations
    (TensorBoard, W&B, ...) log them: Trainer puts those before the `callbacks` it is given."""
    trainer.callback_handler.callbacks.remove(callback)
    trainer.callback_handler.callbacks.insert(0, callback)


def quiet_progress(trainer) -> None:
    """Keep TRL's progress bar (steps, ETA) but not its dump of every metric after each step; our
    callback logs one short line per step instead, and metrics.jsonl has everything."""
    from transformers.trainer_callback import ProgressCallback

    class QuietProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    if any(isinstance(cb, ProgressCallback) for cb in trainer.callback_handler.callbacks):
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(QuietProgress())


def format_summary(summary: dict) -> str:
    """Return the end-of-run summary: first/last step reward, format rate, accuracy; output paths."""
    steps = [row for row in summary["rows"] if row["step"] >= 1 and "reward_mean" in row]
    lines = []
    status = "interrupted (resume with --resume)" if summary["interrupted"] else "done"
    if steps:
        durations = sorted(b["time"] - a["time"] for a, b in zip(steps, steps[1:], strict=False) if b["step"] == a["step"] + 1)
        per_step = f", {durations[len(durations) // 2]:.1f} s/step" if durations else ""
        lines.append(f"training {status}: {steps[-1]['step']} steps on {summary['device']} in "
                     f"{steps[-1]['time']:.0f} s{per_step}")
        head, tail = steps[:5], steps[-5:]
        lines.append(f"{'':22}{'step ' + str(steps[0]['step']):>10}{'step ' + str(steps[-1]['step']):>10}"
                     f"{'first 5':>10}{'last 5':>10}")
        for key in ("reward_mean", "format_rate", "accuracy"):
            first, last = steps[0].get(key), steps[-1].get(key)
            lines.append(f"  {key:20}{_num(first):>10}{_num(last):>10}{_num(_mean(head, key)):>10}"
                         f"{_num(_mean(tail, key)):>10}")
    else:
        lines.append(f"training {status}: no step finished")
    validations = [row for row in summary["rows"] if "val_score" in row]
    if validations:
        lines.append(f"  validation score: step {validations[0]['step']} {validations[0]['val_score']:.3f}"
                     f" -> step {validations[-1]['step']} {validations[-1]['val_score']:.3f}"
                     f" (format {validations[0]['val_format_rate']:.2f} -> {validations[-1]['val_format_rate']:.2f})")
    output_dir = Path(summary["output_dir"])
    lines.append("outputs:")
    lines.append(f"  metrics      {output_dir / METRICS_FILE}")
    if summary["completions"]:
        lines.append(f"  completions  {summary['completions']}")
    if summary["checkpoint"]:
        lines.append(f"  checkpoint   {summary['checkpoint']}")
    if summary["logging_dir"]:
        lines.append(f"  tensorboard  tensorboard --logdir {summary['logging_dir']}")
    return "\n".join(lines)


def _mean(rows: list[dict], key: str) -> float | None:
    values = [row[key] for row in rows if key in row]
    return sum(values) / len(values) if values else None


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"
