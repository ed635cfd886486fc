"""T5 labeling throughput: dora's CTranslate2 engine against dora's transformers engine and the
bare engines they wrap, same model and prompts, in one process, alternating runs.

    python benchmarks/ctranslate2_t5.py [--d-model 512] [--layers 6] [--rows 256] [--repeats 3]

Builds a T5 of t5-small shape (ReLU, tied and scaled head, 32128 outputs like T5's; random
weights: speed does not depend on them) with a Unigram tokenizer trained on the shipped FEVER sample, and measures generated
tokens per second (greedy, up to 16 new tokens, top-20 per step kept by the dora engines) of

  (a) bare Hugging Face ``generate`` (same batches, no logits kept),
  (b) dora's transformers engine (``TransformersEngine.label``: raw logits, top-k, tails at T = 1, 2),
  (c) bare CTranslate2 ``translate_batch`` (float32, ``return_logits_vocab``),
  (d) dora's CTranslate2 engine (``CTranslate2Engine.label``),
  (e) bare CTranslate2 in int8, (f) dora's CTranslate2 engine in int8 (``--compute-type int8``).

Prints the median of the repeats and the ratios: dora's overhead (b)/(a), (d)/(c) and (f)/(e) in
seconds per token, and the speed-ups over (b). Needs ``ctranslate2``. On random weights int8
changes labels, so (e)/(f) measure speed only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from importlib import resources
from pathlib import Path

K, NEW_TOKENS, BATCH = 20, 16, 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab-size", type=int, default=32128,
                        help="The model's output size (T5 pads its 32k vocabulary to 32128; the tokenizer has fewer)")
    args = parser.parse_args()

    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from dora.pipeline.data.encoding import encode_prompts, pad
    from dora.pipeline.engines.ctranslate2_engine import CTranslate2Engine
    from dora.pipeline.engines.settings import EngineSettings
    from dora.pipeline.engines.transformers_engine import TransformersEngine
    from dora.pipeline.models.scratch import save_model_dir, train_tokenizer
    from dora.progress import quiet_libraries

    quiet_libraries()
    data = [json.loads(x) for x in resources.files("dora").joinpath("demo_data/fever.jsonl").read_text().splitlines()]
    tok = train_tokenizer([t for r in data for t in ("fever: " + r["source"], r["target"])], vocab_size=8000)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(
        vocab_size=max(args.vocab_size, len(tok)), d_model=args.d_model, d_kv=64, d_ff=4 * args.d_model, num_layers=args.layers,
        num_decoder_layers=args.layers, num_heads=args.d_model // 64, feed_forward_proj="relu",
        tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id)).eval()
    prompts = encode_prompts(tok, ["fever: " + data[i % len(data)]["source"] for i in range(args.rows)], 64)
    settings = EngineSettings(top_k=K, max_source_length=64, max_new_tokens=NEW_TOKENS, batch_size=BATCH,
                              dtype="float32")
    with tempfile.TemporaryDirectory() as work:
        import os

        os.environ.setdefault("DORA_HOME", str(Path(work) / "home"))
        save_model_dir(model, tok, Path(work) / "t5")
        hf_engine = TransformersEngine(model, tok, "seq2seq", settings)
        ct2_engine = CTranslate2Engine.start(str(Path(work) / "t5"), tok, "seq2seq", settings, model=model)
        int8_engine = CTranslate2Engine.start(str(Path(work) / "t5"), tok, "seq2seq",
                                              dataclasses.replace(settings, compute_type="int8"))
        token_prompts = [tok.convert_ids_to_tokens(p) for p in prompts]

        def bare_hf() -> int:
            n = 0
            with torch.inference_mode():
                for s in range(0, len(prompts), BATCH):
                    batch = prompts[s : s + BATCH]
                    x, mask = pad(batch, tok.pad_token_id), pad([[1] * len(b) for b in batch], 0)
                    out = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False)
                    for row in out[:, 1:].tolist():  # up to and with EOS, as the engines count
                        n += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
            return n

        def bare_ct2(translator) -> int:
            n = 0
            for s in range(0, len(prompts), BATCH):
                results = translator.translate_batch(token_prompts[s : s + BATCH], beam_size=1,
                                                     max_decoding_length=NEW_TOKENS, min_decoding_length=0,
                                                     return_end_token=True, return_logits_vocab=True)
                n += sum(len(r.hypotheses[0]) for r in results)
            return n

        def engine(e: object) -> int:
            return sum(len(g.ids) for g in e.label(prompts))  # type: ignore[attr-defined]

        runs = {"(a) bare HF generate": bare_hf, "(b) dora transformers": lambda: engine(hf_engine),
                "(c) bare CTranslate2": lambda: bare_ct2(ct2_engine.translator),
                "(d) dora CTranslate2": lambda: engine(ct2_engine),
                "(e) bare CTranslate2 int8": lambda: bare_ct2(int8_engine.translator),
                "(f) dora CTranslate2 int8": lambda: engine(int8_engine)}
        speed: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):  # alternate, so drift on a noisy machine hits every column alike
            for name, run in runs.items():
                start = time.perf_counter()
                tokens = run()
                speed[name].append(tokens / (time.perf_counter() - start))
    med = {name: statistics.median(v) for name, v in speed.items()}
    print(f"T5 d_model {args.d_model}, {args.layers}+{args.layers} layers, output vocabulary "
          f"{max(args.vocab_size, len(tok))} ({len(tok)} tokenizer pieces), {args.rows} prompts, "
          f"batch {BATCH}, {NEW_TOKENS} new tokens, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'run':<26}{'tokens/s':>10}")
    for name, value in med.items():
        print(f"{name:<26}{value:>10.0f}")
    a, b, c, d, e, f = med.values()
    print(f"dora overhead over bare: transformers {a / b - 1:+.1%}, CTranslate2 {c / d - 1:+.1%}, "
          f"CTranslate2 int8 {e / f - 1:+.1%}")
    print(f"CTranslate2 engine vs transformers engine: float32 {d / b:.2f}x, int8 {f / b:.2f}x; "
          f"bare CTranslate2 vs bare HF: float32 {c / a:.2f}x, int8 {e / a:.2f}x")


if __name__ == "__main__":
    main()
