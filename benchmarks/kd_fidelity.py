"""How close the cached KD loss is to the paper's full-vocabulary KL, format 1 against format 2.

    python benchmarks/kd_fidelity.py [--workdir /tmp/dora-real-teacher] [--rows 256]

The paper's loss is ``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` over the whole
vocabulary, with the teacher run online. dora's cache keeps the teacher's top-k (float16) and,
since format 2, its tail mass outside the top-k at each T (float32). On a teacher trained for
real (``benchmarks/real_teacher.py``: a T5 trained on WLP), this keeps the teacher's full logits
in memory as the reference and, for k in 5, 20, 64 and T in 1, 2, reports for the cached loss
(format 1: tail only at T = 1, inferred from the top-k; format 2: the stored tail at T):

* the relative error of the loss against the full KL, over all label tokens of ``--rows`` rows;
* the cosine between its gradient and the full KL's gradient with respect to the student's
  logits (what training follows), over the same tokens;
* the teacher's mean mass outside the top-k at T (what format 1 drops at T > 1).

The student is a smaller T5 trained briefly on gold labels (neither the teacher nor noise).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dora-real-teacher"))
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    from real_teacher import build
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from dora.cache import LabelCache
    from dora.pipeline.data.encoding import decoder_inputs, pad
    from dora.pipeline.engines.generation import tail_logprobs
    from dora.pipeline.kd.losses import full_kl_per_token, topk_kl_per_token, topk_kl_per_token_v1

    built = build(args.workdir)
    cache = LabelCache.open(built["cache"])
    tok = AutoTokenizer.from_pretrained(built["teacher"])
    teacher = AutoModelForSeq2SeqLM.from_pretrained(built["teacher"]).eval()
    student = AutoModelForSeq2SeqLM.from_pretrained(built["student"]).eval()
    rows = cache.read(["source", "target_ids"]).slice(0, args.rows).to_pylist()
    prefix = cache.manifest.task["source_prefix"]
    ks, temps = (5, 20, 64), (1.0, 2.0)
    acc = {(k, t, name): torch.zeros(4, dtype=torch.float64) for k in ks for t in temps for name in ("v1", "v2")}
    ref_loss = {t: 0.0 for t in temps}
    tail_mass = {(k, t): 0.0 for k in ks for t in temps}
    n_tokens = 0
    for start in range(0, len(rows), args.batch):
        batch = rows[start : start + args.batch]
        enc = [tok(prefix + r["source"], truncation=True, max_length=80)["input_ids"] for r in batch]
        x, mask = pad(enc, tok.pad_token_id), pad([[1] * len(e) for e in enc], 0)
        labels = pad([r["target_ids"] for r in batch], -100)
        keep = labels != -100
        with torch.no_grad():
            t_logits = teacher(input_ids=x, attention_mask=mask, decoder_input_ids=decoder_inputs(teacher, labels)).logits
            s_logits = student(input_ids=x, attention_mask=mask, decoder_input_ids=decoder_inputs(student, labels)).logits
        t_logits, s_logits = t_logits[keep], s_logits[keep]  # (N, V): label tokens only
        n_tokens += len(t_logits)
        for t in temps:
            s = s_logits.clone().requires_grad_(True)
            full = full_kl_per_token(t_logits, s, t).sum()
            (g_full,) = torch.autograd.grad(full, s)
            ref_loss[t] += full.item()
            for k in ks:
                top = torch.log_softmax(t_logits.float(), -1).topk(k, dim=-1)
                lp16 = top.values.half().float()  # as the cache stores them
                tail = tail_logprobs(t_logits, top.indices, [t])[..., 0]
                tail_mass[(k, t)] += float(tail.exp().sum())
                for name in ("v1", "v2"):
                    s = s_logits.clone().requires_grad_(True)
                    if name == "v1":
                        loss = topk_kl_per_token_v1(torch.log_softmax(s, -1), top.indices, lp16, t).sum()
                    else:
                        loss = topk_kl_per_token(torch.log_softmax(s / t, -1), top.indices, lp16, tail, t).sum()
                    (g,) = torch.autograd.grad(loss, s)
                    acc[(k, t, name)] += torch.tensor([float(loss), float((g * g_full).sum()),
                                                       float((g * g).sum()), float((g_full * g_full).sum())],
                                                      dtype=torch.float64)
    print(f"teacher {built['teacher']} ({built['task']}, vocabulary {built['vocab']}, trained {built['steps']} steps); "
          f"student {built['student']}; {len(rows)} rows, {n_tokens} label tokens")
    print(f"| {'k':>3} | {'T':>3} | {'teacher tail mass':>17} | {'full KL/token':>13} | {'v1 loss rel. err':>16} | "
          f"{'v2 loss rel. err':>16} | {'v1 grad cosine':>14} | {'v2 grad cosine':>14} |")
    print(f"|{'-' * 5}|{'-' * 5}|{'-' * 19}|{'-' * 15}|{'-' * 18}|{'-' * 18}|{'-' * 16}|{'-' * 16}|")
    results = []
    for k in ks:
        for t in temps:
            row = {"k": k, "T": t, "tail_mass": tail_mass[(k, t)] / n_tokens, "full_kl": ref_loss[t] / n_tokens}
            for name in ("v1", "v2"):
                loss, dot, gg, ff = acc[(k, t, name)].tolist()
                row[f"{name}_rel_err"] = abs(loss - ref_loss[t]) / ref_loss[t]
                row[f"{name}_cosine"] = dot / (gg * ff) ** 0.5
            results.append(row)
            print(f"| {k:>3} | {t:>3g} | {row['tail_mass']:>17.4f} | {row['full_kl']:>13.4f} | "
                  f"{row['v1_rel_err']:>16.4f} | {row['v2_rel_err']:>16.4f} | {row['v1_cosine']:>14.4f} | "
                  f"{row['v2_cosine']:>14.4f} |")
    (args.workdir / "kd_fidelity.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
