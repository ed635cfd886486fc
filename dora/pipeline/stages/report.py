"""Distill or annotate, in dollars: ``dora report`` over recorded runs (``dora budget`` plans ahead of them).

A run directory of ``dora train-student`` holds ``run.json`` (strategy, gold labels, the cost
of every stage: teacher fine-tuning and labeling from the cache's manifest, student training)
and ``metrics.json`` (the task metric). ``report`` prices each run's labels and device-hours
(``dora.pipeline.costs.pricing``) and plots the metric against dollars spent, one line per strategy,
like the paper's figures; the data behind the plot goes to a CSV.

``dora.pipeline.stages.budget`` plans before spending, from the same records.

Example::

    dora report runs/annotate-* runs/distill-* --gpu-hour-usd 2.49 --out report/
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dora.errors import ConfigError, InputError
from dora.files import check_output, png_marked
from dora.pipeline.costs.pricing import Line, Prices, total
from dora.pipeline.train.tracking import CURVES
from dora.rundir import METRICS, RUN_RECORD, read_run

STAGES = ("teacher_finetune", "labeling", "student_train")
MAX_DEVICE_HOURS = 1e9  # a hundred thousand device-years: past it a record is damaged, not big
MAX_COUNT = 10**15  # labels, rows, devices: past it a count cannot be priced as a float


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
        run_file, metrics_file = path / RUN_RECORD, path / METRICS
        fix = "give run directories written by `dora train-student` (a run that has finished)"
        run, metrics = read_run(path, fix=fix)
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
    """A stage's cost record (``dora.pipeline.costs.ledger.summarise``): the fields pricing and planning read."""
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
           overwrite: bool = False, baseline: tuple[str, float] | None = None) -> ReportResult:
    """Price every run, write ``report.csv``, ``report.png`` (and ``curves.png`` when runs have curves);
    scores in ``metric_mode`` (strict: dora's definitions; paper: the paper's code's). ``baseline``
    (name, score), e.g. the majority class's, is drawn on the plot as a dashed line.

    ``out`` may hold an earlier report, which is replaced; any other file of those names is refused
    unless ``overwrite`` (dora never writes over a file it cannot tell it wrote)."""
    from dora.pipeline.tasks.metrics import METRIC_MODES

    if not runs:
        raise ConfigError("give at least one run directory: dora report RUN [RUN ...]")
    if metric_mode not in METRIC_MODES:
        raise ConfigError(f"--metric-mode must be {' or '.join(METRIC_MODES)}, got {metric_mode!r}")
    out = Path(out)
    inputs = [Path(r) / name for r in runs for name in (RUN_RECORD, METRICS, CURVES)]
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
            "gold_labels": r.gold_labels, "label_usd": rounded(label_usd),
            "device_hours": round(sum(line.quantity for line in compute_lines), 6),
            "compute_usd": rounded(total(compute_lines)), "total_usd": rounded(total(lines)),
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
    plot = _plot(rows, out / "report.png", baseline)
    curves_plot = _plot_curves(records, curves, out / "curves.png")
    return ReportResult(rows=rows, csv=csv_path, plot=plot, curves_plot=curves_plot)


PNG_MARKER = "dora report"
"""Written into every PNG the report draws (a tEXt chunk near the start): how a rerun knows its own."""


def _our_png(path: Path) -> bool:
    return png_marked(path, PNG_MARKER)


def _our_csv(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(64).startswith(b"run,strategy,task,metric,")


REPORT_FILES = {"report.csv": _our_csv, "report.png": _our_png, "curves.png": _our_png}
"""What ``report`` writes in its ``out``, each with the test that recognises an earlier one."""


def _text(value: str) -> str:
    """A run's own text as matplotlib shows it: a ``$`` would start a (possibly broken) formula."""
    return value.replace("$", r"\$")


def rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 6)  # a CPU minute at $0.10/h is $0.0017: cents hide it


def _plot(rows: list[dict[str, Any]], path: Path, baseline: tuple[str, float] | None = None) -> Path:
    """Score against dollars, one line per strategy through the mean of each budget's runs (seeds),
    with the runs themselves as faint points and their range as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    priced = all(r["total_usd"] is not None for r in rows)
    x_key = "total_usd" if priced else "label_usd"
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    styles = {"annotate": ("tab:blue", "o"), "distill": ("tab:orange", "s"), "mixed": ("tab:green", "^")}
    for strategy in sorted({r["strategy"] for r in rows}):
        scored = [(r["gold_labels"], r[x_key] or 0.0, r["score"]) for r in rows
                  if r["strategy"] == strategy and r["score"] is not None]
        if not scored:
            continue
        color, marker = styles.get(strategy, ("tab:gray", "x"))
        budgets = sorted({g for g, _, _ in scored})
        groups = [[(x, y) for g, x, y in scored if g == b] for b in budgets]
        xs = [sum(x for x, _ in grp) / len(grp) for grp in groups]
        ys = [sum(y for _, y in grp) / len(grp) for grp in groups]
        low = [y - min(v for _, v in grp) for y, grp in zip(ys, groups)]
        high = [max(v for _, v in grp) - y for y, grp in zip(ys, groups)]
        if any(len(grp) > 1 for grp in groups):
            ax.scatter([x for _, x, _ in scored], [y for _, _, y in scored], color=color, marker=marker, alpha=0.3,
                       s=14)
        label = _text(strategy) + (" (mean of seeds; bar: their range)" if any(len(grp) > 1 for grp in groups) else "")
        ax.errorbar(xs, ys, yerr=[low, high], marker=marker, color=color, label=label, linewidth=1.5, capsize=3)
    if baseline is not None:
        ax.axhline(baseline[1], color="tab:gray", linestyle="--", linewidth=1,
                   label=_text(f"{baseline[0]}: {baseline[1]:.3f}"))
    task, metric = rows[0]["task"], rows[0]["metric"]
    ax.set_xlabel("dollars spent (labels + compute)" if priced else "dollars spent on labels (compute unpriced: "
                  "pass --gpu-hour-usd)")
    ax.set_ylabel(_text(metric))
    ax.ticklabel_format(axis="x", useOffset=False, style="plain")  # dollars as dollars, not "+7.74e1"
    _honest_dollar_axis(ax, [r[x_key] or 0.0 for r in rows if r["score"] is not None])
    ax.set_title(_text(f"{task}: {metric} against budget"))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # no scored run: no legend (and no warning)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": PNG_MARKER})
    plt.close(fig)
    return path


Points = list[tuple[int, float]]


def _honest_dollar_axis(ax: Any, dollars: list[float]) -> None:
    """Never zoom the dollar axis into a fraction of a cent: runs whose costs differ by less than a
    tenth of the largest (labels dominate; cheap compute) are drawn at the same place, as they
    cost about the same, on an axis at least that wide, in cents."""
    if not dollars:
        return
    low, high = min(dollars), max(dollars)
    least = max(0.1 * abs(high), 0.01)
    if high - low < least:
        middle = (low + high) / 2
        ax.set_xlim(middle - least / 2 * 1.1, middle + least / 2 * 1.1)
        ax.xaxis.set_major_formatter("{x:,.2f}")


def _plot_curves(records: list[RunRecord], curves: list[tuple[RunRecord, Points, Points]], path: Path) -> Path | None:
    """Training loss and dev score against steps, one line per run with a curves.csv."""
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, eval_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for record, loss, evals in curves:
        name = record.path.name  # "distill-seed0", not "distill: distill-seed0"
        label = _text(name if record.strategy in name else f"{record.strategy}: {name}")
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
