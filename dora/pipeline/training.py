"""An explicit training loop on accelerate, shared by teacher fine-tuning and student training.

What it does, top to bottom: shuffle each epoch with a seed of its own (so a resumed run sees
the same order), run micro-batches with gradient accumulation, clip, step AdamW with linear
warm-up and decay, evaluate every ``eval_every`` steps with the task metric, keep the best
model, and save a resumable checkpoint (``checkpoints/last``) every ``save_every`` steps.

The same loop runs as one process or as several under ``torchrun`` / ``accelerate launch``:
data-parallel (each process a disjoint share of every epoch, gradients averaged), or with
``fsdp`` the model sharded over the processes (``dora.pipeline.fsdp``). Multi-GPU recipes::

    accelerate launch --multi_gpu --num_processes 4 -m dora train-student --cache c/ --out runs/s
    torchrun --nproc-per-node 4 -m dora teacher-label --fsdp --teacher t5-xxl/ ...
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dora.errors import ConfigError, TrainingError
from dora.pipeline.batches import InMemory, TrainData
from dora.pipeline.checkpoint import (
    FORMAT,
    SCHEDULER_FILE,
    STATE,
    STATE_FILE,
    WRITE_ERRORS,
    check_contents,
    failed_path,
    load_model_and_optimizer,
    model_and_optimizer,
    read_plain,
    read_rng,
    read_trainer_state,
    refusal,
    write_failure,
    write_json,
    write_rng,
    write_state,
)
from dora.pipeline.costs import Invocation
from dora.pipeline.fsdp import (
    clip_gradients,
    full_state_dict,
    load_sharded,
    save_sharded,
    shard_model,
    unwrap_optimizer,
)
from dora.pipeline.progress import console, progress_bar
from dora.pipeline.tracking import CURVES, Tracker, write_curves

SaveModel = Callable[[Any, Path, "dict[str, Any] | None"], None]


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
    patience: int | None = None
    """Stop after this many evaluations without a better score (early stopping); None: never."""


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
    stopped_early: bool = False


def total_steps(n_examples: int, s: LoopSettings, world: int = 1) -> int:
    if s.max_steps is not None:
        return s.max_steps
    return max(1, math.ceil(s.epochs * steps_per_epoch(n_examples, s, world)))


def steps_per_epoch(n_examples: int, s: LoopSettings, world: int = 1) -> int:
    """Optimizer steps in one pass over ``world`` processes; the last step of an epoch may
    accumulate fewer micro-batches."""
    return math.ceil(math.ceil(n_examples / (s.batch_size * world)) / s.grad_accum)


class Checkpoints:
    """``<dir>/last``: the newest resumable state, replaced so that a crash at any moment leaves
    either the previous checkpoint or the new one (``last.old`` is put back on the next start).

    Every part is safetensors or JSON (``dora.pipeline.checkpoint``): nothing is unpickled, and a
    directory holding any file dora does not write there is refused, not loaded."""

    def __init__(self, root: Path, accelerator: Any, model: Any, optimizer: Any, scheduler: Any, fsdp: bool) -> None:
        self.root, self.accelerator, self.fsdp = root, accelerator, fsdp
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.last, self.tmp, self.old = root / "last", root / "last.tmp", root / "last.old"

    def state(self) -> dict[str, Any] | None:
        if self.accelerator.is_main_process and not self.last.exists() and (self.old / STATE_FILE).is_file():
            os.replace(self.old, self.last)  # a crash between the two renames of ``save``
        self.accelerator.wait_for_everyone()
        if not self.last.exists() and not self.last.is_symlink():
            return None
        if self.last.is_symlink() or not self.last.is_dir():
            raise refusal(self.last, "not a checkpoint directory dora wrote", self.last)
        check_contents(self.last)  # before reading anything in it
        return read_trainer_state(self.last)

    def load(self) -> None:
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        if self.fsdp:
            load_sharded(self.last, self.model, self.optimizer, rank, world)
        else:
            load_model_and_optimizer(self.last / STATE, self.model, unwrap_optimizer(self.optimizer), self.last,
                                     world=world)
        self.scheduler.load_state_dict(read_plain(self.last / SCHEDULER_FILE, self.scheduler.state_dict(), self.last))
        read_rng(self.last, rank)

    def save(self, state: dict[str, Any]) -> None:
        main = self.accelerator.is_main_process
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        previous = self.last if self.last.is_dir() else None
        try:
            if main:
                shutil.rmtree(self.tmp, ignore_errors=True)
                self.tmp.mkdir(parents=True)
            self.accelerator.wait_for_everyone()
            if self.fsdp:
                save_sharded(self.tmp, self.model, self.optimizer, rank, world)
            else:
                model_optim = model_and_optimizer(self.model, unwrap_optimizer(self.optimizer))
                if main:  # data-parallel: every rank holds the same weights
                    write_state(self.tmp / STATE, model_optim, world=world)
            write_rng(self.tmp, rank)
            if main:
                write_json(self.tmp / SCHEDULER_FILE, {"format": FORMAT, "state": self.scheduler.state_dict()})
            self.accelerator.wait_for_everyone()
            if main:
                write_json(self.tmp / STATE_FILE, state)  # written last: marks it complete
                shutil.rmtree(self.old, ignore_errors=True)
                if self.last.is_dir():
                    os.replace(self.last, self.old)
                os.replace(self.tmp, self.last)
                shutil.rmtree(self.old, ignore_errors=True)
        except WRITE_ERRORS as e:  # a full disk, most often: no half-written checkpoint is left
            if main:
                shutil.rmtree(self.tmp, ignore_errors=True)
            raise write_failure(failed_path(e, self.tmp), e, "the checkpoint", previous) from None
        self.accelerator.wait_for_everyone()


def mixed_precision() -> str:
    """bf16 where the device supports it, else full precision."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def train_loop(
    *,
    model: Any,
    features: TrainData | Sequence[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    loss_fn: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor],
    settings: LoopSettings,
    out_dir: Path,
    save_model: SaveModel,
    evaluate: Callable[[Any], dict[str, float]] | None = None,
    primary: str | None = None,
    description: str = "training",
    final_dir: Path | None = None,
    fsdp: bool = False,
    tracker: Tracker | None = None,
    ledger: Invocation | None = None,
) -> LoopResult:
    """Train ``model`` in place; return what happened.

    ``features`` is a list of features or a ``TrainData`` that streams them. Under
    ``torchrun``/``accelerate launch`` each process takes every ``world``-th micro-batch of the
    same epoch order (disjoint rows; gradients averaged); ``fsdp`` shards the model over the
    processes instead of replicating it. ``save_model(module, path, state_dict)`` runs on rank 0
    only: for the best model (when evaluating) and, with ``final_dir``, the final one. The
    history (loss every 10 steps, each evaluation) goes to ``tracker`` and ``out_dir/curves.csv``.
    ``ledger`` (rank 0) records the steps, examples and tokens this invocation adds, counted at
    each checkpoint, so work a crash loses and a resume redoes is counted once.
    """
    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup

    data = features if isinstance(features, TrainData) else InMemory(features)
    if not len(data):
        raise ConfigError("no training examples; give a non-empty training file or cache")
    torch.manual_seed(settings.seed)
    accelerator = Accelerator(mixed_precision=mixed_precision(), cpu=not torch.cuda.is_available())
    world, rank = accelerator.num_processes, accelerator.process_index
    fsdp = fsdp and world > 1
    if evaluate is not None and fsdp:
        raise ConfigError("evaluation during FSDP training is not supported; train the student data-parallel")
    per_epoch = steps_per_epoch(len(data), settings, world)
    steps = total_steps(len(data), settings, world)
    if fsdp:
        model = shard_model(model, accelerator.device, bf16=accelerator.mixed_precision == "bf16")
    optimizer = torch.optim.AdamW(_param_groups(model, settings.weight_decay), lr=settings.learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_ratio * steps), steps)
    if not fsdp:  # the scheduler is not prepared: accelerate would step it once per process per step under DDP
        model, optimizer = accelerator.prepare(model, optimizer)
    checkpoints = Checkpoints(out_dir / "checkpoints", accelerator, model, optimizer, scheduler, fsdp)

    # What makes a checkpoint resumable by this run: same data size, settings and process count.
    run_key = json.dumps({"n": len(data), **asdict(settings), "resume": None, "world": world}, sort_keys=True)
    state: dict[str, Any] = {"step": 0, "examples_seen": 0, "tokens_seen": 0, "seconds": 0.0,
                             "best": None, "best_step": None, "history": [], "run_key": run_key,
                             "since_best": 0, "stopped_early": False}
    saved = checkpoints.state() if settings.resume else None
    if saved is not None:
        if saved.get("run_key") != run_key:
            raise ConfigError(f"{checkpoints.last}: a checkpoint of a different run (other data, settings or "
                              "process count); pass --no-resume to start over, or use another --out")
        checkpoints.load()
        state = {"since_best": 0, "stopped_early": False, **saved}
        console.print(f"[dim]{description}: resuming from step {state['step']} ({checkpoints.last})[/]")
        if ledger is not None:  # what earlier invocations did is what their checkpoints kept
            ledger.ledger.reconcile({"steps": state["step"], "examples": state["examples_seen"],
                                     "tokens": state["tokens_seen"]}, current=ledger.run_id)
    base = {k: state[k] for k in ("step", "examples_seen", "tokens_seen")}

    def count_work() -> None:  # what this invocation added, as far as a checkpoint keeps it
        if ledger is not None:
            ledger.progress(steps=state["step"] - base["step"], examples=state["examples_seen"] - base["examples_seen"],
                            tokens=state["tokens_seen"] - base["tokens_seen"])

    micro_per_epoch = math.ceil(len(data) / (settings.batch_size * world))  # per process
    start_time = time.perf_counter() - state["seconds"]
    model.train()
    running = 0.0
    running_n = 0

    def write_model(module: Any, path: Path, state_dict: dict[str, Any] | None) -> None:
        """``save_model``, a failed write (a full disk) made one line that says what is kept."""
        previous = checkpoints.last if checkpoints.last.is_dir() else None
        try:
            save_model(module, path, state_dict)
        except WRITE_ERRORS as e:
            raise write_failure(failed_path(e, path), e, "the model", previous) from None

    def save_to(path: Path) -> None:
        unwrapped = model if fsdp else accelerator.unwrap_model(model)
        state_dict = full_state_dict(model) if fsdp else None  # every rank takes part in the gather
        if accelerator.is_main_process:
            write_model(unwrapped, path, state_dict)
        accelerator.wait_for_everyone()

    def run_eval() -> bool:
        """Evaluate (rank 0), keep the best model; True when early stopping says stop (on every rank)."""
        if evaluate is None:
            return False
        stop = 0.0
        if accelerator.is_main_process:
            scores = evaluate(accelerator.unwrap_model(model))
            record({"step": state["step"], "eval": scores})
            value = scores.get(primary or "", float("nan"))
            if state["best"] is None or value > state["best"].get(primary, float("-inf")):
                state["best"], state["best_step"], state["since_best"] = scores, state["step"], 0
                write_model(accelerator.unwrap_model(model), out_dir / "best", None)
            else:
                state["since_best"] += 1
            console.print(f"[dim]{description}: step {state['step']} {primary}={value:.4f}[/]")
            stop = float(settings.patience is not None and state["since_best"] >= settings.patience)
        model.train()
        accelerator.wait_for_everyone()
        flag = torch.tensor([stop], device=accelerator.device)
        if world > 1:  # rank 0 decided; every rank stops at the same step
            flag = accelerator.reduce(flag, reduction="sum")
        return bool(flag.item() > 0)

    def record(entry: dict[str, Any]) -> None:
        state["history"].append(entry)
        if tracker is not None and accelerator.is_main_process:
            tracker.log(entry)

    def save_checkpoint() -> None:
        state["seconds"] = time.perf_counter() - start_time
        checkpoints.save(state)
        count_work()
        if accelerator.is_main_process:
            write_curves(out_dir / CURVES, state["history"])

    with progress_bar(enabled=accelerator.is_main_process) as bar:
        task = bar.add_task(description, total=steps, completed=state["step"], info="")
        while state["step"] < steps and not state["stopped_early"]:
            epoch, step_in_epoch = divmod(state["step"], per_epoch)
            order = data.order(settings.seed, epoch)
            if world > 1:  # every process runs the same number of full micro-batches
                size = micro_per_epoch * settings.batch_size * world
                order = np.resize(order, size)
            for b in range(step_in_epoch * settings.grad_accum, micro_per_epoch):
                g = b * world + rank  # this process's micro-batch of the global sequence
                idx = order[g * settings.batch_size : (g + 1) * settings.batch_size]
                batch = {k: v.to(accelerator.device) for k, v in collate(data.take(idx)).items()}
                last_micro = (b + 1) % settings.grad_accum == 0 or b + 1 == micro_per_epoch
                with _sync(accelerator, model, fsdp, last_micro), accelerator.autocast():
                    loss = loss_fn(model, batch)
                    finite = _all_finite(loss, accelerator, world)
                    if not finite:
                        # Not always the learning rate: a damaged cache (NaN log-probabilities) does it too.
                        raise TrainingError(
                            f"{description}: the loss became {float(loss.detach())} at step {state['step'] + 1}; either the "
                            "learning rate is too high (lower --learning-rate) or the inputs hold non-finite values "
                            "(e.g. a label cache with damaged log-probabilities: check it with `dora cache verify "
                            "CACHE`); the last checkpoint is kept"
                        )
                    accelerator.backward(loss / settings.grad_accum)
                running += float(loss.detach())
                running_n += 1
                tokens = int(batch["attention_mask"].sum()) + int((batch["labels"] != -100).sum())
                state["examples_seen"] += len(idx) * world
                state["tokens_seen"] += tokens * world  # same-sized batches on every process: an estimate
                if not last_micro:
                    continue
                if settings.max_grad_norm:
                    clip_gradients(model, accelerator, settings.max_grad_norm, fsdp)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
                avg = running / max(running_n, 1)
                bar.update(task, completed=state["step"], info=f"loss {avg:.4f}")
                if state["step"] % 10 == 0 or state["step"] == steps:
                    record({"step": state["step"], "loss": round(avg, 6)})
                    running, running_n = 0.0, 0
                if settings.eval_every and state["step"] % settings.eval_every == 0 and state["step"] < steps:
                    if run_eval():
                        state["stopped_early"] = True
                        console.print(f"[dim]{description}: stopping early at step {state['step']}: no better "
                                      f"{primary} in {settings.patience} evaluation(s)[/]")
                        break
                if settings.save_every and state["step"] % settings.save_every == 0 and state["step"] < steps:
                    save_checkpoint()
                if state["step"] >= steps:
                    break
    if not state["stopped_early"]:
        run_eval()
    state["seconds"] = time.perf_counter() - start_time
    save_checkpoint()  # first: a crash while saving the final model resumes at the last step
    if final_dir is not None:
        save_to(final_dir)
    return LoopResult(
        steps=state["step"], epochs=state["step"] / per_epoch,
        examples_seen=state["examples_seen"], tokens_seen=state["tokens_seen"], seconds=state["seconds"],
        best=state["best"], best_step=state["best_step"], history=state["history"],
        stopped_early=state["stopped_early"],
    )


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    no_decay = ("bias", "layer_norm", "layernorm", "norm")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if not any(x in n.lower() for x in no_decay)], "weight_decay": weight_decay},
        {"params": [p for n, p in named if any(x in n.lower() for x in no_decay)], "weight_decay": 0.0},
    ]


def _sync(accelerator: Any, model: Any, fsdp: bool, last_micro: bool) -> Any:
    """Skip the gradient all-reduce on micro-batches that only accumulate (DDP)."""
    if last_micro or fsdp or accelerator.num_processes == 1:
        return contextlib.nullcontext()
    return accelerator.no_sync(model)


def _all_finite(loss: torch.Tensor, accelerator: Any, world: int) -> bool:
    """Whether the loss is finite on every process (so all stop together, none hangs)."""
    bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=accelerator.device)
    if world > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    return float(bad) == 0.0
