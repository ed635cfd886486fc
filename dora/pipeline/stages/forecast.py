"""``dora forecast``: at my budget, which strategy gives the better model, by how much, and how sure?

From measured runs (``dora sweep`` writes them; any ``dora train-student`` runs will do), each
strategy's points (dollars spent, score) are fitted with the inverse power law that learning
curves follow, ``score = a - b * dollars ** -c`` (b >= 0: more money never predicts a worse
model). The fit is a least-squares line in (a, b) for each c on a grid, so it has no starting
point to get wrong and never fails to converge. Intervals come from a bootstrap: the points are
refitted to the fit plus resampled residuals (a residual bootstrap, scaled for the three fitted
parameters; over synthetic curves its 90% intervals cover the truth 79-87% of the time, see
``tests/test_forecast.py``), so more points than three are needed for an interval. The forecast predicts each strategy at ``--budget``, the difference with its interval,
the smallest budget where the curves cross (from the cheapest run to the extrapolation limit), and
a backtest: fit without the largest label budget (all its seeds), predict it, and compare with
what was measured there.

It refuses to extrapolate past ``max_extrapolation`` times any strategy's largest measured budget
(or below its smallest divided by it) unless asked: a power law fitted on pilot runs says little
about a budget ten times larger.

Example::

    dora forecast sweep/ --budget 500 --gpu-hour-usd 2.49 --out forecast/
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dora.errors import ConfigError
from dora.files import check_output, png_marked, starts_like_json_object, write_atomic
from dora.pipeline.costs.pricing import Prices, total
from dora.pipeline.stages.config import ForecastConfig
from dora.rundir import RUN_RECORD

EXPONENTS = np.geomspace(0.02, 4.0, 240)
"""The c grid: from almost flat (0.02) to steep (4)."""
PNG_MARKER = "dora forecast"
FILES = {"forecast.json": lambda p: starts_like_json_object(p, ("strategies", "budget_usd")),
         "forecast.png": lambda p: png_marked(p, PNG_MARKER)}
"""What forecast writes into --out, and how a rerun recognises its own copy of each."""


@dataclass(frozen=True)
class Curve:
    """``score = a - b * dollars ** -c``."""

    a: float
    b: float
    c: float

    def __call__(self, x: Any) -> Any:
        return self.a - self.b * np.power(np.asarray(x, dtype=np.float64), -self.c)


def fit_curve(x: Sequence[float], y: Sequence[float]) -> Curve:
    """The least-squares inverse power law through (x, y); needs two distinct positive x."""
    xs, ys = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if xs.shape != ys.shape or len(np.unique(xs)) < 2 or (xs <= 0).any() or not np.isfinite(ys).all():
        raise ConfigError("a learning curve needs points at two or more different positive budgets")
    # For each c the model is a line in f = x^-c: closed-form least squares for every c at once.
    f = xs[None, :] ** -EXPONENTS[:, None]
    fc, yc = f - f.mean(1, keepdims=True), ys - ys.mean()
    b = -(fc * yc).sum(1) / (fc * fc).sum(1)
    b = np.where(b < 0, 0.0, b)  # the data fall with money: the best non-decreasing curve is flat
    a = ys.mean() + b * f.mean(1)
    sse = ((a[:, None] - b[:, None] * f - ys) ** 2).sum(1)
    i = int(np.argmin(sse))
    return Curve(float(a[i]), float(b[i]), float(EXPONENTS[i]))


def bootstrap(x: Sequence[float], y: Sequence[float], *, samples: int = 400, seed: int = 0) -> list[Curve]:
    """Curves refitted on the fit plus resampled residuals, each scaled by sqrt(n / (n - 3)) for
    the three fitted parameters (a residual bootstrap: it works with one run per budget as well as
    with seeds). Empty with three points or fewer: they fit exactly and say nothing of the noise."""
    xs, ys = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(xs) <= 3:
        return []
    rng = np.random.default_rng(seed)
    fit = fit_curve(xs, ys)
    fitted = fit(xs)
    residuals = (ys - fitted) * math.sqrt(len(xs) / (len(xs) - 3))
    return [fit_curve(xs, fitted + rng.choice(residuals, size=len(xs))) for _ in range(samples)]


@dataclass(frozen=True, kw_only=True)
class Strategy:
    """One strategy's measured points and fitted curve."""

    name: str
    dollars: list[float]
    scores: list[float]
    runs: list[str]
    labels: list[int]
    """Each run's gold label count: what a budget is (seeds of one budget differ in dollars by
    their measured compute, so dollars alone would split them)."""
    curve: Curve
    curves: list[Curve] = field(repr=False)

    def predict(self, budget: float, level: float) -> tuple[float, float | None, float | None]:
        """(prediction, low, high) at ``budget``: the fit and the bootstrap's central ``level``
        interval (None without one: three runs or fewer)."""
        if not self.curves:
            return float(self.curve(budget)), None, None
        draws = np.array([c(budget) for c in self.curves])
        q = (1 - level) / 2
        return float(self.curve(budget)), float(np.quantile(draws, q)), float(np.quantile(draws, 1 - q))


