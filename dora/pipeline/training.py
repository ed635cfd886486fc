"""An explicit training loop on accelerate, shared by teacher fine-tuning and student training.

What it does, top to bottom: shuffle each epoch with a seed of its own (so a resumed run sees
the same order), run micro-batches with gradient accumulation, clip, step AdamW with linear
warm-up and decay, evaluate every ``eval_every`` steps with the task metric, keep the best
model, and save a resumable checkpoint (``checkpoints/last``) every ``save_every`` steps.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from dora.errors import ConfigError, TrainingError
from dora.pipeline.progress import console, progress_bar

STATE_FILE = "trainer_state.json"


@dataclass(frozen=True, kw_only=True)
class LoopSettings:
    """Optimisation settings (see the stage configs for what each means to the user)."""

    epochs: float
    max_steps: int | None
    batch_size: int
    grad_accum: int
    learning_rate: float
    warmup_ratio: float
    weight_decay: float
    seed: int
    eval_every: int | None
    save_every: int | None
    max_grad_norm: float = 1.0
    resume: bool = True


@dataclass(kw_only=True)
class LoopResult:
    steps: int
    epochs: float
    examples_seen: int
    tokens_seen: int
    seconds: float
    best: dict[str, float] | None
    best_step: int | None
    history: list[dict[str, Any]] = field(default_factory=list)


def total_steps(n_examples: int, s: LoopSettings) -> int:
    if s.max_steps is not None:
        return s.max_steps
    return max(1, math.ceil(s.epochs * steps_per_epoch(n_examples, s)))


def steps_per_epoch(n_examples: int, s: LoopSettings) -> int:
    """Optimizer steps in one pass; the last step of an epoch may accumulate fewer micro-batches."""
    return math.ceil(math.ceil(n_examples / s.batch_size) / s.grad_accum)


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def mixed_precision() -> str:
    """bf16 where the device supports it, else full precision."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def train_loop(
    *,
    model: Any,
    features: Sequence[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    loss_fn: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor],
    settings: LoopSettings,
    out_dir: Path,
    save_model: Callable[[Any, Path], None],
    evaluate: Callable[[Any], dict[str, float]] | None = None,
    primary: str | None = None,
    description: str = "training",
) -> LoopResult:
    """Train ``model`` in place; return what happened. The best (or last) model is saved by the caller."""
    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup

    if not features:
        raise ConfigError("no training examples; give a non-empty training file or cache")
    torch.manual_seed(settings.seed)
    accelerator = Accelerator(mixed_precision=mixed_precision(), cpu=not torch.cuda.is_available())
    steps = total_steps(len(features), settings)
    no_decay = ("bias", "layer_norm", "layernorm", "norm")
    groups = [
        {"params": [p for n, p in model.named_parameters() if p.requires_grad and not any(x in n.lower() for x in no_decay)],
         "weight_decay": settings.weight_decay},
        {"params": [p for n, p in model.named_parameters() if p.requires_grad and any(x in n.lower() for x in no_decay)],
         "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=settings.learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_ratio * steps), steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    ckpt = out_dir / "checkpoints" / "last"
    # What makes a checkpoint resumable by this run: same data size and optimisation settings.
    run_key = json.dumps({"n": len(features), **asdict(settings), "resume": None}, sort_keys=True)
    state: dict[str, Any] = {"step": 0, "examples_seen": 0, "tokens_seen": 0, "seconds": 0.0,
                             "best": None, "best_step": None, "history": [], "run_key": run_key}
    if settings.resume and (ckpt / STATE_FILE).is_file():
        saved = json.loads((ckpt / STATE_FILE).read_text())
        if saved.get("run_key") != run_key:
            raise ConfigError(f"{ckpt}: a checkpoint of a different run (other data or settings); "
                              "pass --no-resume to start over, or use another --out")
        accelerator.load_state(str(ckpt))
        state = saved
        console.print(f"[dim]{description}: resuming from step {state['step']} ({ckpt})[/]")

    micro_per_epoch = math.ceil(len(features) / settings.batch_size)
    per_epoch = steps_per_epoch(len(features), settings)

    start_time = time.perf_counter() - state["seconds"]
    model.train()
    running = 0.0
    running_n = 0

    def save_checkpoint() -> None:
        tmp = ckpt.with_name("last.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        accelerator.save_state(str(tmp))
        state["seconds"] = time.perf_counter() - start_time
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        shutil.rmtree(ckpt, ignore_errors=True)
        tmp.rename(ckpt)

    def run_eval() -> None:
        if evaluate is None:
            return
        scores = evaluate(accelerator.unwrap_model(model))
        model.train()
        state["history"].append({"step": state["step"], "eval": scores})
        value = scores.get(primary or "", float("nan"))
        if state["best"] is None or value > state["best"].get(primary, float("-inf")):
            state["best"], state["best_step"] = scores, state["step"]
            save_model(accelerator.unwrap_model(model), out_dir / "best")
        console.print(f"[dim]{description}: step {state['step']} {primary}={value:.4f}[/]")

    with progress_bar() as bar:
        task = bar.add_task(description, total=steps, completed=state["step"], info="")
        while state["step"] < steps:
            epoch, step_in_epoch = divmod(state["step"], per_epoch)
            offset = step_in_epoch * settings.grad_accum
            order = _epoch_order(len(features), settings.seed, epoch)
            for b in range(offset, micro_per_epoch):
                idx = order[b * settings.batch_size : (b + 1) * settings.batch_size]
                batch = {k: v.to(accelerator.device) for k, v in collate([features[i] for i in idx]).items()}
                with accelerator.autocast():
                    loss = loss_fn(model, batch)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"{description}: the loss became {float(loss)} at step {state['step'] + 1}; lower "
                        "--learning-rate, or check the data (the last checkpoint is kept)"
                    )
                accelerator.backward(loss / settings.grad_accum)
                running += float(loss.detach())
                running_n += 1
                state["examples_seen"] += len(idx)
                state["tokens_seen"] += int(batch["attention_mask"].sum()) + int((batch["labels"] != -100).sum())
                if (b + 1) % settings.grad_accum and b + 1 != micro_per_epoch:
                    continue
                if settings.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
                avg = running / max(running_n, 1)
                bar.update(task, completed=state["step"], info=f"loss {avg:.4f}")
                if state["step"] % 10 == 0 or state["step"] == steps:
                    state["history"].append({"step": state["step"], "loss": round(avg, 6)})
                    running, running_n = 0.0, 0
                if settings.eval_every and state["step"] % settings.eval_every == 0 and state["step"] < steps:
                    run_eval()
                if settings.save_every and state["step"] % settings.save_every == 0 and state["step"] < steps:
                    save_checkpoint()
                if state["step"] >= steps:
                    break
    run_eval()
    state["seconds"] = time.perf_counter() - start_time
    save_checkpoint()
    return LoopResult(
        steps=state["step"], epochs=state["step"] / per_epoch,
        examples_seen=state["examples_seen"], tokens_seen=state["tokens_seen"], seconds=state["seconds"],
        best=state["best"], best_step=state["best_step"], history=state["history"],
    )
