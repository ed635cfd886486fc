"""GPU throughput at real sizes against the device's floor (run by hand on a GPU; never in CI).

    python benchmarks/gpu_throughput.py [--rows 4096] [--student-steps 100] [--peak-tflops X --bandwidth-gbs Y]

Random weights (speed does not depend on them), sizes of the paper's family:

* teacher: a T5 with T5-v1_1-large's shape (d_model 1024, 24+24 layers, d_ff 2816, 0.8B
  parameters) labels ``--rows`` FEVER claims through ``dora teacher-label`` (transformers
  engine, bf16, k = 20, 16 new tokens): generated tokens/s against two ceilings, the compute
  one (peak FLOP/s over 2 FLOPs per decoder parameter per token) and the memory one (each
  decoding step reads the decoder's weights once per batch);
* the same teacher through ``--engine ctranslate2`` when CTranslate2 is installed (its default
  on a GPU with bf16: bfloat16, after the agreement check against float32 on 64 rows), with the
  speed-up over the transformers engine and the agreement;
* student: T5-v1_1-small's shape (d_model 512, 8+8 layers, d_ff 1024, 6 heads, vocab 32128,
  77M parameters) trains on that cache with the top-k KD loss through ``dora train-student``:
  tokens/s and model FLOP utilisation (6 FLOPs per parameter per token, encoder parameters
  per source token, decoder and head per target token) against the device's peak.

Peaks are looked up by device name (dense bf16 FLOP/s and memory bandwidth from the vendors'
data sheets) or given with --peak-tflops / --bandwidth-gbs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import torch

# Dense bf16 FLOP/s and HBM bandwidth (bytes/s), vendors' data sheets (SXM parts).
PEAKS = {"H200": (989e12, 4.8e12), "H100": (989e12, 3.35e12), "A100": (312e12, 2.0e12), "L40S": (362e12, 0.864e12),
         "L4": (121e12, 0.3e12), "A10": (125e12, 0.6e12)}


def t5(tokenizer, *, d_model: int, layers: int, d_ff: int, heads: int, d_kv: int = 64):
    from transformers import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration(T5Config(
        vocab_size=32128, d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=layers, num_decoder_layers=layers,
        num_heads=heads, feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id))


def split_params(model) -> tuple[int, int]:
    """(encoder parameters, decoder parameters including the output head); embeddings excluded."""
    enc = sum(p.numel() for n, p in model.named_parameters() if n.startswith("encoder.") and "embed" not in n)
    dec = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("decoder.", "lm_head")) and "embed" not in n)
    return enc, dec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--student-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--peak-tflops", type=float)
    parser.add_argument("--bandwidth-gbs", type=float)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: run this on a machine with a GPU")
        return 2
    name = torch.cuda.get_device_name(0)
    known = next((v for k, v in PEAKS.items() if k in name), None)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else (known[0] if known else None)
    bandwidth = args.bandwidth_gbs * 1e9 if args.bandwidth_gbs else (known[1] if known else None)

    from dora.pipeline.models.scratch import save_model_dir, train_tokenizer
    from dora.pipeline.stages.teacher_label import TeacherLabelConfig, teacher_label
    from dora.pipeline.stages.train_student import TrainStudentConfig, train_student
    from dora.progress import quiet_libraries

    quiet_libraries()
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="dora-gpu-throughput-"))
    rows = [json.loads(x) for x in resources.files("dora").joinpath("demo_data/fever.jsonl").read_text().splitlines()]
    tok = train_tokenizer([t for r in rows for t in ("fever: " + r["source"], r["target"])], vocab_size=8000)
    teacher = t5(tok, d_model=1024, layers=24, d_ff=2816, heads=16)
    student = t5(tok, d_model=512, layers=8, d_ff=1024, heads=6)
    t_enc, t_dec = split_params(teacher)
    s_enc, s_dec = split_params(student)
    save_model_dir(teacher, tok, work / "teacher")
    save_model_dir(student, tok, work / "student")
    del teacher, student
    (work / "pool.jsonl").write_text("".join(json.dumps({"id": str(i), "source": rows[i % len(rows)]["source"]}) + "\n"
                                             for i in range(args.rows)))

    labeled = teacher_label(TeacherLabelConfig(task="fever", teacher=str(work / "teacher"), finetune=False,
                                               pool=work / "pool.jsonl", out=work / "cache", top_k=20,
                                               max_new_tokens=16, label_batch_size=256, dtype="bfloat16",
                                               score_labels=False))
    lab = labeled.costs["labeling"]
    gen_tps = lab["tokens"] / lab["wall_seconds"]
    ct2_tps, agreement = None, None
    import importlib.util

    if importlib.util.find_spec("ctranslate2") is not None:
        ct2 = teacher_label(TeacherLabelConfig(task="fever", teacher=str(work / "teacher"), finetune=False,
                                               pool=work / "pool.jsonl", out=work / "cache-ct2", top_k=20,
                                               max_new_tokens=16, label_batch_size=256, engine="ctranslate2",
                                               score_labels=False))
        ct2_tps = ct2.costs["labeling"]["tokens"] / ct2.costs["labeling"]["wall_seconds"]
        agreement = ct2.manifest.generation.engine.get("agreement")

    start = time.perf_counter()
    result = train_student(TrainStudentConfig(task="fever", student=str(work / "student"), cache=work / "cache",
                                              out=work / "student-run", max_steps=args.student_steps,
                                              batch_size=args.batch_size, max_source_length=128, resume=False))
    rec = result.record
    wall = time.perf_counter() - start
    # Tokens the loop counted: source (attention mask) + target (labels) tokens.
    tokens_per_s = rec["tokens_seen"] / rec["train_seconds"]
    # Split the counted tokens into source and target as the data does (measured, not assumed).
    src = sum(min(len(tok("fever: " + rows[i % len(rows)]["source"])["input_ids"]), 128) for i in range(args.rows))
    tgt = labeled.manifest.stats["tokens"]
    src_share = src / (src + tgt)
    flops_per_s = 6 * (s_enc * tokens_per_s * src_share + s_dec * tokens_per_s * (1 - src_share))

    print(f"\nGPU throughput on {name} (peak {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s bf16, "
          f"{bandwidth / 1e9 if bandwidth else float('nan'):.0f} GB/s)")
    print(f"{'measurement':<58} {'value':>12}  against the floor")
    ceiling_c = peak / (2 * t_dec) if peak else None
    print(f"{'teacher 0.8B (T5-v1_1-large shape) labeling, gen tokens/s':<58} {gen_tps:>12.0f}  "
          + (f"compute ceiling {ceiling_c:,.0f} tok/s ({gen_tps / ceiling_c:.1%})" if ceiling_c else "peak unknown"))
    if bandwidth:
        # Each decoding step reads the decoder weights (bf16) once for a whole batch of 256 rows.
        ceiling_m = bandwidth / (2 * t_dec) * 256
        print(f"{'':<58} {'':>12}  memory ceiling at batch 256 {ceiling_m:,.0f} tok/s ({gen_tps / ceiling_m:.1%})")
    if ct2_tps is not None:
        print(f"{'same teacher, --engine ctranslate2 (default type), gen tok/s':<58} {ct2_tps:>12.0f}  "
              f"{ct2_tps / gen_tps:.2f}x the transformers engine (both include engine start)")
        if agreement:
            print(f"{'':<58} {'':>12}  {agreement['compute_type']} vs float32: labels equal "
                  f"{agreement['labels_equal']:.1%}, mean |delta logprob| {agreement['mean_abs_logprob_difference']:.2g}")
    print(f"{'student 77M (T5-v1_1-small shape) KD training, tokens/s':<58} {tokens_per_s:>12.0f}  "
          + (f"MFU {flops_per_s / peak:.1%} of {peak / 1e12:.0f} TFLOP/s" if peak else "peak unknown"))
    print(f"{'student steps/s (batch ' + str(args.batch_size) + ')':<58} {rec['steps_per_second']:>12.2f}  "
          f"stage wall {wall:.0f} s incl. loading")
    print(f"parameters: teacher encoder {t_enc / 1e6:.0f}M, decoder+head {t_dec / 1e6:.0f}M; student encoder "
          f"{s_enc / 1e6:.0f}M, decoder+head {s_dec / 1e6:.0f}M")
    return 0


if __name__ == "__main__":
    sys.exit(main())