def run_directories(paths: Sequence[Path]) -> list[Path]:
    """The run directories among ``paths``: each itself (it holds run.json) or, for a sweep or any
    other directory, the run directories directly inside it, sorted."""
    found: list[Path] = []
    for p in paths:
        if (p / RUN_RECORD).is_file():
            found.append(p)
        elif p.is_dir():
            inner = sorted(d for d in p.iterdir() if d.is_dir() and not d.is_symlink() and (d / RUN_RECORD).is_file())
            if not inner:
                raise ConfigError(f"{p}: holds no run directories (none with run.json); give `dora sweep` or "
                                  "`dora train-student` output")
            found += inner
        else:
            raise ConfigError(f"{p}: not found; give run directories or a sweep directory")
    return found


def strategies(config: ForecastConfig) -> tuple[dict[str, Strategy], str, str]:
    """(the fitted strategies by name, the task, the metric) from the runs; every run priced."""
    from dora.pipeline.stages.report import RunRecord

    records = [RunRecord.load(p) for p in run_directories(config.runs)]
    tasks, metrics = {r.task for r in records}, {r.metric for r in records}
    if len(tasks) > 1 or len(metrics) > 1:
        raise ConfigError(f"the runs are of different tasks or metrics ({', '.join(sorted(tasks | metrics))}); "
                          "forecast one task at a time")
    prices = Prices.resolve(records[0].task, gpu_hour_usd=config.gpu_hour_usd, annotation_usd=config.annotation_usd,
                            prices_file=config.prices_file)
    points: dict[str, list[tuple[float, float, str, int]]] = {}
    for r in records:
        lines = r.lines(prices)
        usd = total(lines)
        if usd is None:
            missing = "; ".join(line.source for line in lines if line.usd is None)
            raise ConfigError(f"{r.path}: a price is missing ({missing}); give --gpu-hour-usd or --prices for compute, "
                              "--annotation-usd for labels")
        if r.score is None:
            raise ConfigError(f"{r.path}: has no score (it ran without --test or --dev); rerun it with --test")
        points.setdefault(r.strategy, []).append((usd, r.score, str(r.path), r.gold_labels))
    fitted = {}
    for name, pts in sorted(points.items()):
        xs, ys, budgets = [p[0] for p in pts], [p[1] for p in pts], {p[3] for p in pts}
        if len(budgets) < 2:
            raise ConfigError(f"strategy {name}: runs at {len(budgets)} label budget(s); a learning curve needs two or "
                              "more (dora sweep --budgets 50,100,200)")
        fitted[name] = Strategy(name=name, dollars=xs, scores=ys, runs=[p[2] for p in pts], labels=[p[3] for p in pts],
                                curve=fit_curve(xs, ys),
                                curves=bootstrap(xs, ys, samples=config.samples, seed=config.seed))
    return fitted, records[0].task, records[0].metric


