"""Bytes the label cache spends per token and per stored top-k entry, format 1 against format 2,
and what float16 costs in KD fidelity.

    python benchmarks/cache_size.py [--real /tmp/dora-real-teacher] [--tokens 20000] [--vocab 32128]

Real teacher output (``--real``, built by ``benchmarks/real_teacher.py`` when missing): the pool
a T5 trained on WLP labeled with k = 64, cut to k = 5, 20 and 64 and written three ways:

* format 1 as dora 0.1 wrote it: int32 ids, no tails, zstd at its default level, byte-stream
  split on the log-probabilities only;
* format 2 as ``dora teacher-label`` writes it now (``dora.cache.shard.parquet_options``):
  uint16 ids, ``tail_logprobs`` at T = 1 and 2 (float32), byte-stream split on ids, log-probs
  and tails, zstd level 9;
* format 2 without its tails, to show what they cost.

Bytes per entry are whole-shard bytes over (generated tokens x k). Synthetic distributions (a
Zipf-like base plus a few likely tokens over a 32,128 vocabulary, uniformly random ids: the
worst case for compression) add the float16 fidelity column: the KL between the exact top-k
plus tail and the stored one, in nats per token.
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

DISTILLKIT_BYTES_PER_ENTRY = 2.7  # its recommended configuration, per stored (id, logprob) entry
V1_OPTIONS = {"compression": "zstd", "row_group_size": 2048, "use_dictionary": ["id", "source", "target"],
              "column_encoding": {"topk_logprobs.list.element.list.element": "BYTE_STREAM_SPLIT"}}


def _bytes(table: pa.Table, options: dict) -> int:
    buf = io.BytesIO()
    pq.write_table(table, buf, **options)
    return buf.tell()


def _cut(table: pa.Table, k: int, k_stored: int) -> pa.Table:
    """The same rows with only the first k of the stored top-k."""
    for name in ("topk_ids", "topk_logprobs"):
        col = table.column(name).combine_chunks()
        flat = col.values.values.to_numpy(zero_copy_only=False).reshape(-1, k_stored)[:, :k].reshape(-1)
        cut = pa.ListArray.from_arrays(col.offsets, pa.FixedSizeListArray.from_arrays(pa.array(flat), k))
        table = table.set_column(table.schema.get_field_index(name), name, cut)
    return table


def real(workdir: Path) -> None:
    from real_teacher import build

    from dora.cache import LabelCache, shard_schema
    from dora.cache.shard import parquet_options

    built = build(workdir)
    cache = LabelCache.open(built["cache"])
    table = cache.read()
    k_stored, labels = cache.manifest.generation.k, cache.manifest.generation.label_set is not None
    tokens = sum(s.tokens for s in cache.manifest.shards)
    print(f"real teacher output: {built['teacher']} ({built['task']}, vocabulary {built['vocab']}), "
          f"{table.num_rows} rows, {tokens} generated tokens")
    print(f"| {'k':>3} | {'format 1 B/entry':>16} | {'format 2 B/entry':>16} | {'format 2 vs 1':>13} | "
          f"{'format 2 without tails':>22} | {'tails B/token':>13} |")
    print(f"|{'-' * 5}|{'-' * 18}|{'-' * 18}|{'-' * 15}|{'-' * 24}|{'-' * 15}|")
    for k in (5, 20, 64):
        cut = _cut(table, k, k_stored)
        v1 = cut.drop_columns(["tail_logprobs"]).cast(shard_schema(k, labels))
        v2 = cut.cast(shard_schema(k, labels, id_type=cache.manifest.generation.id_type, temperatures=2))
        no_tail = v2.drop_columns(["tail_logprobs"])
        b1, b2, b3 = _bytes(v1, V1_OPTIONS), _bytes(v2, parquet_options(v2.schema)), _bytes(no_tail,
                                                                                            parquet_options(no_tail.schema))
        n = tokens * k
        print(f"| {k:>3} | {b1 / n:>16.3f} | {b2 / n:>16.3f} | {b2 / b1 - 1:>+12.1%} | {b3 / n:>16.3f} ({b3 / b1 - 1:+.0%}) "
              f"| {(b2 - b3) / tokens:>13.2f} |")


def synthetic(n_tokens: int, vocab: int, seq_len: int) -> None:
    from dora.cache.schema import shard_schema
    from dora.cache.shard import parquet_options
    from dora.pipeline.engines.generation import tail_logprobs
    from dora.pipeline.kd.losses import topk_kl_per_token

    g = torch.Generator().manual_seed(0)
    # Peaked logits: a Zipf-like base over the vocabulary plus a few strongly preferred tokens.
    base = -torch.log(torch.arange(1, vocab + 1, dtype=torch.float32)) * 1.1
    logits = base[torch.randperm(vocab, generator=g)].expand(n_tokens, -1).clone()
    logits += torch.randn(n_tokens, vocab, generator=g) * 0.5
    hot = torch.randint(0, vocab, (n_tokens, 3), generator=g)
    logits.scatter_add_(1, hot, torch.tensor([[6.0, 4.0, 3.0]]).expand(n_tokens, -1))
    logp = torch.log_softmax(logits, dim=-1)
    rows = n_tokens // seq_len
    n = rows * seq_len
    print(f"\nsynthetic: {n_tokens} generated tokens in {rows} rows of {seq_len}, vocabulary {vocab}, uniformly random ids")
    print(f"| {'k':>4} | {'bytes/token':>11} | {'bytes/entry':>11} | {'vs full fp16 logits':>19} | "
          f"{'vs DistillKit 2.7':>16} | {'fp16 KL nats/token':>18} |")
    print(f"|{'-' * 6}|{'-' * 13}|{'-' * 13}|{'-' * 21}|{'-' * 18}|{'-' * 20}|")
    offsets = pa.array(np.arange(0, n + 1, seq_len, dtype=np.int32))
    for k in (5, 20, 64, 128):
        top = logp.topk(k, dim=-1)
        ids, lp = top.indices.numpy(), top.values.numpy()
        tails = tail_logprobs(logits, top.indices, [1.0, 2.0]).numpy()

        def nested(values: np.ndarray, kind: pa.DataType, width: int) -> pa.Array:
            return pa.ListArray.from_arrays(offsets, pa.FixedSizeListArray.from_arrays(pa.array(values[:n].reshape(-1),
                                                                                                 kind), width))

        schema = shard_schema(k, id_type="uint16", temperatures=2)
        table = pa.Table.from_arrays([
            pa.array([f"r{i}" for i in range(rows)]), pa.array(np.arange(rows, dtype=np.int64)),
            pa.array(["a source sentence of ordinary length for the pool"] * rows),
            pa.array(["pseudo label text"] * rows),
            pa.ListArray.from_arrays(offsets, pa.array(ids[:n, 0], pa.uint16())),
            nested(ids, pa.uint16(), k), nested(lp.astype(np.float16), pa.float16(), k),
            nested(tails, pa.float32(), 2), pa.array(lp[:n, 0].reshape(rows, seq_len).sum(1), pa.float32()),
        ], schema=schema)
        size = _bytes(table, parquet_options(schema))
        # Fidelity: the exact distribution (float32 logits) as "student" against the float16-stored teacher, T = 1.
        stored = torch.from_numpy(lp.astype(np.float16).astype(np.float32))
        kl = topk_kl_per_token(logp[:, None], top.indices[:, None], stored[:, None],
                               torch.from_numpy(tails[:, None, 0]), 1.0)
        full = 2 * vocab
        print(f"| {k:>4} | {size / n:>11.2f} | {size / (n * k):>11.2f} | {size / n / full:>18.2%} | "
              f"{size / (n * k) / DISTILLKIT_BYTES_PER_ENTRY:>15.2f}x | {kl.mean():>18.2e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=Path(tempfile.gettempdir()) / "dora-real-teacher")
    parser.add_argument("--tokens", type=int, default=20000)
    parser.add_argument("--vocab", type=int, default=32128)
    parser.add_argument("--seq-len", type=int, default=8)
    args = parser.parse_args()
    real(args.real)
    synthetic(args.tokens, args.vocab, args.seq_len)


if __name__ == "__main__":
    main()
