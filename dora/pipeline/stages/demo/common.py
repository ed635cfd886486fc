"""Distill or annotate, measured: both strategies at several label budgets and seeds, at equal
dollars and equal student compute, with a pretrained teacher and a pretrained encoder student.

One protocol (``Protocol``) fixes everything before anything runs: the splits (disjoint test,
dev, unlabeled pool and gold, drawn once with a fixed seed), the label budgets, the seeds, the
teacher's fine-tuning (stopped on dev) and the students' settings. At each budget ``n``:

* the teacher (``dora teacher-label``) is fine-tuned on the first ``n`` gold labels, selected on
  dev, scored on test, and labels the pool with its scores of every label (``label_logprobs``);
* *distill*: for each seed, the student (``dora train-student``) learns from the cache (KD at T
  on the teacher's label distribution) and from the same ``n`` gold labels;
* *annotate*: for each seed, the same student learns from gold labels only: the ``n`` plus as
  many more as the teacher's compute would have bought at the stated prices (equal dollars, up to
  the ``n`` more that the gold split holds; each point records its labels and dollars),
  seeing as many examples as the distill student (equal student compute).

Every student is picked on dev and scored once on test. ``summarise`` gives, per budget, the
teacher's score, each strategy's mean and standard error over seeds, dollars, and whether the
difference exceeds two standard errors; ``dora forecast`` backtests the points. The demo
(``dora demo --pretrained``) and ``benchmarks/paper_effect.py`` run it with their own protocols.

Example::

    from dora.pipeline.stages.demo.common import Protocol, Models, run_comparison, summarise
    points = run_comparison(Protocol(budgets=(100, 300, 1000), ...), Models(...), rows, Path("work"))
    for row in summarise(points): print(row)
"""

from __future__ import annotations

import json
import math
import random
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dora.errors import ConfigError
from dora.pipeline.costs.pricing import Prices
from dora.pipeline.stages.evaluate import EvaluateConfig, evaluate
from dora.pipeline.stages.teacher_label import TeacherLabelConfig, teacher_label
from dora.pipeline.stages.train_student import TrainStudentConfig, train_student
from dora.pipeline.train.loop import EVALUATIONS_PER_RUN
from dora.progress import console

PROMPT = "Claim: "
"""The task prefix: a plain prompt, no chat template (the teacher is fine-tuned on it)."""


@dataclass(frozen=True, kw_only=True)
class Protocol:
    """Everything an experiment fixes before it runs."""

    budgets: tuple[int, ...]
    """Gold labels at each point (nested: a larger budget holds the smaller ones)."""
    pool: int
    """Unlabeled claims the teacher labels."""
    dev: int
    """Claims that select every checkpoint (teacher and students); never reported."""
    test: int
    """Claims every model is scored on once: the reported numbers."""
    seeds: int
    """Students per strategy and budget (seed = data order and head initialisation)."""
    split_seed: int = 0
    """Seed of the one shuffle that cuts the claims into test, dev, pool and gold."""
    teacher_epochs: float = 3.0
    """The teacher's fine-tuning epochs, bounded by ``teacher_steps``."""
    teacher_steps: tuple[int, int] = (40, 125)
    """Fewest and most optimizer steps of the teacher (batches of ``batch_size``)."""
    teacher_learning_rate: float = 1e-4
    teacher_patience: int | None = None
    """Stop the teacher after this many dev evaluations without a better score (None: never)."""
    student_examples: int = 4000
    """Examples every student sees (equal student compute for both strategies)."""
    student_learning_rate: float = 5e-5
    batch_size: int = 16
    temperature: float = 2.0
    """KD temperature on the teacher's label distribution."""
    alpha: float = 0.0
    """Weight of cross-entropy on the teacher's own label (the KD term gets 1 - alpha)."""
    max_source_length: int = 64
    gpu_hour_usd: float = 0.10
    """Dollars per device-hour of every stage's compute."""
    engine: str = "transformers"
    """The teacher's labeling engine."""

    def __post_init__(self) -> None:
        if not self.budgets or sorted(set(self.budgets)) != list(self.budgets) or self.budgets[0] < 2:
            raise ConfigError(f"budgets must be increasing and at least 2, got {self.budgets}")
        if self.seeds < 1:
            raise ConfigError("seeds must be at least 1")


@dataclass(frozen=True, kw_only=True)
class Models:
    teacher: str
    """Base teacher: a GGUF file or a model directory (decoder-only or seq2seq)."""
    student: str
    """Base student: an encoder directory (a classifier over the labels) or any student dora trains."""
    teacher_name: str
    student_name: str


def claims_needed(protocol: Protocol) -> int:
    """Rows the splits take: test, dev, pool, and gold for the largest budget twice over (annotate
    may buy more labels than distilling's budget)."""
    return protocol.test + protocol.dev + protocol.pool + 2 * protocol.budgets[-1]


