"""``dora sweep``: both strategies on your data at several label budgets, as pilot runs for ``dora forecast``.

At each budget (a number of gold labels) and seed:

* annotate: the student trains on that many gold labels, for as many examples as the distill
  student sees (equal student compute, as the demo and the paper compare);
* distill: the teacher is fine-tuned on the same labels and labels the pool, then the student
  trains on that cache.

A seed draws its gold labels as the first N of a seeded shuffle of ``--train``, so a smaller
budget's labels are a subset of a larger one's (a smaller budget's teacher is fine-tuned on a
subset of the larger's gold). Each teacher differs (its gold differs), so each labels the pool
itself; the pool is never relabeled for a point that has its cache. Every point is a run
directory (``annotate-<N>-seed<S>``, ``distill-<N>-seed<S>``) with the cost record of every
stage; the teachers and caches live in ``teachers/`` and ``caches/``. A rerun skips finished
points and continues unfinished ones where they stopped (the stages resume on their own).

Example::

    dora sweep --task fever --teacher ./t5-large --student ./t5-small --train gold.jsonl \\
        --pool pool.jsonl --dev dev.jsonl --test test.jsonl --budgets 50,100,200 --out sweep/
    dora forecast sweep/ --budget 60 --gpu-hour-usd 2.49
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from dora.cache import LabelCache
from dora.errors import ConfigError
from dora.files import read_object, write_atomic
from dora.lock import DirectoryLock, Guarded
from dora.pipeline.data.inputs import read_examples
from dora.pipeline.data.pool import Pool
from dora.pipeline.stages.config import SWEEP_MARKER, SweepConfig
from dora.pipeline.stages.teacher_label import TeacherLabelConfig, teacher_label
from dora.pipeline.stages.train_student import TrainStudentConfig, train_student
from dora.pipeline.train.loop import evaluations_every
from dora.progress import console
from dora.rundir import METRICS, RUN_RECORD

SWEEP_DIR = Guarded(directory="the sweep directory", create_fix="choose a writable --out",
                    busy="is running a sweep in this directory", wait="wait for it to finish, or choose another --out")


def run_sweep(config: SweepConfig) -> dict[str, Any]:
    """Run (or continue) every point; returns and writes ``sweep.json``: the points with their runs and scores."""
    # 1. Read every input first: a bad row or a budget larger than the gold fails before any training.
    gold = read_examples(config.train, fields=config.fields, require_target=True)
    if config.budgets[-1] > len(gold):
        raise ConfigError(f"--budgets {config.budgets[-1]}: {config.train} has {len(gold)} labeled rows; use budgets "
                          "up to that")
    pool_rows = Pool.scan(config.pool, fields=config.fields).rows
    for split in (config.dev, config.test):
        read_examples(split, fields=config.fields, require_target=True)
    _check_same_settings(config)
    with DirectoryLock(config.out, SWEEP_DIR):  # one sweep at a time in a directory
        return _run_points(config, gold, pool_rows)


def _run_points(config: SweepConfig, gold: list[Any], pool_rows: int) -> dict[str, Any]:
    from dora.pipeline.stages.report import RunRecord

    root = config.out
    (root / SWEEP_MARKER).write_text("written by `dora sweep`: a rerun continues the sweep in this directory\n")
    points = [(n, seed, strategy) for n in config.budgets for seed in range(config.seeds)
              for strategy in ("annotate", "distill")]
    done: list[dict[str, Any]] = []
    start = time.perf_counter()
    for i, (n, seed, strategy) in enumerate(points, 1):
        run_dir = root / f"{strategy}-{n}-seed{seed}"
        where = f"[{i}/{len(points)}] {strategy}, {n} gold labels, seed {seed}"
        if (run_dir / METRICS).is_file() and (run_dir / RUN_RECORD).is_file():
            console.print(f"{where}: finished earlier")
        else:
            console.rule(where)
            labels = _gold_file(config, gold, n, seed)
            if strategy == "annotate":
                _annotate(config, labels, run_dir, seed, pool_rows, n)
            else:
                _distill(config, labels, run_dir, seed, n)
        record = RunRecord.load(run_dir)
        done.append({"strategy": strategy, "gold_labels": n, "seed": seed, "run": run_dir.name,
                     "score": record.score, "metric": record.metric})
        console.print(f"{where}: {record.metric} {record.score if record.score is not None else '-'}"
                      f" ({time.perf_counter() - start:.0f} s into the sweep)")
        _write_summary(config, done)
    return {"points": done, "out": str(root)}


def _gold_file(config: SweepConfig, gold: list[Any], n: int, seed: int) -> Path:
    """The first ``n`` of the gold rows in seed ``seed``'s order, in the user's column names."""
    order = list(range(len(gold)))
    random.Random(seed).shuffle(order)
    f = config.fields
    path = config.out / "data" / f"gold-{n}-seed{seed}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({f.id: gold[i].id, f.source: gold[i].source, f.target: gold[i].target},
                                       ensure_ascii=False) + "\n" for i in order[:n]), encoding="utf-8")
    return path


def _common(config: SweepConfig, seed: int) -> dict[str, Any]:
    return dict(task=config.task, metric=config.metric, prefix=config.prefix, fields=config.fields,
                max_source_length=config.max_source_length, max_target_length=config.max_target_length,
                max_new_tokens=config.max_new_tokens, revision=config.revision,
                trust_remote_code=config.trust_remote_code, learning_rate=config.learning_rate,
                batch_size=config.batch_size, seed=seed, max_steps=config.max_steps)


def _annotate(config: SweepConfig, labels: Path, run_dir: Path, seed: int, pool_rows: int, n: int) -> None:
    # Equal student compute: as many examples seen as the distill student (epochs over the pool).
    epochs = config.student_epochs * pool_rows / n
    train_student(TrainStudentConfig(student=config.student, train=labels, dev=config.dev, test=config.test,
                                     out=run_dir, epochs=epochs, eval_every=_every(config, n, epochs),
                                     **_common(config, seed)))


def _distill(config: SweepConfig, labels: Path, run_dir: Path, seed: int, n: int) -> None:
    cache = config.out / "caches" / f"cache-{n}-seed{seed}"
    teacher_label(TeacherLabelConfig(teacher=config.teacher, train=labels, dev=config.dev, pool=config.pool, out=cache,
                                     teacher_out=config.out / "teachers" / f"teacher-{n}-seed{seed}",
                                     epochs=config.teacher_epochs, **config.labeling_settings(),
                                     **{**_common(config, seed),
                                        "learning_rate": config.teacher_learning_rate or config.learning_rate}))
    pool_rows = LabelCache.open(cache).manifest.rows
    train_student(TrainStudentConfig(student=config.student, cache=cache, dev=config.dev, test=config.test,
                                     out=run_dir, epochs=config.student_epochs,
                                     eval_every=_every(config, pool_rows, config.student_epochs), **_common(config, seed)))


def _every(config: SweepConfig, rows: int, epochs: float) -> int:
    """About four dev evaluations per student run, however many epochs it has."""
    return evaluations_every(rows, epochs, config.batch_size, max_steps=config.max_steps)


def _settings(config: SweepConfig) -> dict[str, Any]:
    """What every point of a sweep must share (budgets and seeds may grow between reruns)."""
    names = ("task", "metric", "prefix", "teacher", "student", "train", "pool", "dev", "test", "teacher_epochs",
             "student_epochs", "max_steps", "learning_rate", "teacher_learning_rate", "batch_size", "top_k", "engine",
             "max_source_length", "max_target_length", "max_new_tokens", "revision")
    return {n: str(getattr(config, n)) for n in names} | {"fields": str(config.fields)}


def _check_same_settings(config: SweepConfig) -> None:
    """A rerun continues a sweep only with its settings: finished points are reused as they are."""
    summary = config.out / "sweep.json"
    if not summary.is_file():
        return
    before = read_object(summary, expected="a sweep record (a JSON object)",
                         fix=f"give a new --out; {config.out} was not written by this version of dora sweep").get("settings")
    if not isinstance(before, dict):
        raise ConfigError(f"{summary}: not a sweep record dora can read; give a new --out")
    changed = sorted(k for k, v in _settings(config).items() if before.get(k) != v)
    if changed:
        raise ConfigError(f"--out {config.out} holds a sweep made with other {', '.join(changed)}; its finished points "
                          "would be reused as they are. Use a new --out, or the same settings (only --budgets and "
                          "--seeds may change)")


def _write_summary(config: SweepConfig, points: list[dict[str, Any]]) -> None:
    summary = {"task": config.task, "teacher": config.teacher, "student": config.student,
               "budgets": list(config.budgets), "seeds": config.seeds, "settings": _settings(config), "points": points}
    write_atomic(config.out / "sweep.json", (json.dumps(summary, indent=2) + "\n").encode())
