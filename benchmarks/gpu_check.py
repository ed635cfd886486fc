"""GPU check: run both stages on one CUDA device and compare with the CPU where it must agree.

    python benchmarks/gpu_check.py [--d-model 512] [--rows 2048]

Run by hand on a machine with a GPU and dora installed (`pip install -e .`); never in CI.
Checks that (1) the transformers engine labels the same greedy pseudo-labels on the GPU in
float32 as on the CPU, with top-k log-probabilities within 1e-3, and so does the CTranslate2
engine on the GPU in float32 when it is installed; (2) the student trains with
bf16 autocast where the device supports it, and the run record names the GPU; and prints
throughput of each stage on the GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--rows", type=int, default=2048)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this script checks the GPU path; run it where a GPU exists")
        return 2

    from dora.pipeline.data.encoding import encode_prompts
    from dora.pipeline.engines.generation import hf_generate
    from dora.pipeline.models.scratch import save_model_dir, tiny_t5, train_tokenizer
    from dora.pipeline.stages.teacher_label import TeacherLabelConfig, teacher_label
    from dora.pipeline.stages.train_student import TrainStudentConfig, train_student
    from dora.pipeline.train.loop import mixed_precision
    from dora.progress import quiet_libraries

    quiet_libraries()
    work = Path(tempfile.mkdtemp(prefix="dora-gpu-"))
    rows = [json.loads(x) for x in resources.files("dora").joinpath("demo_data/fever.jsonl").read_text().splitlines()]
    tok = train_tokenizer([t for r in rows for t in ("fever: " + r["source"], r["target"])], vocab_size=4000)
    save_model_dir(tiny_t5(tok, d_model=args.d_model, layers=6, heads=8), tok, work / "teacher")
    save_model_dir(tiny_t5(tok, d_model=args.d_model // 2, layers=4, heads=4), tok, work / "student")
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:512]))
    pool = [rows[512 + i % (len(rows) - 512)] for i in range(args.rows)]
    (work / "pool.jsonl").write_text("".join(json.dumps({"id": str(i), "source": r["source"]}) + "\n"
                                             for i, r in enumerate(pool)))
    (work / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[-256:]))

    labeled = teacher_label(TeacherLabelConfig(task="fever", teacher=str(work / "teacher"), train=work / "train.jsonl",
                                               pool=work / "pool.jsonl", out=work / "cache", max_steps=100,
                                               batch_size=32, label_batch_size=256, max_new_tokens=16))
    ft, lab = labeled.costs["teacher_finetune"], labeled.costs["labeling"]

    # (1) GPU float32 labels == CPU labels for the same fine-tuned teacher.
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    teacher_tok = AutoTokenizer.from_pretrained(work / "cache.teacher")
    texts = ["fever: " + r["source"] for r in pool[:64]]
    outs = {}
    for device in ("cpu", "cuda"):
        model = AutoModelForSeq2SeqLM.from_pretrained(work / "cache.teacher").to(device)
        outs[device] = hf_generate(model, teacher_tok, "seq2seq", encode_prompts(teacher_tok, texts, 256),
                                   batch_size=32, max_new_tokens=16, k=20, device=torch.device(device))
    same_ids = all(a.ids.tolist() == b.ids.tolist() for a, b in zip(outs["cpu"], outs["cuda"]))
    max_diff = max(float(np.abs(a.topk_logprobs - b.topk_logprobs).max()) for a, b in zip(outs["cpu"], outs["cuda"]))
    ct2_same, ct2_diff = None, None
    import importlib.util

    if importlib.util.find_spec("ctranslate2") is not None:
        from dora.pipeline.engines.ctranslate2_engine import CTranslate2Engine
        from dora.pipeline.engines.settings import EngineSettings

        engine = CTranslate2Engine.start(str(work / "cache.teacher"), teacher_tok, "seq2seq", EngineSettings(
            top_k=20, max_source_length=256, max_new_tokens=16, batch_size=32, dtype="float32", compute_type="float32",
            engine_args={"device": "cuda"}))
        got = engine.label(encode_prompts(teacher_tok, texts, 256))
        ct2_same = all(a.ids.tolist() == b.ids.tolist() for a, b in zip(outs["cpu"], got))
        ct2_diff = max(float(np.abs(a.topk_logprobs - b.topk_logprobs).max()) for a, b in zip(outs["cpu"], got))

    # (2) The student on the GPU, bf16 where supported.
    start = time.perf_counter()
    student = train_student(TrainStudentConfig(task="fever", student=str(work / "student"), cache=work / "cache",
                                               dev=work / "test.jsonl", out=work / "distill", max_steps=200,
                                               batch_size=64, max_new_tokens=16))
    seconds = time.perf_counter() - start
    rec = student.record

    print(f"\nGPU check on {torch.cuda.get_device_name(0)} (mixed precision: {mixed_precision()})")
    print(f"{'check':<52} result")
    print(f"{'greedy ids equal, GPU fp32 vs CPU (64 rows)':<52} {same_ids}")
    print(f"{'max |top-k logprob diff|, GPU vs CPU':<52} {max_diff:.2e}")
    if ct2_same is not None:
        print(f"{'CTranslate2 GPU fp32 greedy ids equal CPU transformers':<52} {ct2_same}")
        print(f"{'max |top-k logprob diff|, CTranslate2 GPU vs CPU':<52} {ct2_diff:.2e}")
    print(f"{'run record names the GPU':<52} {'cpu' not in rec['cost']['device']} ({rec['cost']['device']})")
    print(f"{'teacher fine-tune steps/s':<52} {100 / ft['wall_seconds']:.2f}")
    print(f"{'labeling generated tokens/s':<52} {lab['tokens'] / lab['wall_seconds']:.0f}")
    print(f"{'student steps/s (incl. evaluation)':<52} {rec['steps'] / seconds:.2f}")
    print(f"{'student train steps/s (loop only)':<52} {rec['steps_per_second']:.2f}")
    ok = same_ids and max_diff < 1e-3 and "cpu" not in rec["cost"]["device"]
    ok = ok and (ct2_same is None or (ct2_same and ct2_diff < 1e-3))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
