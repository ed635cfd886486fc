"""A small teacher trained for real, and the cache it labels: what the KD-fidelity and cache-size
benchmarks measure on (random weights give distributions no teacher has).

    python benchmarks/real_teacher.py [--workdir /tmp/dora-real-teacher] [--steps 800]

Trains a Unigram tokenizer and a T5 (v1.1 style) from scratch on WLP protocol steps (the paper's
text-to-text NER task; from ``../shared/data/wlp`` or ``--data``, else the shipped FEVER claims)
with ``dora teacher-label``, which fine-tunes it and labels a held-out pool into a format 2
cache (k = 64, tails at T = 1 and 2). Everything is kept in ``--workdir`` and reused by later
runs (delete it to start over). A smaller student is trained on gold labels for a few hundred
steps, so that it is neither the teacher nor noise.
"""

from __future__ import annotations

import argparse
import json
import random
from importlib import resources
from pathlib import Path

SHARED_WLP = Path(__file__).resolve().parents[2] / "shared" / "data" / "wlp" / "wlp_train_all.json"


def _rows(data: Path | None) -> tuple[str, list[dict]]:
    path = data or (SHARED_WLP if SHARED_WLP.is_file() else None)
    if path is None:
        text = resources.files("dora").joinpath("demo_data/fever.jsonl").read_text(encoding="utf-8")
        return "fever", [json.loads(x) for x in text.splitlines() if x.strip()]
    task = "wlp" if "wlp" in path.name else "fever"
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    return task, [r for r in rows if r["source"].strip() and r["target"].strip()]  # WLP has steps with no entity


def build(workdir: Path, *, data: Path | None = None, steps: int = 800, pool: int = 768, vocab: int = 8000,
          top_k: int = 64) -> dict:
    """Train (or reuse) the teacher and its cache; return paths and sizes."""
    done = workdir / "built.json"
    if done.is_file():
        return json.loads(done.read_text())
    from dora.pipeline.models.scratch import save_model_dir, tiny_t5, train_tokenizer
    from dora.pipeline.stages.teacher_label import TeacherLabelConfig, teacher_label
    from dora.pipeline.stages.train_student import TrainStudentConfig, train_student
    from dora.progress import quiet_libraries

    quiet_libraries()
    task, rows = _rows(data)
    random.Random(0).shuffle(rows)
    held, train = rows[:pool], rows[pool:]
    workdir.mkdir(parents=True, exist_ok=True)
    files = {name: workdir / f"{name}.jsonl" for name in ("train", "pool", "student_train")}
    for name, part in (("train", train), ("pool", held), ("student_train", train[:2000])):
        files[name].write_text("".join(json.dumps({"id": str(i), "source": r["source"], "target": r["target"]}) + "\n"
                                       for i, r in enumerate(part)))
    tok = train_tokenizer([t for r in train for t in (f"{task}: " + r["source"], r["target"])], vocab_size=vocab)
    base = workdir / "teacher-base"
    save_model_dir(tiny_t5(tok, d_model=192, layers=3, heads=4, seed=1), tok, base)
    student_base = workdir / "student-base"
    save_model_dir(tiny_t5(tok, d_model=96, layers=2, heads=4, seed=2), tok, student_base)
    teacher_label(TeacherLabelConfig(
        task=task, teacher=str(base), train=files["train"], pool=files["pool"], out=workdir / "cache", top_k=top_k,
        max_steps=steps, batch_size=32, learning_rate=2e-3, warmup_ratio=0.05, max_source_length=80,
        max_target_length=48, max_new_tokens=48, label_batch_size=64, shard_size=256, save_every=100,
    ))
    train_student(TrainStudentConfig(
        task=task, student=str(student_base), train=files["student_train"], out=workdir / "student",
        max_steps=max(100, steps // 5), batch_size=32, learning_rate=2e-3, max_source_length=80,
        max_target_length=48, max_new_tokens=48,
    ))
    built = {"task": task, "teacher": str(workdir / "cache.teacher"), "student": str(workdir / "student"),
             "cache": str(workdir / "cache"), "vocab": len(tok), "steps": steps, "rows": len(rows)}
    done.write_text(json.dumps(built, indent=2))
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dora-real-teacher"))
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=800)
    args = parser.parse_args()
    print(json.dumps(build(args.workdir, data=args.data, steps=args.steps), indent=2))


if __name__ == "__main__":
    main()
