"""Peak memory against pool size: labeling and student training stream, so memory stays flat.

    python benchmarks/memory_scaling.py [--sizes 10000 100000 1000000] [--train-steps 200]

With a trivial teacher and student (a T5 of 30k parameters built from a config: this
measures dora, not the model), for each pool size N it runs, each in a fresh process, and
reports the peak resident memory (VmHWM):

* ``label``: ``dora teacher-label --no-finetune`` on a synthetic pool of N rows (FEVER claims
  with a row number appended), writing the cache (the real stage, CLI and all);
* ``train``: ``dora train-student`` for a fixed number of steps on that cache;
* baselines, measured the same way: reading the whole pool into memory (``read_examples``,
  what labeling did before it streamed) and featurising the whole cache into one list
  (what training did before it streamed).

Prints a table with each figure's ratio to the 10k-row run of the same kind.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

LABEL_ARGS = ["--task", "fever", "--no-finetune", "--top-k", "4", "--max-new-tokens", "3",
              "--label-batch-size", "512", "--shard-size", "8192", "--no-score-labels", "--max-source-length", "32"]


def child(kind: str, work: Path, n: int, steps: int) -> None:
    """One measurement in this (fresh) process; prints {"seconds", "peak_mb"}."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Every measurement imports the same libraries first, so "above the import floor" compares like with like.
    import transformers  # noqa: F401

    import dora.pipeline.stages.teacher_label  # noqa: F401
    import dora.pipeline.stages.train_student  # noqa: F401
    from dora.progress import quiet_libraries

    quiet_libraries()
    start = time.perf_counter()
    pool, cache = work / f"pool-{n}.jsonl", work / f"cache-{n}"
    if kind == "floor":  # the imports above and nothing else
        pass
    elif kind == "label":
        from dora.pipeline.stages.teacher_label import TeacherLabelConfig, teacher_label

        teacher_label(TeacherLabelConfig(task="fever", teacher=str(work / "model"), finetune=False, pool=pool,
                                         out=cache, top_k=4, max_new_tokens=3, label_batch_size=512,
                                         shard_size=8192, score_labels=False, max_source_length=32))
    elif kind == "train":
        from dora.pipeline.stages.train_student import TrainStudentConfig, train_student

        train_student(TrainStudentConfig(task="fever", student=str(work / "model"), cache=cache,
                                         out=work / f"student-{n}", max_steps=steps, batch_size=32,
                                         save_every=10**9, max_source_length=32, resume=False))
    elif kind == "read-pool":
        from dora.pipeline.data.inputs import read_examples

        read_examples(pool, require_target=False)
    elif kind == "load-cache":
        from dora.cache import LabelCache
        from dora.pipeline.kd.objectives import OBJECTIVES
        from dora.pipeline.models.loading import load_tokenizer

        opened = LabelCache.open(cache)
        topk = OBJECTIVES["topk"](tail_index=OBJECTIVES["topk"].stored_tail(opened, 2.0))
        tok = load_tokenizer(str(work / "model"))
        [f for table in opened.iter_tables(topk.columns())  # the whole cache's features held at once
         for f in topk.featurise(table, tok, prefix="fever: ", max_source_length=32, max_target_length=64)]
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child would inherit the
    # parent's peak; VmHWM belongs to this process's own address space.
    status = Path("/proc/self/status").read_text()
    peak_mb = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024
    print(json.dumps({"seconds": round(time.perf_counter() - start, 1), "peak_mb": round(peak_mb)}))


def measure(kind: str, work: Path, n: int, steps: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", kind, "--work", str(work), "--n", str(n),
                           "--train-steps", str(steps)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{kind} at {n} rows failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def setup(work: Path, sizes: list[int]) -> None:
    from dora.pipeline.models.scratch import save_model_dir, tiny_t5, train_tokenizer

    text = resources.files("dora").joinpath("demo_data/fever.jsonl").read_text()
    claims = [json.loads(line)["source"] for line in text.splitlines()]
    tok = train_tokenizer(["fever: " + c for c in claims] + ["SUPPORTS", "REFUTES", "NOT ENOUGH INFO"], vocab_size=500)
    save_model_dir(tiny_t5(tok, d_model=16, layers=1, heads=2, d_ff=32), tok, work / "model")
    for n in sizes:
        with open(work / f"pool-{n}.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps({"id": f"r{i}", "source": f"{claims[i % len(claims)]} ({i})"}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--skip-baselines-above", type=int, default=100_000,
                        help="skip featurising the whole cache (slow) for pools larger than this")
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.work, args.n, args.train_steps)

    work = Path(tempfile.mkdtemp(prefix="dora-mem-"))
    setup(work, args.sizes)
    results: dict[str, dict[int, dict]] = {}
    floor = measure("floor", work, args.sizes[0], args.train_steps)["peak_mb"]
    for n in args.sizes:
        for kind in ("label", "read-pool", "train", "load-cache"):
            if kind == "load-cache" and n > args.skip_baselines_above:
                continue
            results.setdefault(kind, {})[n] = measure(kind, work, n, args.train_steps)
            print(f"  {kind:10s} {n:>9,} rows: {results[kind][n]}", file=sys.stderr, flush=True)

    first = args.sizes[0]
    names = {"label": "teacher-label (streams the pool)", "read-pool": "baseline: read the pool whole",
             "train": f"train-student, {args.train_steps} steps (streams)",
             "load-cache": "baseline: featurise the cache whole"}
    print(f"\npeak RSS (MB) by pool size; in brackets the ratio to {first:,} rows. Importing torch, "
          f"transformers and dora alone: {floor} MB\n")
    print(f"{'':40s}" + "".join(f"{n:>20,}" for n in args.sizes))
    for kind, by_n in results.items():
        cells = "".join(f"{by_n[n]['peak_mb']:>11} ({by_n[n]['peak_mb'] / by_n[first]['peak_mb']:4.2f}x)" if n in by_n
                        else f"{'-':>20}" for n in args.sizes)
        print(f"{names[kind]:40s}{cells}")
    print(f"\nabove the import floor (MB); in brackets the ratio to {first:,} rows\n")
    for kind, by_n in results.items():
        base = max(by_n[first]["peak_mb"] - floor, 1)
        cells = "".join(f"{by_n[n]['peak_mb'] - floor:>11} ({(by_n[n]['peak_mb'] - floor) / base:4.2f}x)" if n in by_n
                        else f"{'-':>20}" for n in args.sizes)
        print(f"{names[kind]:40s}{cells}")
    print("\nwall seconds")
    for kind, by_n in results.items():
        print(f"{names[kind]:40s}" + "".join(f"{by_n[n]['seconds']:>20}" if n in by_n else f"{'-':>20}"
                                             for n in args.sizes))


if __name__ == "__main__":
    main()
