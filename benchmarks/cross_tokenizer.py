"""Does the cache's teacher signal cross tokenizers? A controlled experiment on FEVER, CPU, minutes.

    python benchmarks/cross_tokenizer.py [--seeds 3] [--steps 250]

A small Llama teacher (byte-level BPE vocabulary) is fine-tuned on 600 gold FEVER claims and
labels 1,800 unlabeled claims into a cache (pseudo-labels, top-20 logprobs, label logprobs).
T5 students (SentencePiece-style Unigram vocabulary: a different tokenizer) then train for the
same number of steps from that cache with each ``--kd-loss``:

  sequence  the pseudo-label text only (what dora did before cross-tokenizer losses)
  aligned   top-k KL on 1:1 aligned positions, mapped into the student vocabulary
  uld       ULD (sorted-probability L1) on aligned positions
  labels    label-set KL over SUPPORTS/REFUTES (alpha 0.5: half cross-entropy on the text)

and are scored on 600 held-out claims: accuracy against gold, and agreement with the teacher's
own predictions. Prints mean and standard deviation over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from importlib import resources
from pathlib import Path

LOSSES = [("sequence", 0.0), ("aligned", 0.0), ("uld", 0.0), ("labels", 0.5)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=250)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from dora.pipeline.engines.inference import predict
    from dora.pipeline.models.scratch import save_model_dir, tiny_llama, tiny_t5, train_tokenizer
    from dora.pipeline.stages.teacher_label import TeacherLabelConfig, teacher_label
    from dora.pipeline.stages.train_student import TrainStudentConfig, train_student
    from dora.pipeline.tasks.catalog import get_task
    from dora.progress import quiet_libraries

    quiet_libraries()
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="dora-xtok-"))
    rows = [json.loads(x) for x in resources.files("dora").joinpath("demo_data/fever.jsonl").read_text().splitlines()]
    gold, pool, test = rows[:600], rows[600:2400], rows[2400:]
    for name, part in (("gold", gold), ("test", test)):
        (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    (work / "pool.jsonl").write_text("".join(json.dumps({"id": r["id"], "source": r["source"]}) + "\n" for r in pool))
    texts = [t for r in gold + pool for t in ("fever: " + r["source"], r.get("target", ""))]
    t_tok = train_tokenizer(texts, vocab_size=1000, kind="llama")
    s_tok = train_tokenizer(texts, vocab_size=1000, kind="t5")
    save_model_dir(tiny_llama(t_tok, hidden=128, layers=2, heads=2, seed=1), t_tok, work / "teacher-base")
    common = dict(task="fever", max_source_length=64, max_target_length=16, max_new_tokens=16)
    teacher_label(TeacherLabelConfig(teacher=str(work / "teacher-base"), train=work / "gold.jsonl",
                                     pool=work / "pool.jsonl", out=work / "cache", epochs=12, batch_size=16,
                                     learning_rate=2e-3, top_k=20, label_batch_size=64, seed=0, **common))
    task = get_task("fever")
    sources, refs = [r["source"] for r in test], [r["target"] for r in test]
    teacher = AutoModelForCausalLM.from_pretrained(work / "cache.teacher")
    teacher_preds = predict(teacher, AutoTokenizer.from_pretrained(work / "cache.teacher"), "causal", task, sources,
                            batch_size=64, max_source_length=64, max_new_tokens=16)
    teacher_acc = sum(p == r for p, r in zip(teacher_preds, refs)) / len(refs)

    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in LOSSES}
    for seed in range(args.seeds):
        base = work / f"student-base-{seed}"
        save_model_dir(tiny_t5(s_tok, d_model=64, layers=2, heads=4, seed=100 + seed), s_tok, base)
        for name, alpha in LOSSES:
            out = work / f"run-{name}-{seed}"
            train_student(TrainStudentConfig(student=str(base), cache=work / "cache", out=out, kd_loss=name,
                                             alpha=alpha, max_steps=args.steps, batch_size=16, learning_rate=1e-3,
                                             seed=seed, eval_every=10**9, **common))
            model = AutoModelForSeq2SeqLM.from_pretrained(out)
            preds = predict(model, AutoTokenizer.from_pretrained(out), "seq2seq", task, sources, batch_size=64,
                            max_source_length=64, max_new_tokens=16)
            acc = sum(p == r for p, r in zip(preds, refs)) / len(refs)
            agree = sum(p == t for p, t in zip(preds, teacher_preds)) / len(refs)
            results[name].append((acc, agree))
            record = json.loads((out / "run.json").read_text())
            print(f"seed {seed} {name:<8} accuracy {acc:.3f} agreement {agree:.3f} alignment {record['alignment']}")

    def fmt(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {sd:.3f}"

    print(f"\nFEVER, Llama teacher (byte-level BPE) -> T5 student (Unigram), {args.steps} steps, {args.seeds} seeds, "
          f"600 held-out claims; teacher accuracy {teacher_acc:.3f}; {time.perf_counter() - start:.0f} s")
    print(f"| {'--kd-loss':<22} | {'accuracy':>15} | {'agreement with teacher':>22} |")
    print(f"|{'-' * 24}|{'-' * 17}|{'-' * 24}|")
    for name, alpha in LOSSES:
        label = f"{name} (alpha {alpha})"
        print(f"| {label:<22} | {fmt([a for a, _ in results[name]]):>15} | {fmt([g for _, g in results[name]]):>22} |")


if __name__ == "__main__":
    main()
