"""Bytes the label cache spends per token and per stored top-k entry, and what float16 costs in KD fidelity.

    python benchmarks/cache_size.py [--tokens 20000] [--vocab 32128]

Synthesises teacher distributions like a fine-tuned T5's (peaked: a few likely tokens over a
long tail), writes cache shards exactly as ``dora teacher-label`` does (zstd Parquet, float16
logprobs, int32 ids) for k in {5, 20, 64, 128}, and reports bytes per generated token and per
stored (id, logprob) entry, against full float16 logits (2 bytes x vocabulary per token), and
the KD fidelity cost of float16 storage: KL between the exact top-k-plus-tail distribution and
the stored one, in nats per token. (DistillKit's recommended configuration stores about 2.7
bytes per entry.)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

DISTILLKIT_BYTES_PER_ENTRY = 2.7  # its recommended configuration, per stored (id, logprob) entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20000)
    parser.add_argument("--vocab", type=int, default=32128)
    parser.add_argument("--seq-len", type=int, default=8)
    args = parser.parse_args()

    from dora.cache.schema import shard_schema
    from dora.cache.writer import PARQUET_OPTIONS
    from dora.pipeline.losses import topk_kl_per_token

    g = torch.Generator().manual_seed(0)
    # Peaked logits: a Zipf-like base over the vocabulary plus a few strongly preferred tokens.
    base = -torch.log(torch.arange(1, args.vocab + 1, dtype=torch.float32)) * 1.1
    logits = base[torch.randperm(args.vocab, generator=g)].expand(args.tokens, -1).clone()
    logits += torch.randn(args.tokens, args.vocab, generator=g) * 0.5
    hot = torch.randint(0, args.vocab, (args.tokens, 3), generator=g)
    logits.scatter_add_(1, hot, torch.tensor([[6.0, 4.0, 3.0]]).expand(args.tokens, -1))
    logp = torch.log_softmax(logits, dim=-1)
    rows = args.tokens // args.seq_len
    work = Path(tempfile.mkdtemp(prefix="dora-size-"))
    print(f"{args.tokens} generated tokens in {rows} rows of {args.seq_len}, vocabulary {args.vocab}")
    print(f"| {'k':>4} | {'bytes/token':>11} | {'bytes/entry':>11} | {'vs full fp16 logits':>19} | "
          f"{'vs DistillKit 2.7':>16} | {'fp16 KL nats/token':>18} |")
    print(f"|{'-' * 6}|{'-' * 13}|{'-' * 13}|{'-' * 21}|{'-' * 18}|{'-' * 20}|")
    for k in (5, 20, 64, 128):
        top = logp.topk(k, dim=-1)
        ids, lp = top.indices.int().numpy(), top.values.numpy()
        offsets = pa.array(np.arange(0, rows * args.seq_len + 1, args.seq_len, dtype=np.int32))

        def nested(values: np.ndarray, kind: pa.DataType, offsets: pa.Array = offsets, k: int = k) -> pa.Array:
            return pa.ListArray.from_arrays(offsets, pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), kind), k))

        n = rows * args.seq_len
        table = pa.Table.from_arrays([
            pa.array([f"r{i}" for i in range(rows)]), pa.array(np.arange(rows, dtype=np.int64)),
            pa.array(["a source sentence of ordinary length for the pool"] * rows),
            pa.array(["pseudo label text"] * rows),
            pa.ListArray.from_arrays(offsets, pa.array(ids[:n, 0], pa.int32())),
            nested(ids[:n], pa.int32()), nested(lp[:n].astype(np.float16), pa.float16()),
            pa.array(lp[:n, 0].reshape(rows, args.seq_len).sum(1), pa.float32()),
        ], schema=shard_schema(k))
        path = work / f"k{k}.parquet"
        pq.write_table(table, path, **PARQUET_OPTIONS)
        size = path.stat().st_size
        # Fidelity: exact top-k (float32) as "student" vs the float16-stored teacher, T = 1.
        stored = torch.from_numpy(lp.astype(np.float16).astype(np.float32))
        exact_logits = logits  # the distribution the float32 top-k came from
        kl = topk_kl_per_token(exact_logits[:, None], top.indices[:, None], stored[:, None], 1.0)
        full = 2 * args.vocab
        print(f"| {k:>4} | {size / n:>11.2f} | {size / (n * k):>11.2f} | {size / n / full:>18.2%} | "
              f"{size / (n * k) / DISTILLKIT_BYTES_PER_ENTRY:>15.2f}x | {kl.mean():>18.2e} |")


if __name__ == "__main__":
    main()
