"""An explicit training loop on accelerate, shared by teacher fine-tuning and student training.

What it does, top to bottom: shuffle each epoch with a seed of its own (so a resumed run sees
the same order), run micro-batches with gradient accumulation, clip, step AdamW with linear
warm-up and decay, evaluate every ``eval_every`` steps with the task metric, keep the best
model, and save a resumable checkpoint (``checkpoints/last``) every ``save_every`` steps.

The same loop runs as one process or as several under ``torchrun`` / ``accelerate launch``:
data-parallel (each process a disjoint share of every epoch, gradients averaged), or with
``fsdp`` the model sharded over the processes (``dora.pipeline.train.fsdp``). Multi-GPU recipes::

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

from dora.errors import ConfigError, Interrupted, TrainingError
from dora.pipeline.costs.ledger import Invocation
from dora.pipeline.train.batches import InMemory, TrainData
from dora.pipeline.train.checkpoint import (
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
from dora.pipeline.train.fsdp import (
    clip_gradients,
    full_state_dict,
    load_sharded,
    save_sharded,
    shard_model,
    unwrap_optimizer,
)
from dora.pipeline.train.tracking import CURVES, Tracker, write_curves
from dora.progress import console, progress_bar

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


EVALUATIONS_PER_RUN = 4
"""Dev evaluations a run gets when none are asked for: enough to pick a checkpoint, few enough that
decoding the whole dev split stays a small part of the run."""


def evaluations_every(rows: int, epochs: float, batch_size: int, *, max_steps: int | None = None) -> int:
    """Steps between dev evaluations for about ``EVALUATIONS_PER_RUN`` of them in a run over
    ``rows`` examples for ``epochs`` (or ``max_steps`` steps when given)."""
    steps = max_steps if max_steps is not None else int(-(-rows // batch_size) * epochs)
    return max(1, steps // EVALUATIONS_PER_RUN)


def steps_per_epoch(n_examples: int, s: LoopSettings, world: int = 1) -> int:
    """Optimizer steps in one pass over ``world`` processes; the last step of an epoch may
    accumulate fewer micro-batches."""
    return math.ceil(math.ceil(n_examples / (s.batch_size * world)) / s.grad_accum)


class Checkpoints:
    """``<dir>/last``: the newest resumable state, replaced so that a crash at any moment leaves
    either the previous checkpoint or the new one (``last.old`` is put back on the next start).

    Every part is safetensors or JSON (``dora.pipeline.train.checkpoint``): nothing is unpickled, and a
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
    data = features if isinstance(features, TrainData) else InMemory(features)
    if not len(data):
        raise ConfigError("no training examples; give a non-empty training file or cache")
    job = _Job(collate=collate, loss_fn=loss_fn, settings=settings, out_dir=out_dir, save_model=save_model,
               evaluate=evaluate, primary=primary, description=description, tracker=tracker, ledger=ledger)
    run = _Run(job, data, model, fsdp)
    run.resume()
    run.train()
    if not run.state["stopped_early"]:
        run.evaluate()
    run.save_checkpoint()  # first: a crash while saving the final model resumes at the last step
    if final_dir is not None:
        run.save_to(final_dir)
    return run.result()


@dataclass(frozen=True, kw_only=True)
class _Job:
    """What the caller of ``train_loop`` asked for, beyond the model and the data."""

    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]
    loss_fn: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor]
    settings: LoopSettings
    out_dir: Path
    save_model: SaveModel
    evaluate: Callable[[Any], dict[str, float]] | None
    primary: str | None
    description: str
    tracker: Tracker | None
    ledger: Invocation | None


