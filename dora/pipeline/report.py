"""Distill or annotate, in dollars: ``dora report`` over recorded runs, ``dora budget`` ahead of them.

A run directory of ``dora train-student`` holds ``run.json`` (strategy, gold labels, the cost
of every stage: teacher fine-tuning and labeling from the cache's manifest, student training)
and ``metrics.json`` (the task metric). ``report`` prices each run's labels and device-hours
(``dora.pipeline.pricing``) and plots the metric against dollars spent, one line per strategy,
like the paper's figures; the data behind the plot goes to a CSV.

``budget`` plans before spending: from a recorded distill run's measured device-hours it
scales each stage to the user's labels and pool, and prints what the budget buys each way.

Example::

    dora report runs/annotate-* runs/distill-* --gpu-hour-usd 2.49 --out report/
    dora budget --task fever --budget 500 --labels-owned 1000 --from runs/distill-1000 --gpu-hour-usd 2.49
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dora.errors import ConfigError, InputError
from dora.pipeline.pricing import Line, Prices, total
from dora.pipeline.tracking import CURVES

STAGES = ("teacher_finetune", "labeling", "student_train")


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """What one ``dora train-student`` run cost and scored."""

    path: Path
    task: str
    strategy: str
    metric: str
    score: float | None
    gold_labels: int
    costs: dict[str, dict[str, Any]]
    notes: tuple[str, ...] = ()
    metric_mode: str = "strict"

    @classmethod
    def load(cls, path: Path, metric_mode: str = "strict") -> RunRecord:
        """The run in ``path``; its score is the test score in ``metric_mode`` (the dev score, with a
        note, for a run trained without --test)."""
        run_file, metrics_file = path / "run.json", path / "metrics.json"
        for f in (run_file, metrics_file):
            if not f.is_file():
                raise InputError(f, "not found", fix="give run directories written by `dora train-student`")
        try:
            run, metrics = json.loads(run_file.read_text()), json.loads(metrics_file.read_text())
        except json.JSONDecodeError as e:
            raise InputError(run_file, f"not valid JSON ({e.msg})", fix="rerun the stage that wrote it") from None
        upstream = run.get("upstream_costs") or {}
        costs = {k: v for k, v in upstream.items() if k in STAGES} | {"student_train": run["cost"]}
        notes = []
        teacher_labels = upstream.get("teacher_finetune", {}).get("gold_labels")
        if run.get("cache") and "teacher_finetune" not in upstream:
            notes.append("the cache's teacher was not fine-tuned by dora: its labels and compute are not counted")
        elif run.get("cache") and teacher_labels is None:
            notes.append("the cache predates gold-label counts: the teacher's labels are not counted")
        gold = max(int(run.get("gold_examples", 0)), int(teacher_labels or 0))  # the same labels, bought once
        primary = metrics.get("primary")
        score, note = _score(metrics, primary, metric_mode)
        if note:
            notes.append(note)
        return cls(path=path, task=metrics.get("task", "?"), strategy=run.get("strategy", "?"), metric=primary or "?",
                   score=score, gold_labels=gold, costs=costs, notes=tuple(notes), metric_mode=metric_mode)

    def lines(self, prices: Prices) -> list[Line]:
        return [prices.labels(self.gold_labels)] + [prices.compute(stage, self.costs[stage])
                                                    for stage in STAGES if stage in self.costs]


def _score(metrics: dict[str, Any], primary: str | None, mode: str) -> tuple[float | None, str]:
    """(the score to plot, a note when it is not an unbiased test score)."""
    if not primary:
        return None, ""
    for split, note in (("test", ""), ("dev", "scored on --dev, which also picked the checkpoint (no --test)")):
        scores = metrics.get(split)
        if scores:
            value = (scores.get(mode) or {}).get(primary)
            return value, note
    if metrics.get("eval"):  # a run recorded before metric modes and --dev/--test
        return metrics["eval"].get(primary), "recorded before metric modes: its --eval score (dora's old metric)"
    return None, "no --dev or --test score"


@dataclass(frozen=True, kw_only=True)
class ReportResult:
    rows: list[dict[str, Any]]
    csv: Path
    plot: Path
    curves_plot: Path | None


def report(runs: list[Path], prices_for: Any, out: Path, *, metric_mode: str = "strict") -> ReportResult:
    """Price every run, write ``report.csv``, ``report.png`` (and ``curves.png`` when runs have curves);
    scores in ``metric_mode`` (strict: dora's definitions; paper: the paper's code's)."""
    from dora.pipeline.metrics import METRIC_MODES

    if not runs:
        raise ConfigError("give at least one run directory: dora report RUN [RUN ...]")
    if metric_mode not in METRIC_MODES:
        raise ConfigError(f"--metric-mode must be {' or '.join(METRIC_MODES)}, got {metric_mode!r}")
    records = [RunRecord.load(Path(r), metric_mode) for r in runs]
    tasks = {r.task for r in records}
    if len(tasks) > 1:
        raise ConfigError(f"the runs are of different tasks ({', '.join(sorted(tasks))}); report one task at a time")
    prices: Prices = prices_for(records[0].task)
    rows = []
    for r in records:
        lines = r.lines(prices)
        label_usd = lines[0].usd
        compute_lines = lines[1:]
        rows.append({
            "run": str(r.path), "strategy": r.strategy, "task": r.task, "metric": r.metric,
            "metric_mode": r.metric_mode, "score": r.score,
            "gold_labels": r.gold_labels, "label_usd": _round(label_usd),
            "device_hours": round(sum(line.quantity for line in compute_lines), 6),
            "compute_usd": _round(total(compute_lines)), "total_usd": _round(total(lines)),
            **{f"{stage}_device_hours": r.costs[stage].get("device_hours") for stage in STAGES if stage in r.costs},
            "prices": "; ".join(sorted({line.source for line in lines})), "notes": "; ".join(r.notes),
        })
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "report.csv"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    plot = _plot(rows, out / "report.png")
    curves = _plot_curves(records, out / "curves.png")
    return ReportResult(rows=rows, csv=csv_path, plot=plot, curves_plot=curves)


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _plot(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    priced = all(r["total_usd"] is not None for r in rows)
    x_key = "total_usd" if priced else "label_usd"
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    styles = {"annotate": ("tab:blue", "o"), "distill": ("tab:orange", "s"), "mixed": ("tab:green", "^")}
    for strategy in sorted({r["strategy"] for r in rows}):
        points = sorted((r[x_key] or 0.0, r["score"]) for r in rows if r["strategy"] == strategy and r["score"] is not None)
        if not points:
            continue
        color, marker = styles.get(strategy, ("tab:gray", "x"))
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, color=color, label=strategy, linewidth=1.5)
    task, metric = rows[0]["task"], rows[0]["metric"]
    ax.set_xlabel("dollars spent (labels + compute)" if priced else "dollars spent on labels (compute unpriced: "
                  "pass --gpu-hour-usd)")
    ax.set_ylabel(metric)
    ax.set_title(f"{task}: {metric} against budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_curves(records: list[RunRecord], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [(r, r.path / CURVES) for r in records if (r.path / CURVES).is_file()]
    if not curves:
        return None
    fig, (loss_ax, eval_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for record, file in curves:
        with open(file, newline="") as f:
            rows = list(csv.DictReader(f))
        label = f"{record.strategy}: {record.path.name}"
        loss = [(int(r["step"]), float(r["loss"])) for r in rows if r.get("loss") and float(r["loss"]) > 0]
        if loss:
            loss_ax.plot(*zip(*loss), label=label)
        key = next((k for k in (f"eval_{record.metric_mode}_{record.metric}", f"eval_{record.metric}")
                    if rows and k in rows[0]), "")
        evals = [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]
        if evals:
            eval_ax.plot(*zip(*evals), marker="o", label=label)
    loss_ax.set(xlabel="step", ylabel="training loss (log scale)", title="training loss (KD and CE differ in scale)")
    loss_ax.set_yscale("log")
    eval_ax.set(xlabel="step", ylabel=records[0].metric, title=f"dev {records[0].metric} ({records[0].metric_mode})")
    for ax in (loss_ax, eval_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# --- planning ---------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Plan:
    name: str
    labels_bought: int
    lines: list[Line]
    fits: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"option": self.name, "labels_bought": self.labels_bought, "fits": self.fits, "note": self.note,
                "total_usd": _round(total(self.lines)), "lines": [line.to_dict() for line in self.lines]}


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

    def costs(self, labels: int, pool_rows: int) -> dict[str, dict[str, Any]]:
        for name in ("finetune_hours", "label_rows_per_hour", "student_rows_per_hour"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
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
    if budget_usd <= 0:
        raise ConfigError(f"--budget must be positive, got {budget_usd}")
    if labels_owned < 0:
        raise ConfigError(f"--labels-owned must be >= 0, got {labels_owned}")
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
        bought = max(0, math.floor(left / per_label + 1e-9)) if per_label > 0 else 0
        lines.append(prices.labels(bought, "more gold labels with what is left"))
        plans.append(Plan(name=name, labels_bought=bought, lines=lines, fits=left >= 0,
                          note="" if left >= 0 else f"needs {compute - budget_usd:,.2f} USD more than the budget"))
    return plans


def _annotate(budget_usd: float, per_label: float, prices: Prices) -> Plan:
    bought = math.floor(budget_usd / per_label + 1e-9) if per_label > 0 else 0
    return Plan(name="annotate", labels_bought=bought, lines=[prices.labels(bought, "more gold labels")], fits=True)


def _scaled(prices: Prices, stage: str, cost: dict[str, Any], factor: float, how: str) -> Line:
    totals = {k: v for k, v in cost.items() if k != "entries"}  # scaled as a whole, priced at its device
    line = prices.compute(stage, totals | {"device_hours": float(cost.get("device_hours", 0.0)) * factor})
    return Line(what=f"{line.what}: {how}", quantity=line.quantity, unit=line.unit, price=line.price, usd=line.usd,
                source=line.source)
