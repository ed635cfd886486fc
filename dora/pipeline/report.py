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
from dora.pipeline.config import check_number, check_output, read_object
from dora.pipeline.pricing import Line, Prices, total
from dora.pipeline.tracking import CURVES

STAGES = ("teacher_finetune", "labeling", "student_train")
MAX_DEVICE_HOURS = 1e9  # a hundred thousand device-years: past it a record is damaged, not big
MAX_COUNT = 10**15  # labels, rows, devices: past it a count cannot be priced as a float
MAX_BUDGET_USD = 1e12  # a trillion dollars: larger budgets are typos, and divisions stay finite


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
        note, for a run trained without --test). Both records are validated field by field: a run
        directory may come from anyone, and a wrong type must be an error naming the file and field."""
        path = Path(path)
        if not path.is_dir():
            raise InputError(path, "not found" if not path.exists() else "not a directory",
                             fix="give run directories written by `dora train-student`")
        run_file, metrics_file = path / "run.json", path / "metrics.json"
        fix = "give run directories written by `dora train-student` (a run that has finished)"
        run = read_object(run_file, expected="a run record (a JSON object)", fix=fix)
        metrics = read_object(metrics_file, expected="a metrics record (a JSON object)", fix=fix)
        upstream = _field(run, "upstream_costs", dict, run_file, default={})
        costs = {stage: _cost(upstream[stage], run_file, f"upstream_costs.{stage}")
                 for stage in STAGES if stage in upstream and stage != "student_train"}
        if "cost" not in run:
            raise InputError(run_file, "no field 'cost' (the student's compute)", fix=fix)
        costs["student_train"] = _cost(run["cost"], run_file, "cost")
        notes = []
        teacher_labels = _count(costs.get("teacher_finetune", {}).get("gold_labels"), run_file,
                                "upstream_costs.teacher_finetune.gold_labels")
        cache = _field(run, "cache", str, run_file, default=None)
        if cache and "teacher_finetune" not in costs:
            notes.append("the cache's teacher was not fine-tuned by dora: its labels and compute are not counted")
        elif cache and teacher_labels is None:
            notes.append("the cache predates gold-label counts: the teacher's labels are not counted")
        gold_examples = _count(run.get("gold_examples"), run_file, "gold_examples") or 0
        gold = max(gold_examples, teacher_labels or 0)  # the same labels, bought once
        primary = _field(metrics, "primary", str, metrics_file, default=None)
        task = _field(metrics, "task", str, metrics_file, default="?")
        strategy = _field(run, "strategy", str, run_file, default="?")
        score, note = _score(metrics, primary, metric_mode, metrics_file)
        if note:
            notes.append(note)
        return cls(path=path, task=task, strategy=strategy, metric=primary or "?",
                   score=score, gold_labels=gold, costs=costs, notes=tuple(notes), metric_mode=metric_mode)

    def lines(self, prices: Prices) -> list[Line]:
        return [prices.labels(self.gold_labels)] + [prices.compute(stage, self.costs[stage])
                                                    for stage in STAGES if stage in self.costs]


def _score(metrics: dict[str, Any], primary: str | None, mode: str, file: Path) -> tuple[float | None, str]:
    """(the score to plot, a note when it is not an unbiased test score)."""
    if not primary:
        return None, ""
    for split, note in (("test", ""), ("dev", "scored on --dev, which also picked the checkpoint (no --test)")):
        scores = _field(metrics, split, dict, file, default=None)
        if scores:
            by_metric = _field(scores, mode, dict, file, default={}, prefix=f"{split}.")
            return _score_value(by_metric.get(primary), file, f"{split}.{mode}.{primary}"), note
    old = _field(metrics, "eval", dict, file, default=None)
    if old:  # a run recorded before metric modes and --dev/--test
        return (_score_value(old.get(primary), file, f"eval.{primary}"),
                "recorded before metric modes: its --eval score (dora's old metric)")
    return None, "no --dev or --test score"


def _field(record: dict[str, Any], name: str, kind: type, file: Path, *, default: Any, prefix: str = "") -> Any:
    """``record[name]`` when it is a ``kind`` (``default`` when absent or null), else an InputError."""
    value = record.get(name)
    if value is None:
        return default
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = {dict: "an object", str: "a string", list: "an array"}
        raise InputError(file, f"field {prefix + name!r} must be {names.get(kind, kind.__name__)}, "
                         f"got {type(value).__name__} {_short(value)}", fix="rerun the stage that wrote it")
    return value


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(value: Any, file: Path, name: str, *, high: float = MAX_DEVICE_HOURS) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
        raise InputError(file, f"field {name!r} must be a number from 0 to {high:g}, got {_short(value)}",
                         fix="rerun the stage that wrote it")
    return float(value)


def _count(value: Any, file: Path, name: str) -> int | None:
    """A non-negative integer field, or None when absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise InputError(file, f"field {name!r} must be a whole number from 0 to {MAX_COUNT:,}, got {_short(value)}",
                         fix="rerun the stage that wrote it")
    return value


