"""Training curves: always a CSV in the run directory; also TensorBoard or Weights & Biases.

``--report-to tensorboard`` writes event files under ``<out>/tensorboard`` (``tensorboard
--logdir <out>/tensorboard``); ``--report-to wandb`` logs to a W&B run (``WANDB_MODE=offline``
works without a network), as the paper's runs did. ``curves.csv`` (step, loss, eval_<metric>)
is written either way, and ``dora report`` plots it.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from typing import Any

from dora.errors import ConfigError

CURVES = "curves.csv"


def check_report_to(report_to: str) -> None:
    """Fail at configuration time, not after training, when the tracker is not installed."""
    if report_to not in ("none", "tensorboard", "wandb"):
        raise ConfigError(f"--report-to must be none, tensorboard or wandb, got {report_to!r}")
    needed = {"tensorboard": "tensorboard", "wandb": "wandb"}.get(report_to)
    if needed and importlib.util.find_spec(needed) is None:
        raise ConfigError(f"--report-to {report_to} needs the {needed} package: `pip install {needed}` "
                          "(or `pip install 'dora-distill[tracking]'`), or use --report-to none")


class Tracker:
    """Receives each history entry of the training loop ({"step", "loss"} or {"step", "eval"})."""

    def __init__(self, report_to: str, out_dir: Path, name: str, config: dict[str, Any] | None = None) -> None:
        check_report_to(report_to)
        self.kind, self.out_dir = report_to, out_dir
        self._tb = self._wandb = None
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(out_dir / "tensorboard"))
        elif report_to == "wandb":
            import wandb

            self._wandb = wandb.init(project="dora", name=name, dir=str(out_dir), config=config or {}, reinit=True)

    def log(self, entry: dict[str, Any]) -> None:
        values = flat(entry)
        step = int(values.pop("step"))
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def flat(entry: dict[str, Any]) -> dict[str, float]:
    """{"step": 10, "eval": {"accuracy": 0.5}} -> {"step": 10, "eval_accuracy": 0.5}."""
    out: dict[str, float] = {}
    for key, value in entry.items():
        if isinstance(value, dict):
            out.update({f"{key}_{k}": float(v) for k, v in value.items() if isinstance(v, (int, float))})
        elif isinstance(value, (int, float)):
            out[key] = float(value) if key != "step" else int(value)
    return out


def write_curves(path: Path, history: list[dict[str, Any]]) -> None:
    """The loop's history as one CSV row per step (loss and eval metrics in columns)."""
    rows: dict[int, dict[str, float]] = {}
    for entry in history:
        values = flat(entry)
        rows.setdefault(int(values["step"]), {}).update(values)
    columns = ["step"] + sorted({k for r in rows.values() for k in r} - {"step"})
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for step in sorted(rows):
            writer.writerow(rows[step])
    tmp.replace(path)