class _Run:
    """One invocation of ``train_loop``: the prepared model, optimizer and scheduler, and
    ``state``, what a checkpoint keeps (step, counts, time, best score, history)."""

    def __init__(self, job: _Job, data: TrainData, model: Any, fsdp: bool) -> None:
        from accelerate import Accelerator

        s = job.settings
        self.job, self.data = job, data
        torch.manual_seed(s.seed)
        self.accelerator = Accelerator(mixed_precision=mixed_precision(), cpu=not torch.cuda.is_available())
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.fsdp = fsdp and self.world > 1
        if job.evaluate is not None and self.fsdp:
            raise ConfigError("evaluation during FSDP training is not supported; train the student data-parallel")
        self.per_epoch = steps_per_epoch(len(data), s, self.world)
        self.steps = total_steps(len(data), s, self.world)
        self.micro_per_epoch = math.ceil(len(data) / (s.batch_size * self.world))  # per process
        self.model, self.optimizer, self.scheduler = self._prepare(model)
        self.checkpoints = Checkpoints(job.out_dir / "checkpoints", self.accelerator, self.model, self.optimizer,
                                       self.scheduler, self.fsdp)
        self.state: dict[str, Any] = {}
        self.base: dict[str, int] = {}  # the counts at the start of this invocation
        self.start_time = 0.0
        self.running, self.running_n = 0.0, 0  # the loss since the last one logged
        self.stop = _Stop()  # set by train(): which signal asked it to stop

    def _prepare(self, model: Any) -> tuple[Any, Any, Any]:
        """The model (sharded under FSDP), AdamW and the linear warm-up/decay schedule."""
        from transformers import get_linear_schedule_with_warmup

        s, accelerator = self.job.settings, self.accelerator
        if self.fsdp:
            model = shard_model(model, accelerator.device, bf16=accelerator.mixed_precision == "bf16")
        optimizer = torch.optim.AdamW(_param_groups(model, s.weight_decay), lr=s.learning_rate)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(s.warmup_ratio * self.steps), self.steps)
        if not self.fsdp:  # the scheduler is not prepared: accelerate would step it once per process per step under DDP
            model, optimizer = accelerator.prepare(model, optimizer)
        return model, optimizer, scheduler

    def resume(self) -> None:
        """Start from ``checkpoints/last`` when it holds this run (and ``settings.resume``), else from scratch."""
        s, ledger = self.job.settings, self.job.ledger
        # What makes a checkpoint resumable by this run: same data size, settings and process count.
        run_key = json.dumps({"n": len(self.data), **asdict(s), "resume": None, "world": self.world}, sort_keys=True)
        self.state = {"step": 0, "examples_seen": 0, "tokens_seen": 0, "seconds": 0.0,
                      "best": None, "best_step": None, "history": [], "run_key": run_key,
                      "since_best": 0, "stopped_early": False}
        saved = self.checkpoints.state() if s.resume else None
        if saved is not None:
            if saved.get("run_key") != run_key:
                raise ConfigError(f"{self.checkpoints.last}: a checkpoint of a different run (other data, settings or "
                                  "process count); pass --no-resume to start over, or use another --out")
            self.checkpoints.load()
            self.state = {"since_best": 0, "stopped_early": False, **saved}
            console.print(f"[dim]{self.job.description}: resuming from step {self.state['step']} "
                          f"({self.checkpoints.last})[/]")
            if ledger is not None:  # what earlier invocations did is what their checkpoints kept
                ledger.ledger.reconcile({"steps": self.state["step"], "examples": self.state["examples_seen"],
                                         "tokens": self.state["tokens_seen"]}, current=ledger.run_id)
        self.base = {k: self.state[k] for k in ("step", "examples_seen", "tokens_seen")}
        self.start_time = time.perf_counter() - self.state["seconds"]

    def train(self) -> None:
        """Run epochs, with a progress bar, until the last step or until early stopping.

        In a single process, Ctrl-C and SIGTERM stop training at the end of the step under way:
        a checkpoint is saved there and :class:`Interrupted` says so (a second signal stops at
        once). Under several processes a signal stops at once; the last periodic checkpoint is kept."""
        self.model.train()
        with _deferred_signals(self.world == 1) as stop, \
                progress_bar(enabled=self.accelerator.is_main_process) as bar:
            self.stop = stop
            task = bar.add_task(self.job.description, total=self.steps, completed=self.state["step"], info="", unit="step")
            while self.state["step"] < self.steps and not self.state["stopped_early"]:
                self._epoch(bar, task)

    def _interrupt(self) -> Interrupted:
        """Save a checkpoint at this step (between steps, so it is whole) and say where."""
        self.save_checkpoint()
        step, again = self.state["step"], "" if self.job.settings.resume else " without --no-resume"
        return Interrupted(f"{self.job.description} stopped by {self.stop.signal} at step {step} of {self.steps}; "
                           f"saved a checkpoint at that step in {self.checkpoints.last}: rerun the same command{again} "
                           "to resume from it")

    def _epoch(self, bar: Any, task: Any) -> None:
        """The rest of the current epoch (all of it, unless resuming inside it); ends early at
        the last step or when early stopping says stop."""
        s, world = self.job.settings, self.world
        epoch, step_in_epoch = divmod(self.state["step"], self.per_epoch)
        order = self.data.order(s.seed, epoch)
        if world > 1:  # every process runs the same number of full micro-batches
            order = np.resize(order, self.micro_per_epoch * s.batch_size * world)
        for b in range(step_in_epoch * s.grad_accum, self.micro_per_epoch):
            last_micro = (b + 1) % s.grad_accum == 0 or b + 1 == self.micro_per_epoch
            self._micro_batch(order, b, last_micro)
            if not last_micro:
                continue
            self._optimizer_step()
            avg = self.running / max(self.running_n, 1)
            bar.update(task, completed=self.state["step"], info=f"loss {avg:.4f}")
            finished = self._after_step(avg)
            if self.stop.signal:  # asked during this step, the last one too: the checkpoint promised
                raise self._interrupt()
            if finished:
                return

    def _micro_batch(self, order: np.ndarray, b: int, last_micro: bool) -> None:
        """Forward and backward on this process's share of micro-batch ``b``; count what it saw."""
        s, world, accelerator = self.job.settings, self.world, self.accelerator
        g = b * world + self.rank  # this process's micro-batch of the global sequence
        idx = order[g * s.batch_size : (g + 1) * s.batch_size]
        batch = {k: v.to(accelerator.device) for k, v in self.job.collate(self.data.take(idx)).items()}
        with _sync(accelerator, self.model, self.fsdp, last_micro), accelerator.autocast():
            loss = self.job.loss_fn(self.model, batch)
            if not _all_finite(loss, accelerator, world):
                raise _diverged(self.job.description, loss, self.state["step"] + 1)
            accelerator.backward(loss / s.grad_accum)
        self.running += float(loss.detach())
        self.running_n += 1
        tokens = int(batch["attention_mask"].sum()) + int((batch["labels"] != -100).sum())
        self.state["examples_seen"] += len(idx) * world
        self.state["tokens_seen"] += tokens * world  # same-sized batches on every process: an estimate

    def _optimizer_step(self) -> None:
        """Clip the accumulated gradients, step the optimizer and the schedule."""
        if self.job.settings.max_grad_norm:
            clip_gradients(self.model, self.accelerator, self.job.settings.max_grad_norm, self.fsdp)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state["step"] += 1

    def _after_step(self, avg: float) -> bool:
        """Log the loss, evaluate and save when due; True when the epoch ends here (the last
        step, or early stopping)."""
        s, job, step = self.job.settings, self.job, self.state["step"]
        if step % 10 == 0 or step == self.steps:
            self.record({"step": step, "loss": round(avg, 6)})
            self.running, self.running_n = 0.0, 0
        if s.eval_every and step % s.eval_every == 0 and step < self.steps and self.evaluate():
            self.state["stopped_early"] = True
            console.print(f"[dim]{job.description}: stopping early at step {step}: no better "
                          f"{job.primary} in {s.patience} evaluation(s)[/]")
            return True
        if s.save_every and step % s.save_every == 0 and step < self.steps:
            self.save_checkpoint()
        return step >= self.steps

    def evaluate(self) -> bool:
        """Evaluate (rank 0), keep the best model; True when early stopping says stop (on every rank)."""
        evaluate = self.job.evaluate
        if evaluate is None:
            return False
        stop = self._keep_if_best(evaluate) if self.accelerator.is_main_process else False
        self.model.train()
        self.accelerator.wait_for_everyone()
        flag = torch.tensor([float(stop)], device=self.accelerator.device)
        if self.world > 1:  # rank 0 decided; every rank stops at the same step
            flag = self.accelerator.reduce(flag, reduction="sum")
        return bool(flag.item() > 0)

    def _keep_if_best(self, evaluate: Callable[[Any], dict[str, float]]) -> bool:
        """Score the model, save it to ``out_dir/best`` when it is the best yet; whether the
        patience has run out."""
        job, state = self.job, self.state
        scores = evaluate(self.accelerator.unwrap_model(self.model))
        self.record({"step": state["step"], "eval": scores})
        value = scores.get(job.primary or "", float("nan"))
        if state["best"] is None or value > state["best"].get(job.primary, float("-inf")):
            state["best"], state["best_step"], state["since_best"] = scores, state["step"], 0
            self._write_model(self.accelerator.unwrap_model(self.model), job.out_dir / "best", None)
        else:
            state["since_best"] += 1
        console.print(f"[dim]{job.description}: step {state['step']} {job.primary}={value:.4f}[/]")
        return job.settings.patience is not None and state["since_best"] >= job.settings.patience

    def record(self, entry: dict[str, Any]) -> None:
        self.state["history"].append(entry)
        if self.job.tracker is not None and self.accelerator.is_main_process:
            self.job.tracker.log(entry)

    def save_checkpoint(self) -> None:
        self.state["seconds"] = time.perf_counter() - self.start_time
        self.checkpoints.save(self.state)
        self._count_work()
        if self.accelerator.is_main_process:
            write_curves(self.job.out_dir / CURVES, self.state["history"])

    def _count_work(self) -> None:
        """What this invocation added, as far as a checkpoint keeps it, to the ledger."""
        if self.job.ledger is not None:
            state, base = self.state, self.base
            self.job.ledger.progress(steps=state["step"] - base["step"],
                                     examples=state["examples_seen"] - base["examples_seen"],
                                     tokens=state["tokens_seen"] - base["tokens_seen"])

    def save_to(self, path: Path) -> None:
        """``save_model`` on the trained model (gathered from every rank under FSDP)."""
        unwrapped = self.model if self.fsdp else self.accelerator.unwrap_model(self.model)
        state_dict = full_state_dict(self.model) if self.fsdp else None  # every rank takes part in the gather
        if self.accelerator.is_main_process:
            self._write_model(unwrapped, path, state_dict)
        self.accelerator.wait_for_everyone()

    def _write_model(self, module: Any, path: Path, state_dict: dict[str, Any] | None) -> None:
        """``save_model``, a failed write (a full disk) made one line that says what is kept."""
        previous = self.checkpoints.last if self.checkpoints.last.is_dir() else None
        try:
            self.job.save_model(module, path, state_dict)
        except WRITE_ERRORS as e:
            raise write_failure(failed_path(e, path), e, "the model", previous) from None

    def result(self) -> LoopResult:
        state = self.state
        return LoopResult(
            steps=state["step"], epochs=state["step"] / self.per_epoch,
            examples_seen=state["examples_seen"], tokens_seen=state["tokens_seen"], seconds=state["seconds"],
            best=state["best"], best_step=state["best_step"], history=state["history"],
            stopped_early=state["stopped_early"],
        )


class _Stop:
    """Which signal asked training to stop (empty: none yet)."""

    signal = ""


@contextlib.contextmanager
def _deferred_signals(enabled: bool) -> Any:
    """SIGINT and SIGTERM set ``stop.signal`` instead of interrupting mid-step; a second one
    interrupts at once. Only where signals can be caught: the main thread of a single process."""
    import signal
    import threading

    stop = _Stop()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(number: int, frame: Any) -> None:
        if stop.signal:  # asked twice: stop now, as Ctrl-C always did
            raise KeyboardInterrupt
        stop.signal = signal.Signals(number).name
        console.print(f"[yellow]{stop.signal}:[/] stopping after this step to save a checkpoint "
                      "(send it again to stop at once)")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _diverged(description: str, loss: torch.Tensor, step: int) -> TrainingError:
    # Not always the learning rate: a damaged cache (NaN log-probabilities) does it too.
    return TrainingError(
        f"{description}: the loss became {float(loss.detach())} at step {step}; either the "
        "learning rate is too high (lower --learning-rate) or the inputs hold non-finite values "
        "(e.g. a label cache with damaged log-probabilities: check it with `dora cache verify "
        "CACHE`); the last checkpoint is kept"
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