def _cost(value: Any, file: Path, name: str) -> dict[str, Any]:
    """A stage's cost record (``dora.pipeline.costs.summarise``): the fields pricing and planning read."""
    if not isinstance(value, dict):
        raise InputError(file, f"field {name!r} must be a cost record (an object with device_hours), got "
                         f"{type(value).__name__} {_short(value)}", fix="rerun the stage that wrote it")
    _number(value.get("device_hours"), file, f"{name}.device_hours")
    _field(value, "device", str, file, default=None, prefix=f"{name}.")
    for key in ("device_count", "examples", "gold_labels"):
        _count(value.get(key), file, f"{name}.{key}")
    entries = _field(value, "entries", list, file, default=[], prefix=f"{name}.")
    for i, entry in enumerate(entries):
        where = f"{name}.entries[{i}]"
        if not isinstance(entry, dict):
            raise InputError(file, f"field {where!r} must be an object, got {_short(entry)}",
                             fix="rerun the stage that wrote it")
        _number(entry.get("device_hours", 0.0), file, f"{where}.device_hours")
        _field(entry, "device", str, file, default=None, prefix=f"{where}.")
        _count(entry.get("device_count"), file, f"{where}.device_count")
    return value


def _score_value(value: Any, file: Path, name: str) -> float | None:
    """A recorded score: a number, or None (absent; NaN, which a metric of no examples may give)."""
    if value is None or isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(file, f"field {name!r} must be a number, got {_short(value)}", fix="rerun the stage that wrote it")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class ReportResult:
    rows: list[dict[str, Any]]
    csv: Path
    plot: Path
    curves_plot: Path | None


def report(runs: list[Path], prices_for: Any, out: Path, *, metric_mode: str = "strict",
           overwrite: bool = False) -> ReportResult:
    """Price every run, write ``report.csv``, ``report.png`` (and ``curves.png`` when runs have curves);
    scores in ``metric_mode`` (strict: dora's definitions; paper: the paper's code's).

    ``out`` may hold an earlier report, which is replaced; any other file of those names is refused
    unless ``overwrite`` (dora never writes over a file it cannot tell it wrote)."""
    from dora.pipeline.metrics import METRIC_MODES

    if not runs:
        raise ConfigError("give at least one run directory: dora report RUN [RUN ...]")
    if metric_mode not in METRIC_MODES:
        raise ConfigError(f"--metric-mode must be {' or '.join(METRIC_MODES)}, got {metric_mode!r}")
    out = Path(out)
    inputs = [Path(r) / name for r in runs for name in ("run.json", "metrics.json", CURVES)]
    for name, ours in REPORT_FILES.items():
        check_output(out / name, option="--out", inputs=inputs, ours=ours, overwrite=overwrite)
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
    # Every input is read and checked before the first file is written: no half-written report.
    curves = [(r, *_read_curves(r.path / CURVES, (f"eval_{r.metric_mode}_{r.metric}", f"eval_{r.metric}")))
              for r in records if (r.path / CURVES).is_file()]
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "report.csv"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    plot = _plot(rows, out / "report.png")
    curves_plot = _plot_curves(records, curves, out / "curves.png")
    return ReportResult(rows=rows, csv=csv_path, plot=plot, curves_plot=curves_plot)


