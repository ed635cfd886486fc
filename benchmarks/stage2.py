"""Stage 2 against its baselines: KD from the cache vs cross-entropy (the floor) vs the paper's
online teacher, and the cache reader's speed against what the student consumes.

    python benchmarks/stage2.py [--rows 1024] [--epochs 1] [--student-d 128] [--teacher-d 384] [--teacher-layers 4]

Builds a tokenizer and T5 models from configs (random weights: speed does not depend on them;
by default the teacher has about 16x the student's parameters), labels ``--rows`` FEVER claims
once with the teacher (k = 20), then times one epoch of student training through dora's loop:

* ``ce``: plain cross-entropy on the cached pseudo-labels (the floor: same tokens, no teacher);
* ``kd``: the top-k KL from the cache (dora's method);
* ``online``: the teacher runs on every batch and the student matches its full distribution
  (what the paper's code did: no cache, the teacher's forward pass in every step).

Then reads the whole cache as training does (Parquet shards -> features: tokenising sources,
slicing top-k arrays) and compares rows/s with the rows/s the KD student consumes.
Each timing is the best of two, alternating, so warm-up favours no one. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from importlib import resources
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--student-d", type=int, default=128)
    parser.add_argument("--teacher-d", type=int, default=384)
    parser.add_argument("--teacher-layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=20)
    args = parser.parse_args()

    from transformers import AutoModelForSeq2SeqLM

    from dora.cache import LabelCache
    from dora.pipeline.data.encoding import collate
    from dora.pipeline.kd.losses import full_kl_per_token
    from dora.pipeline.kd.objectives import OBJECTIVES, collate_kd, training_loss
    from dora.pipeline.models.scratch import save_model_dir, tiny_t5, train_tokenizer
    from dora.pipeline.stages.teacher_label import TeacherLabelConfig, teacher_label
    from dora.pipeline.train.finetune import sequence_loss
    from dora.pipeline.train.loop import LoopSettings, steps_per_epoch, train_loop
    from dora.progress import quiet_libraries

    quiet_libraries()
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="dora-stage2-"))
    rows = [json.loads(x) for x in resources.files("dora").joinpath("demo_data/fever.jsonl").read_text().splitlines()]
    tok = train_tokenizer([t for r in rows for t in ("fever: " + r["source"], r["target"])], vocab_size=2000)
    teacher = tiny_t5(tok, d_model=args.teacher_d, layers=args.teacher_layers, heads=8)
    student = tiny_t5(tok, d_model=args.student_d, layers=2, heads=4)
    n_t, n_s = (sum(p.numel() for p in m.parameters()) for m in (teacher, student))
    save_model_dir(teacher, tok, work / "teacher")
    save_model_dir(student, tok, work / "student")
    pool = [rows[i % len(rows)] for i in range(args.rows)]
    (work / "pool.jsonl").write_text("".join(json.dumps({"id": str(i), "source": r["source"]}) + "\n"
                                             for i, r in enumerate(pool)))
    teacher_label(TeacherLabelConfig(task="fever", teacher=str(work / "teacher"), finetune=False,
                                     pool=work / "pool.jsonl", out=work / "cache", top_k=args.top_k,
                                     max_new_tokens=16, label_batch_size=64, score_labels=False,
                                     shard_size=max(256, args.rows // 4)))
    cache = LabelCache.open(work / "cache")
    topk = OBJECTIVES["topk"](temperature=2.0, alpha=0.0, tail_index=OBJECTIVES["topk"].stored_tail(cache, 2.0))
    feats = [f for table in cache.iter_tables(topk.columns())
             for f in topk.featurise(table, tok, prefix="fever: ", max_source_length=256, max_target_length=64)]
    settings = LoopSettings(epochs=args.epochs, max_steps=None, batch_size=args.batch_size, grad_accum=1,
                            learning_rate=1e-3, warmup_ratio=0, weight_decay=0, seed=0, eval_every=None,
                            save_every=None, resume=False)
    steps = max(1, round(args.epochs * steps_per_epoch(len(feats), settings)))

    online_teacher = AutoModelForSeq2SeqLM.from_pretrained(work / "teacher").eval()
    for p in online_teacher.parameters():
        p.requires_grad_(False)

    def online_loss(model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).logits
        with torch.no_grad():
            t_logits = online_teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                      labels=batch["labels"]).logits
        mask = batch["labels"] != -100
        kl = full_kl_per_token(t_logits, logits, 2.0)  # KL(teacher || student)
        return (kl * mask).sum() / mask.sum().clamp(min=1)

    losses = {"ce": sequence_loss("seq2seq"),
              "kd": lambda m, b: training_loss(topk, m, b),
              "online": online_loss}
    seconds: dict[str, float] = {}
    for run, name in enumerate(["ce", "kd", "online", "ce", "kd", "online"]):
        model = AutoModelForSeq2SeqLM.from_pretrained(work / "student")
        collate_fn = (lambda f: collate_kd(f, tok.pad_token_id)) if name == "kd" else (lambda f: collate(f, tok.pad_token_id))
        result = train_loop(model=model, features=feats, collate=collate_fn, loss_fn=losses[name], settings=settings,
                            out_dir=work / f"run-{name}-{run}", save_model=lambda m, p, sd: None,
                            description=f"student {name}")
        seconds[name] = min(seconds.get(name, float("inf")), result.seconds)

    # The reader: shards -> features, as training streams them.
    def read() -> float:
        start = time.perf_counter()
        n = 0
        for entry in cache.manifest.shards:
            table = cache.read_shard(entry, topk.columns())
            n += len(topk.featurise(table, tok, prefix="fever: ", max_source_length=256, max_target_length=64))
        return n / (time.perf_counter() - start)

    def parquet_only() -> float:
        start = time.perf_counter()
        n = sum(cache.read_shard(e, topk.columns()).num_rows for e in cache.manifest.shards)
        return n / (time.perf_counter() - start)

    reader = max(read() for _ in range(2))
    raw = max(parquet_only() for _ in range(2))
    consumed = steps * args.batch_size / seconds["kd"]

    print(f"\nstage 2 on {torch.get_num_threads()} CPU threads: student {n_s / 1e6:.2f}M params, teacher "
          f"{n_t / 1e6:.2f}M ({n_t / n_s:.1f}x), {len(feats)} cached rows, k={args.top_k}, batch {args.batch_size}, "
          f"{steps} steps per epoch\n")
    print(f"{'measurement':<44} {'s/epoch':>9}  ratio")
    print(f"{'(a) cross-entropy on the same tokens (floor)':<44} {seconds['ce']:>9.2f}  baseline")
    print(f"{'(b) top-k KD from the cache (dora)':<44} {seconds['kd']:>9.2f}  {seconds['kd'] / seconds['ce']:.2f}x the floor")
    print(f"{'(c) online teacher on every batch (paper)':<44} {seconds['online']:>9.2f}  "
          f"{seconds['online'] / seconds['kd']:.2f}x the time of (b)")
    print(f"\n{'measurement':<44} {'rows/s':>9}  ratio")
    print(f"{'student consumes (KD training)':<44} {consumed:>9.0f}  baseline")
    print(f"{'cache reader: shards -> features':<44} {reader:>9.0f}  {reader / consumed:.1f}x consumption")
    print(f"{'cache reader: Parquet decode only':<44} {raw:>9.0f}  {raw / consumed:.1f}x consumption")


if __name__ == "__main__":
    main()