def write_splits(rows: Sequence[dict[str, Any]], protocol: Protocol, root: Path) -> dict[str, Path]:
    """Cut ``rows`` (``source``, ``target``) into disjoint test, dev, pool (targets dropped) and
    gold files after one seeded shuffle; ids are the rows' positions in ``rows``."""
    need = claims_needed(protocol)
    if len(rows) < need:
        raise ConfigError(f"the protocol needs {need} labeled rows, the data has {len(rows)}")
    order = list(range(len(rows)))
    random.Random(protocol.split_seed).shuffle(order)
    sizes = {"test": protocol.test, "dev": protocol.dev, "pool": protocol.pool, "gold": 2 * protocol.budgets[-1]}
    root.mkdir(parents=True, exist_ok=True)
    paths, start = {}, 0
    for name, size in sizes.items():
        picked = [dict(rows[i], id=f"row-{i}") for i in order[start : start + size]]
        start += size
        if name == "pool":
            picked = [{"id": r["id"], "source": r["source"]} for r in picked]
        paths[name] = root / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in picked), encoding="utf-8")
    return paths


def first_rows(path: Path, n: int, out: Path) -> Path:
    """The first ``n`` rows of a JSON Lines file, written to ``out``."""
    out.write_text("".join(path.read_text(encoding="utf-8").splitlines(keepends=True)[:n]), encoding="utf-8")
    return out