def backtest(s: Strategy) -> dict[str, Any] | None:
    """Fit without the largest label budget (all its seeds), predict it: the error a forecast of one
    budget step has. None with fewer than three budgets."""
    budgets = sorted(set(s.labels))
    if len(budgets) < 3:
        return None
    kept = [i for i, n in enumerate(s.labels) if n < budgets[-1]]
    held = [i for i, n in enumerate(s.labels) if n == budgets[-1]]
    curve = fit_curve([s.dollars[i] for i in kept], [s.scores[i] for i in kept])
    at = float(np.mean([s.dollars[i] for i in held]))
    measured = float(np.mean([s.scores[i] for i in held]))
    predicted = float(curve(at))
    return {"fitted_up_to_labels": budgets[-2], "fitted_up_to_usd": max(s.dollars[i] for i in kept),
            "predicted_labels": budgets[-1], "predicted_at_usd": at, "predicted": predicted, "measured": measured,
            "error": predicted - measured}


def crossing(a: Strategy, b: Strategy, low: float, high: float) -> float | None:
    """The smallest budget in [low, high] where the two fitted curves meet, if they do."""
    grid = np.geomspace(low, high, 2000)
    d = a.curve(grid) - b.curve(grid)
    meets = np.flatnonzero(np.sign(d[:-1]) * np.sign(d[1:]) <= 0)  # a sign change, or an exact zero
    if not len(meets):
        return None
    i = int(meets[0])
    x0, x1, d0, d1 = grid[i], grid[i + 1], d[i], d[i + 1]
    return float(x0) if d0 == d1 else float(x0 + (x1 - x0) * d0 / (d0 - d1))


def forecast(config: ForecastConfig) -> dict[str, Any]:
    """Fit, predict at the budget, backtest, write forecast.json and forecast.png; the result."""
    out = config.out
    for name, ours in FILES.items():
        check_output(out / name, option="--out", inputs=[], ours=ours, overwrite=config.overwrite)
    fitted, task, metric = strategies(config)
    measured = [x for s in fitted.values() for x in s.dollars]
    low, high = min(measured), max(measured)
    f = config.max_extrapolation
    beyond = [(s.name, min(s.dollars), max(s.dollars)) for s in fitted.values()
              if not min(s.dollars) / f <= config.budget <= max(s.dollars) * f]  # each strategy's own range
    outside = bool(beyond)
    if outside and not config.extrapolate:
        name, lo, hi = beyond[0]
        raise ConfigError(f"--budget {config.budget:g}: outside {lo / f:.4g} to {hi * f:.4g} dollars for {name} "
                          f"({f:g}x its measured range, {lo:.4g} to {hi:.4g}); a curve fitted on these points says "
                          "little there. Sweep budgets nearer yours, or pass --extrapolate to forecast anyway")
    level = config.level
    predictions = {}
    for name, s in fitted.items():
        mid, lo, hi = s.predict(config.budget, level)
        predictions[name] = {"predicted": mid, "low": lo, "high": hi, "curve": asdict(s.curve),
                             "points": [{"usd": x, "score": y, "run": r} for x, y, r in zip(s.dollars, s.scores, s.runs)],
                             "backtest": backtest(s)}
    result: dict[str, Any] = {"task": task, "metric": metric, "budget_usd": config.budget, "level": level,
                              "extrapolated": outside, "measured_usd": [low, high], "strategies": predictions}
    if "distill" in fitted and "annotate" in fitted:
        d, a = fitted["distill"], fitted["annotate"]
        diffs = np.array([cd(config.budget) - ca(config.budget) for cd, ca in zip(d.curves, a.curves)])
        q = (1 - level) / 2
        gap = float(d.curve(config.budget) - a.curve(config.budget))
        gap_lo, gap_hi = (float(np.quantile(diffs, q)), float(np.quantile(diffs, 1 - q))) if len(diffs) else (None, None)
        even = crossing(d, a, low, high * config.max_extrapolation)
        winner = "distill" if gap > 0 else "annotate"
        sure = gap_lo is not None and gap_hi is not None and (gap_lo > 0 or gap_hi < 0)
        result["difference"] = {"distill_minus_annotate": gap, "low": gap_lo, "high": gap_hi, "sure": sure}
        result["break_even_usd"] = even
        if gap_lo is None or gap_hi is None:
            doubt = "no interval: each strategy needs more than three runs (more budgets or seeds)"
        elif sure:
            doubt = f"{level:.0%} interval of distill minus annotate {gap_lo:+.3f} to {gap_hi:+.3f}, which excludes zero"
        else:
            doubt = (f"{level:.0%} interval of distill minus annotate {gap_lo:+.3f} to {gap_hi:+.3f}, which includes "
                     "zero: too close to call from these runs")
        result["recommendation"] = (
            f"at ${config.budget:,.2f}, {winner} is predicted to score {abs(gap):.3f} {metric} higher ({doubt})"
            + (f". The curves cross at about ${even:,.2f}" if even is not None else ". The curves do not cross between "
               f"${low:,.2f} and ${high * config.max_extrapolation:,.2f}")
            + (". Extrapolated beyond the measured range" if outside else "") + ".")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "forecast.json", (json.dumps(result, indent=2) + "\n").encode())
    _plot(fitted, result, out / "forecast.png", level)
    return result


