"""``dora demo``: both strategies end to end on shipped FEVER data, on CPU, in a few minutes.

No pretrained weights can be downloaded here, so the demo trains a tokenizer on the shipped
data and builds a small teacher and a smaller student from configs. It then runs exactly the
stages a user runs:

* annotate: ``train_student`` on the gold labels only;
* distill: ``teacher_label`` (fine-tune the teacher on the same gold labels, label the pool)
  and ``train_student`` on the cache.

Models this small, trained from scratch on a few hundred claims, stay near chance on FEVER:
the demo shows the mechanics and the cost record, not the paper's result, which needs
pretrained checkpoints (see the README).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dora.errors import ConfigError
from dora.pipeline.costs.pricing import Prices
from dora.pipeline.models.scratch import save_model_dir, tiny_t5, train_tokenizer
from dora.pipeline.stages.config import DEMO_MARKER, DemoConfig
from dora.pipeline.stages.demo.common import first_rows, majority_class
from dora.pipeline.stages.report import report
from dora.pipeline.stages.teacher_label import TeacherLabelConfig, teacher_label
from dora.pipeline.stages.train_student import TrainStudentConfig, train_student
from dora.pipeline.train.loop import evaluations_every
from dora.progress import console


@dataclass(frozen=True, kw_only=True)
class _Sizes:
    gold: int
    pool: int
    test: int
    teacher_epochs: float
    student_epochs: float


FULL = _Sizes(gold=600, pool=1800, test=600, teacher_epochs=12, student_epochs=6)
QUICK = _Sizes(gold=120, pool=240, test=80, teacher_epochs=2, student_epochs=1)


def write_splits(root: Path, *, gold: int, pool: int, dev: int, test: int) -> dict[str, Path]:
    """The shipped FEVER claims cut into gold, an unlabeled pool, dev (selects checkpoints) and
    test (reported), none overlapping: held-out rows come from the end of the file."""
    text = resources.files("dora").joinpath("demo_data/fever.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    if gold + pool + dev + test > len(rows):
        raise ConfigError(f"the demo's splits need {gold + pool + dev + test} rows; the shipped file has {len(rows)}")
    parts = {"gold": rows[:gold], "dev": rows[len(rows) - test - dev : len(rows) - test], "test": rows[len(rows) - test :]}
    paths = {name: root / f"{name}.jsonl" for name in ("gold", "pool", "dev", "test")}
    root.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        paths[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part))
    # The pool is unlabeled: its gold targets are dropped.
    paths["pool"].write_text("".join(json.dumps({"id": r["id"], "source": r["source"]}, ensure_ascii=False) + "\n"
                                     for r in rows[gold : gold + pool]))
    return paths


def _build_models(root: Path, paths: dict[str, Path]) -> tuple[Path, Path]:
    teacher_dir, student_dir = root / "models" / "teacher-base", root / "models" / "student-base"
    if (teacher_dir / "config.json").exists() and (student_dir / "config.json").exists():
        return teacher_dir, student_dir
    texts = []
    for name in ("gold", "pool"):
        for line in paths[name].read_text().splitlines():
            row = json.loads(line)
            texts += ["fever: " + row["source"], row.get("target", "")]
    tokenizer = train_tokenizer([t for t in texts if t], vocab_size=1000)
    save_model_dir(tiny_t5(tokenizer, d_model=128, layers=3, heads=4, seed=1), tokenizer, teacher_dir)
    save_model_dir(tiny_t5(tokenizer, d_model=64, layers=2, heads=4, seed=2), tokenizer, student_dir)
    return teacher_dir, student_dir


def run_demo(config: DemoConfig) -> dict[str, Any]:
    root = config.workdir
    if config.pretrained:
        from dora.pipeline.stages.demo.pretrained import run_pretrained_demo, smollm2_gguf

        gguf = smollm2_gguf()  # not installed: say how before writing anything
        _claim(root)
        return run_pretrained_demo(root, gguf, quick=config.quick, budgets=config.budgets, seeds=config.seeds,
                                   gpu_hour_usd=config.gpu_hour_usd)
    sizes = QUICK if config.quick else FULL
    start = time.perf_counter()
    console.rule("[bold]dora demo: distill or annotate? (FEVER claims, tiny models, CPU)")
    _claim(root)
    paths = write_splits(root / "data", gold=sizes.gold, pool=sizes.pool, dev=sizes.test // 2,
                         test=sizes.test - sizes.test // 2)
    teacher_base, student_base = _build_models(root, paths)
    common = dict(task="fever", batch_size=16, learning_rate=1e-3, max_source_length=64, max_target_length=16,
                  max_new_tokens=16)

    counts = sorted(sizes.gold // 2**i for i in range(config.budgets or 1))
    seeds = range(config.seeds or 2)
    runs: list[Path] = []
    timing: dict[Path, tuple[float, int]] = {}  # each run's seconds (its teacher's too) and examples seen
    for n in counts:
        gold = paths["gold"] if n == sizes.gold else first_rows(paths["gold"], n, root / "data" / f"gold-{n}.jsonl")
        suffix = "" if len(counts) == 1 else f"-{n}"
        # Equal student compute for both strategies: as many examples seen as the distill run.
        annotate_epochs = sizes.student_epochs * sizes.pool / n
        for seed in seeds:
            console.rule(f"annotate: the student learns from {n} gold labels (seed {seed})")
            annotate = train_student(TrainStudentConfig(
                student=str(student_base), train=gold, dev=paths["dev"], test=paths["test"],
                out=root / "runs" / f"annotate{suffix}-seed{seed}", epochs=annotate_epochs,
                eval_every=evaluations_every(n, annotate_epochs, common["batch_size"]), **common, seed=seed))
            runs.append(annotate.out)
            timing[annotate.out] = _seconds(annotate.record["cost"]), annotate.record["examples_seen"]

        console.rule(f"distill: the teacher learns from the same {n} gold labels and labels the pool")
        labeled = teacher_label(TeacherLabelConfig(
            teacher=str(teacher_base), train=gold, dev=paths["dev"], pool=paths["pool"], out=root / f"cache{suffix}",
            epochs=sizes.teacher_epochs, top_k=20, shard_size=1024, label_batch_size=64, **common, seed=0))
        for seed in seeds:
            console.rule(f"distill: the student learns from the teacher's labels (seed {seed})")
            distill = train_student(TrainStudentConfig(
                student=str(student_base), cache=root / f"cache{suffix}", dev=paths["dev"], test=paths["test"],
                out=root / "runs" / f"distill{suffix}-seed{seed}", epochs=sizes.student_epochs,
                eval_every=evaluations_every(sizes.pool, sizes.student_epochs, common["batch_size"]), **common, seed=seed))
            runs.append(distill.out)
            timing[distill.out] = (_seconds(labeled.costs["teacher_finetune"], labeled.costs["labeling"],
                                            distill.record["cost"]), distill.record["examples_seen"])

    # Every run priced: labels at the paper's FEVER estimate, compute at the stated rate.
    prices = Prices.resolve("fever", gpu_hour_usd=config.gpu_hour_usd)
    majority = majority_class(paths["gold"], paths["test"])
    drawn = report(runs, lambda task: prices, root / "report", overwrite=True,
                   baseline=(f"majority class ({majority[0]})", majority[1]))
    rows = [{"strategy": r["strategy"], "gold_labels": r["gold_labels"], "seed": int(r["run"].rsplit("seed", 1)[1]),
             "accuracy": r["score"], "examples_seen": timing[Path(r["run"])][1],
             "wall_seconds": timing[Path(r["run"])][0], "device_hours": r["device_hours"], "label_usd": r["label_usd"],
             "compute_usd": r["compute_usd"], "total_usd": r["total_usd"]} for r in drawn.rows]
    table = Table(title=f"FEVER, {sizes.test - sizes.test // 2} held-out test claims (accuracy; checkpoints picked on "
                        f"{sizes.test // 2} dev claims; the majority class, {majority[0]}, scores {majority[1]:.3f})")
    for col in ("strategy", "gold labels", "seed", "accuracy", "seconds", "device-h", "labels $", "compute $", "total $"):
        table.add_column(col, justify="right" if col != "strategy" else "left")
    for r in rows:
        table.add_row(r["strategy"], str(r["gold_labels"]), str(r["seed"]), f"{r['accuracy']:.3f}",
                      f"{r['wall_seconds']:.1f}", f"{r['device_hours']:.5f}", f"{r['label_usd']:.2f}",
                      f"{r['compute_usd']:.6f}", f"{r['total_usd']:.2f}")
    Console(stderr=True, width=max(console.width, 120)).print(table)  # a table, not wrapped text, when piped
    console.print(f"prices: labels at {prices.annotation_usd} USD each (the paper's estimate for FEVER); compute at "
                  f"{config.gpu_hour_usd} USD per device-hour (about a 2-vCPU cloud machine, which is what the demo "
                  "runs on; change it with --gpu-hour-usd)", soft_wrap=True)
    sentences = [verdict(n, [r for r in rows if r["gold_labels"] == n]) for n in counts]
    for sentence in sentences:
        console.print(f"[bold]verdict:[/] {sentence}", soft_wrap=True)
    console.print(f"total {time.perf_counter() - start:.0f} s. Outputs in {root}/ (runs/*/metrics.json, run.json, "
                  f"curves.csv; cache/manifest.json; {drawn.plot.relative_to(root)}). Real results need pretrained "
                  "checkpoints: see README.", soft_wrap=True)
    (root / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    return {"rows": rows, "verdicts": sentences}


def verdict(budget: int | str, rows: list[dict[str, Any]]) -> str:
    """One sentence: which strategy scored higher at ``budget`` (a number of gold labels both
    strategies bought, or a phrase that says what each bought) and at what total cost, and whether
    the gap between their mean scores is larger than the spread (highest minus lowest) of either
    strategy's seeds. ``rows``: ``strategy``, ``accuracy``, ``total_usd`` per run."""
    at = f"At {budget} gold labels" if isinstance(budget, int) else f"At {budget}"
    by = {s: [r for r in rows if r["strategy"] == s] for s in ("annotate", "distill")}
    mean = {s: sum(r["accuracy"] for r in runs) / len(runs) for s, runs in by.items()}
    usd = {s: sum(r["total_usd"] for r in runs) / len(runs) for s, runs in by.items()}
    spread = {s: max(r["accuracy"] for r in runs) - min(r["accuracy"] for r in runs) for s, runs in by.items()}
    seeds = min(len(runs) for runs in by.values())
    winner, loser = sorted(by, key=lambda s: -mean[s])
    gap = mean[winner] - mean[loser]
    scored = (f"{mean[winner]:.3f} against {loser}'s {mean[loser]:.3f}"
              + (f" (means of {seeds} seeds)" if seeds > 1 else ""))
    digits = next((d for d in range(2, 7) if round(usd[winner], d) != round(usd[loser], d)), 2)
    cost = f"at {usd[winner]:,.{digits}f} USD in all against {usd[loser]:,.{digits}f}"
    if gap == 0:
        head = (f"{at} both strategies scored {mean[winner]:.3f}, annotate at {usd['annotate']:,.{digits}f} USD in all "
                f"and distill at {usd['distill']:,.{digits}f}")
    else:
        head = f"{at} {winner} scored higher: {scored}, {cost}"
    if seeds < 2:
        return f"{head}; with one seed per strategy the spread between seeds is not measured, so the gap may be noise."
    widest = max(spread.values())
    spreads = f"{spread['annotate']:.3f} annotate, {spread['distill']:.3f} distill"
    if gap > widest:
        return f"{head}; the gap ({gap:.3f}) is larger than the spread between seeds ({spreads})."
    return (f"{head}; the gap ({gap:.3f}) is not larger than the spread between seeds ({spreads}): "
            "too close to call on this data.")


def _seconds(*costs: dict[str, Any]) -> float:
    return round(sum(c["wall_seconds"] for c in costs), 3)


def _claim(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / DEMO_MARKER).write_text("written by `dora demo`: it may rewrite everything in this directory\n")