PNG_MARKER = "dora report"
"""Written into every PNG the report draws (a tEXt chunk near the start): how a rerun knows its own."""


def _our_png(path: Path) -> bool:
    with open(path, "rb") as f:
        return PNG_MARKER.encode() in f.read(4096)


def _our_csv(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(64).startswith(b"run,strategy,task,metric,")


REPORT_FILES = {"report.csv": _our_csv, "report.png": _our_png, "curves.png": _our_png}
"""What ``report`` writes in its ``out``, each with the test that recognises an earlier one."""


def _text(value: str) -> str:
    """A run's own text as matplotlib shows it: a ``$`` would start a (possibly broken) formula."""
    return value.replace("$", r"\$")


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
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, color=color, label=_text(strategy),
                linewidth=1.5)
    task, metric = rows[0]["task"], rows[0]["metric"]
    ax.set_xlabel("dollars spent (labels + compute)" if priced else "dollars spent on labels (compute unpriced: "
                  "pass --gpu-hour-usd)")
    ax.set_ylabel(_text(metric))
    ax.set_title(_text(f"{task}: {metric} against budget"))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # no scored run: no legend (and no warning)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": PNG_MARKER})
    plt.close(fig)
    return path


Points = list[tuple[int, float]]


def _plot_curves(records: list[RunRecord], curves: list[tuple[RunRecord, Points, Points]], path: Path) -> Path | None:
    """Training loss and dev score against steps, one line per run with a curves.csv."""
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, eval_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for record, loss, evals in curves:
        label = _text(f"{record.strategy}: {record.path.name}")
        if loss:
            loss_ax.plot(*zip(*loss), label=label)
        if evals:
            eval_ax.plot(*zip(*evals), marker="o", label=label)
    loss_ax.set(xlabel="step", ylabel="training loss (log scale)", title="training loss (KD and CE differ in scale)")
    loss_ax.set_yscale("log")
    metric = _text(records[0].metric)
    eval_ax.set(xlabel="step", ylabel=metric, title=f"dev {metric} ({records[0].metric_mode})")
    for ax in (loss_ax, eval_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": PNG_MARKER})
    plt.close(fig)
    return path


def _read_curves(file: Path, eval_keys: tuple[str, ...]) -> tuple[Points, Points]:
    """(step, loss) with a positive loss and (step, score) for the first of ``eval_keys`` the file has,
    from a run's curves.csv; a malformed file is an InputError naming its line."""
    fix = "dora train-student writes this file; rerun it, or delete the file to report without curves"
    loss: list[tuple[int, float]] = []
    evals: list[tuple[int, float]] = []
    try:
        with open(file, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            key = next((k for k in eval_keys if k in (reader.fieldnames or [])), "")
            if "step" not in (reader.fieldnames or []):
                raise InputError(file, "no 'step' column", line=1, fix=fix)
            for row in reader:
                try:
                    step = int(row["step"] or "")
                    value = float(row["loss"]) if row.get("loss") else None
                    score = float(row[key]) if key and row.get(key) else None
                except (TypeError, ValueError):
                    raise InputError(file, "a step, loss or score that is not a number", line=reader.line_num,
                                     fix=fix) from None
                if not 0 <= step <= MAX_COUNT:
                    raise InputError(file, f"step {step} is out of range", line=reader.line_num, fix=fix)
                if value is not None and math.isfinite(value) and value > 0:
                    loss.append((step, value))
                if score is not None and math.isfinite(score):
                    evals.append((step, score))
    except UnicodeDecodeError:
        raise InputError(file, "not UTF-8", fix=fix) from None
    except csv.Error as e:
        raise InputError(file, f"invalid CSV ({e})", fix=fix) from None
    return loss, evals


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
        plans.append(Plan(name=name, labels_bought=bought, lines=lines, fits=left >= 0,
                          note="" if left >= 0 else f"needs {compute - budget_usd:,.2f} USD more than the budget"))
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