def run_comparison(protocol: Protocol, models: Models, rows: Sequence[dict[str, Any]], root: Path, *,
                   task: str = "fever") -> dict[str, Any]:
    """Run the protocol in ``root`` (a rerun reuses finished teachers, caches and students);
    return ``{"points": [...], "teachers": {...}, "splits": {...}}``: one point per student run
    (budget, strategy, seed, gold labels, score on test by the task's primary metric, dollars,
    seconds, run directory)."""
    from dora.pipeline.tasks.catalog import get_task

    primary = get_task(task).primary
    prices = Prices.resolve(task, gpu_hour_usd=protocol.gpu_hour_usd)
    label_usd = prices.labels(1).usd or 0.0
    paths = write_splits(rows, protocol, root / "data")
    common = dict(task=task, prefix=PROMPT, max_source_length=protocol.max_source_length, max_target_length=8,
                  max_new_tokens=8)
    points: list[dict[str, Any]] = []
    teachers: dict[int, dict[str, Any]] = {}
    for n in protocol.budgets:
        gold = first_rows(paths["gold"], n, root / "data" / f"gold-{n}.jsonl")
        steps = min(max(math.ceil(protocol.teacher_epochs * n / protocol.batch_size), protocol.teacher_steps[0]),
                    protocol.teacher_steps[1])
        console.rule(f"budget {n}: the teacher learns from {n} gold labels ({steps} steps, selected on dev), labels "
                     f"{protocol.pool} claims")
        labeled = teacher_label(TeacherLabelConfig(
            teacher=models.teacher, train=gold, pool=paths["pool"], dev=paths["dev"], out=root / f"cache-{n}",
            teacher_out=root / "models" / f"teacher-{n}", max_steps=steps, learning_rate=protocol.teacher_learning_rate,
            batch_size=protocol.batch_size, patience=protocol.teacher_patience, top_k=5, shard_size=4096,
            label_batch_size=32, engine=protocol.engine, seed=0, **common))  # type: ignore[arg-type]
        teacher_compute = [labeled.costs.get("teacher_finetune"), labeled.costs.get("labeling")]
        scored = evaluate(EvaluateConfig(model=str(root / "models" / f"teacher-{n}"), data=paths["test"],
                                         out=root / "runs" / f"teacher-{n}.json", overwrite=True, **common))
        teacher_usd = _compute_usd(prices, *teacher_compute)
        teachers[n] = {"score": scored["scores"][primary], "compute_usd": teacher_usd,
                       "seconds": _seconds(*teacher_compute),
                       "dev": (labeled.manifest.stats.get("teacher_dev") or {}).get("scores", {}).get("strict", {})}
        # Equal dollars: annotate buys the labels that the teacher's compute would have paid for (as
        # many as the gold split holds beyond the budget: the point records how many it got).
        extra = min(int(teacher_usd // label_usd) if label_usd else 0, 2 * protocol.budgets[-1] - n)
        more_gold = first_rows(paths["gold"], n + extra, root / "data" / f"gold-{n + extra}.jsonl")
        for seed in range(protocol.seeds):
            for strategy, train_rows, cache in (("distill", n + protocol.pool, root / f"cache-{n}"),
                                                ("annotate", n + extra, None)):
                epochs = protocol.student_examples / train_rows  # equal student compute
                steps_per_run = math.ceil(protocol.student_examples / protocol.batch_size)
                result = train_student(TrainStudentConfig(
                    student=models.student, cache=cache, train=gold if cache else more_gold, dev=paths["dev"],
                    test=paths["test"], out=root / "runs" / f"{strategy}-{n}-seed{seed}", epochs=epochs,
                    learning_rate=protocol.student_learning_rate, batch_size=protocol.batch_size, seed=seed,
                    temperature=protocol.temperature, alpha=protocol.alpha,
                    eval_every=max(1, steps_per_run // EVALUATIONS_PER_RUN),
                    **common))
                assert result is not None  # one process
                student_usd = _compute_usd(prices, result.record["cost"])
                labels = n if cache else n + extra
                compute = student_usd + (teacher_usd if cache else 0.0)
                points.append({
                    "budget": n, "strategy": strategy, "seed": seed, "gold_labels": labels,
                    "score": (result.metrics["eval"] or {})[primary],
                    "label_usd": round(labels * label_usd, 4), "compute_usd": round(compute, 6),
                    "usd": round(labels * label_usd + compute, 4),
                    "seconds": round(_seconds(result.record["cost"]) + (teachers[n]["seconds"] if cache else 0.0), 1),
                    "run": str(result.out)})
    return {"points": points, "teachers": teachers, "splits": {k: str(v) for k, v in paths.items()},
            "protocol": asdict(protocol)}


def summarise(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per budget: the teacher's test score, each strategy's mean, standard error over
    seeds and mean dollars, the difference (distill minus annotate), its standard error, and
    whether it exceeds two standard errors."""
    rows = []
    for n, teacher in sorted(result["teachers"].items(), key=lambda x: int(x[0])):
        row: dict[str, Any] = {"budget": int(n), "teacher": teacher["score"]}
        for strategy in ("distill", "annotate"):
            scores = [p["score"] for p in result["points"] if p["budget"] == int(n) and p["strategy"] == strategy]
            usd = [p["usd"] for p in result["points"] if p["budget"] == int(n) and p["strategy"] == strategy]
            labels = [p["gold_labels"] for p in result["points"] if p["budget"] == int(n) and p["strategy"] == strategy]
            row[strategy] = {"mean": statistics.fmean(scores), "se": standard_error(scores), "scores": scores,
                             "usd": statistics.fmean(usd), "gold_labels": max(labels)}
        d, a = row["distill"], row["annotate"]
        row["difference"] = d["mean"] - a["mean"]
        row["se"] = math.hypot(d["se"], a["se"]) if d["se"] is not None and a["se"] is not None else None
        row["beyond_2se"] = row["se"] is not None and abs(row["difference"]) > 2 * row["se"]
        rows.append(row)
    return rows


def standard_error(scores: Sequence[float]) -> float | None:
    """The standard error of the mean over seeds (None with one seed)."""
    return statistics.stdev(scores) / math.sqrt(len(scores)) if len(scores) > 1 else None


def verdict_sentence(row: dict[str, Any]) -> str:
    """What one budget's row says, with its standard errors."""
    d, a = row["distill"], row["annotate"]
    winner = "distill" if row["difference"] > 0 else "annotate"
    se = (lambda s: f" ± {s:.3f}" if s is not None else "")
    head = (f"At {row['budget']} gold labels: distill {d['mean']:.3f}{se(d['se'])} at ${d['usd']:.2f}, annotate "
            f"{a['mean']:.3f}{se(a['se'])} at ${a['usd']:.2f} ({a['gold_labels']} labels); teacher {row['teacher']:.3f}")
    if row["se"] is None:
        return head + "; one seed per strategy: no standard error, so the gap may be noise."
    if row["beyond_2se"]:
        return (head + f". {winner} wins by {abs(row['difference']):.3f}, more than two standard errors "
                f"(2 × {row['se']:.3f}).")
    return head + (f". The gap, {abs(row['difference']):.3f}, is within two standard errors (2 × {row['se']:.3f}): "
                   "too close to call.")


def majority_class(gold: Path, test: Path) -> tuple[str, float]:
    """The label most common among the gold labels, and its accuracy on ``test`` (the score of
    always answering it)."""
    def targets(path: Path) -> list[str]:
        return [json.loads(line)["target"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    label = sorted(Counter(targets(gold)).items(), key=lambda x: (-x[1], x[0]))[0][0]
    test_targets = targets(test)
    return label, test_targets.count(label) / len(test_targets)


def _compute_usd(prices: Prices, *costs: dict[str, Any] | None) -> float:
    return sum(prices.compute("compute", c).usd or 0.0 for c in costs if c)


def _seconds(*costs: dict[str, Any] | None) -> float:
    return sum(float(c.get("wall_seconds", 0.0)) for c in costs if c)
