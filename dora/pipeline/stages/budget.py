"""``dora budget``: what a budget buys each way, before spending it.

From a recorded distill run's measured device-hours (its ``run.json``, read by
``dora.pipeline.stages.report.RunRecord``), or from measured rates, each stage is scaled to the user's
labels and pool; the plans say how many labels the budget buys by annotating, what distilling
costs, and what is left for labels.

Example::

    dora budget --task fever --budget 500 --labels-owned 1000 --from runs/distill-1000 --gpu-hour-usd 2.49
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dora.checks import check_number
from dora.errors import ConfigError
from dora.pipeline.costs.pricing import Line, Prices, total
from dora.pipeline.stages.report import MAX_COUNT, MAX_DEVICE_HOURS, STAGES, RunRecord, rounded

MAX_BUDGET_USD = 1e12  # a trillion dollars: larger budgets are typos, and divisions stay finite

@dataclass(frozen=True, kw_only=True)
class Plan:
    name: str
    labels_bought: int
    lines: list[Line]
    fits: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"option": self.name, "labels_bought": self.labels_bought, "fits": self.fits, "note": self.note,
                "total_usd": rounded(total(self.lines)), "lines": [line.to_dict() for line in self.lines]}


@dataclass(frozen=True, kw_only=True)
class Rates:
    """Measured throughputs, when there is no recorded run to scale (e.g. from benchmarks/)."""

    device: str
    """Device kind the rates were measured on (priced like a recorded device name)."""
    finetune_hours: float
    """Device-hours to fine-tune the teacher on the labels owned."""
    label_rows_per_hour: float
    """Pool rows the teacher labels per device-hour."""
    student_rows_per_hour: float
    """Pool rows per device-hour of student training, at the planned number of epochs."""

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not self.device.strip():
            raise ConfigError(f"--device must name the device the rates were measured on, got {self.device!r}")
        check_number(self.finetune_hours, "--finetune-hours", low=0, low_open=True, high=MAX_DEVICE_HOURS)
        for name in ("label_rows_per_hour", "student_rows_per_hour"):  # divisors: never 0, NaN or infinite
            check_number(getattr(self, name), f"--{name.replace('_', '-')}", low=0, low_open=True, high=1e15)

    def costs(self, labels: int, pool_rows: int) -> dict[str, dict[str, Any]]:
        base = {"device": self.device, "device_count": 1}
        return {"teacher_finetune": base | {"device_hours": self.finetune_hours, "gold_labels": max(labels, 1)},
                "labeling": base | {"device_hours": pool_rows / self.label_rows_per_hour, "examples": pool_rows},
                "student_train": base | {"device_hours": pool_rows / self.student_rows_per_hour, "examples": pool_rows}}


def budget(*, budget_usd: float, labels_owned: int, prices: Prices, reference: Path | None = None,
           rates: Rates | None = None, pool_rows: int | None = None,
           pool_fractions: tuple[float, ...] = (1.0, 0.5, 0.25)) -> list[Plan]:
    """Options for spending ``budget_usd``: all on labels, or distilling with the rest on labels;
    each mixed option labels only a fraction of the pool. Compute comes from the measured
    device-hours of ``reference`` (a recorded distill run), scaled to ``labels_owned`` and the
    pool, or from measured ``rates``."""
    check_number(budget_usd, "--budget", low=0, low_open=True, high=MAX_BUDGET_USD, hint="give dollars to spend")
    _whole(labels_owned, "--labels-owned", low=0)
    if pool_rows is not None:
        _whole(pool_rows, "--pool-rows", low=1)
    if prices.annotation_usd is None:
        raise ConfigError(prices.annotation_source)
    if (reference is None) == (rates is None):
        raise ConfigError("give either --from RUN (a recorded distill run) or the measured rates "
                          "(--device, --finetune-hours, --label-rows-per-hour, --student-rows-per-hour)")
    if rates is not None:
        if pool_rows is None:
            raise ConfigError("--pool-rows is needed with measured rates")
        costs, basis = rates.costs(labels_owned, pool_rows), "measured rates"
    else:
        assert reference is not None
        costs, basis = RunRecord.load(reference).costs, str(reference)
        missing = [s for s in STAGES if s not in costs]
        if missing:
            raise ConfigError(f"{reference}: not a distill run with every stage recorded (missing {', '.join(missing)}); "
                              "give --from a run trained on a cache that dora teacher-label made")
    per_label = prices.annotation_usd
    plans = [_annotate(budget_usd, per_label, prices)]
    ft, lab, st = (costs[s] for s in STAGES)
    ref_labels = int(ft.get("gold_labels") or 0)
    ref_pool = max(int(lab.get("examples") or 1), 1)
    full_pool = pool_rows or ref_pool
    for fraction in pool_fractions:
        rows = max(1, int(full_pool * fraction))
        # Fine-tuning scales with the labels the teacher sees; labeling and the student with the pool.
        lines = [
            _scaled(prices, "teacher_finetune", ft, max(labels_owned, 1) / ref_labels, f"{labels_owned:,} labels, "
                    f"scaled from {ref_labels:,} in {basis}") if ref_labels else
            _scaled(prices, "teacher_finetune", ft, 1.0, f"as in {basis} (its label count was not recorded)"),
            _scaled(prices, "labeling", lab, rows / ref_pool, f"{rows:,} pool rows, scaled from {ref_pool:,} in {basis}"),
            _scaled(prices, "student_train", st, rows / ref_pool, f"{rows:,} pool rows, scaled from {ref_pool:,} in {basis}"),
        ]
        compute = total(lines)
        name = "distill" if fraction == 1.0 else f"mixed: distill {fraction:.0%} of the pool"
        if compute is None:
            plans.append(Plan(name=name, labels_bought=0, lines=lines, fits=False,
                              note="compute price missing: pass --gpu-hour-usd or --prices"))
            continue
        left = budget_usd - compute
        bought = _labels_for(left, per_label)
        lines.append(prices.labels(bought, "more gold labels with what is left"))
        # The labels bought beside distilling go where the teacher doubts most: the mixed strategy.
        choose = (f"choose those {bought:,} labels where the teacher doubts most: dora cache select CACHE --n "
                  f"{bought} --out queue.jsonl" if bought else "")
        plans.append(Plan(name=name, labels_bought=bought, lines=lines, fits=left >= 0,
                          note=choose if left >= 0 else f"needs {compute - budget_usd:,.2f} USD more than the budget"))
    return plans


def _labels_for(usd: float, per_label: float) -> int:
    """Whole labels ``usd`` buys at ``per_label`` each (0 when nothing is left, or labels are free)."""
    if per_label <= 0 or usd <= 0:
        return 0
    n = usd / per_label + 1e-9
    if not n <= MAX_COUNT:  # a price near zero: more labels than any float count holds exactly
        raise ConfigError(f"{usd:,.2f} USD buys more than {MAX_COUNT:,} labels at {per_label:g} USD each; "
                          "check --annotation-usd")
    return math.floor(n)


def _whole(value: Any, option: str, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_COUNT:
        raise ConfigError(f"{option} must be a whole number from {low} to {MAX_COUNT:,}, got {value!r}")


def _annotate(budget_usd: float, per_label: float, prices: Prices) -> Plan:
    bought = _labels_for(budget_usd, per_label)
    return Plan(name="annotate", labels_bought=bought, lines=[prices.labels(bought, "more gold labels")], fits=True)


def _scaled(prices: Prices, stage: str, cost: dict[str, Any], factor: float, how: str) -> Line:
    totals = {k: v for k, v in cost.items() if k != "entries"}  # scaled as a whole, priced at its device
    line = prices.compute(stage, totals | {"device_hours": float(cost.get("device_hours", 0.0)) * factor})
    return Line(what=f"{line.what}: {how}", quantity=line.quantity, unit=line.unit, price=line.price, usd=line.usd,
                source=line.source)