def _plot(fitted: dict[str, Strategy], result: dict[str, Any], path: Path, level: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    low, high = result["measured_usd"]
    top = max(high, result["budget_usd"]) * 1.2
    grid = np.geomspace(min(low, result["budget_usd"]) / 1.2, top, 200)
    q = (1 - level) / 2
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (name, s), color in zip(fitted.items(), ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        ax.scatter(s.dollars, s.scores, color=color, s=18, label=f"{name}: measured")
        ax.plot(grid, s.curve(grid), color=color, label=f"{name}: fit {s.curve.a:.3f} - {s.curve.b:.3g}·x^-{s.curve.c:.2f}")
        if s.curves:
            draws = np.array([c(grid) for c in s.curves])
            ax.fill_between(grid, np.quantile(draws, q, 0), np.quantile(draws, 1 - q, 0), color=color, alpha=0.15)
    ax.axvline(result["budget_usd"], color="black", linestyle="--", linewidth=1, label="your budget")
    ax.set_xscale("log")
    ax.set_xlabel("dollars (labels + compute)")
    ax.set_ylabel(f"{result['metric']} ({result['task']})")
    ax.set_title(f"dora forecast: bands are {level:.0%} bootstrap intervals")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": PNG_MARKER})
    plt.close(fig)


def describe(result: dict[str, Any]) -> list[str]:
    """The forecast as lines for the terminal."""
    lines = []
    for name, p in result["strategies"].items():
        interval = (f"{result['level']:.0%} interval {p['low']:.3f} to {p['high']:.3f}" if p["low"] is not None
                    else "no interval")
        line = f"{name}: {p['predicted']:.3f} {result['metric']} at ${result['budget_usd']:,.2f} ({interval}; {len(p['points'])} runs)"
        bt = p["backtest"]
        if bt:
            line += (f"; backtest: fitted up to {bt['fitted_up_to_labels']} labels, predicted {bt['predicted']:.3f} at "
                     f"{bt['predicted_labels']} (${bt['predicted_at_usd']:,.2f}), measured {bt['measured']:.3f} "
                     f"(error {bt['error']:+.3f})")
        lines.append(line)
    if "recommendation" in result:
        lines.append(result["recommendation"][0].upper() + result["recommendation"][1:])
    return lines

