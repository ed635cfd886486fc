"""One cache shard, both ways: labeled rows into its Arrow table (``build_shard``), its table
back into arrays (``DecodedShard``), and how a table becomes a Parquet file (``parquet_options``).

Every writer of shards (labeling, its Ray workers, ``dora cache filter`` and ``merge``) builds and
writes them here, and every reader (training, ``select``, ``filter``, ``info``, ``verify``, the
reader's value checks) decodes them here. The columns are ``dora.cache.schema.shard_schema``'s.

Per-token columns (``target_ids``, ``topk_ids``, ``topk_logprobs``, ``tail_logprobs``) decode flat
over the shard's generated tokens, row ``i``'s tokens at ``[starts[i], starts[i] + lengths[i])``:

>>> import numpy as np
>>> class G:  # what an engine returns for one row (``dora.pipeline.engines.generation.Generated``)
...     def __init__(self, n):
...         self.ids = np.arange(n, dtype=np.int32)
...         self.topk_ids, self.topk_logprobs = np.zeros((n, 2), np.int32), np.full((n, 2), -1.0, np.float32)
...         self.tail_logprobs, self.seq_logprob = None, -float(n)
>>> table = build_shard(["a", "b"], [0, 1], ["x", "y"], ["one", ""], [G(3), G(0)], k=2)
>>> shard = DecodedShard(table)
>>> shard.lengths.tolist(), shard.starts.tolist(), shard.topk_ids.shape, shard.tokens
([3, 0], [0, 3], (3, 2), 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from dora.cache.schema import ID_TYPES, IdType, shard_schema
from dora.errors import CacheError

ROW_GROUP_SIZE = 2048
# How shards are written (the writer, filter/merge and the size benchmark share it). Byte-stream
# split stores each byte of a value in its own stream: the float16 log-probabilities' exponent
# bytes, the ids' zero high bytes (uint16 ids are INT32 in Parquet) and the float32 tails'
# exponents then compress to almost nothing; zstd level 9 takes about 5% more off than the
# default level at a write cost far below labeling's (benchmarks/cache_size.py). Every Parquet
# reader decodes both.
_SPLIT = ("topk_logprobs.list.element.list.element", "topk_ids.list.element.list.element",
          "target_ids.list.element", "tail_logprobs.list.element.list.element")

"""The columns with one entry per generated token (the rest have one per row)."""


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """``pyarrow.parquet.write_table`` options for a shard of ``schema`` (format 1 or 2)."""
    present = {name.split(".", 1)[0] for name in schema.names}
    return {"compression": "zstd", "compression_level": 9, "row_group_size": ROW_GROUP_SIZE,
            "use_dictionary": ["id", "source", "target"],
            "column_encoding": {c: "BYTE_STREAM_SPLIT" for c in _SPLIT if c.split(".", 1)[0] in present}}


class GeneratedTokens(Protocol):
    """One row's generation, as an engine returns it: arrays with one row per generated token (EOS included)."""

    @property
    def ids(self) -> np.ndarray: ...  # (L,)
    @property
    def topk_ids(self) -> np.ndarray | None: ...  # (L, k)
    @property
    def topk_logprobs(self) -> np.ndarray | None: ...  # (L, k), sorted descending
    @property
    def tail_logprobs(self) -> np.ndarray | None: ...  # (L, temperatures)
    @property
    def seq_logprob(self) -> float: ...


def build_shard(ids: Sequence[str], rows: Sequence[int], sources: Sequence[str], targets: Sequence[str],
                generated: Sequence[GeneratedTokens], k: int, label_logprobs: np.ndarray | None = None, *,
                id_type: IdType = "int32", temperatures: int = 0) -> pa.Table:
    """One shard's Arrow table (schema: ``shard_schema``) from its rows (id, pool row, source) and
    what the teacher made of them: the pseudo-label ``targets`` (text), ``generated`` (tokens, top-k
    and, for ``temperatures`` > 0, tails) and, for closed-label tasks, ``label_logprobs`` (rows, labels)."""
    lengths = np.array([len(g.ids) for g in generated], dtype=np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    empty = not lengths.sum()

    def stacked(part: str, width: int, dtype: Any) -> np.ndarray:
        if empty:
            return np.zeros(0, dtype)
        return np.concatenate([getattr(g, part).reshape(-1, width) for g in generated]).reshape(-1).astype(dtype)

    kind = ID_TYPES[id_type]
    nested = lambda values, kind, width: pa.ListArray.from_arrays(  # noqa: E731
        offsets, pa.FixedSizeListArray.from_arrays(pa.array(values, type=kind), width))
    flat_ids = np.concatenate([g.ids for g in generated]) if not empty else np.zeros(0, np.int32)
    if temperatures and any(g.tail_logprobs is None for g in generated):
        raise ValueError("the engine returned no tail log-probabilities for the requested temperatures")
    return pa.Table.from_arrays(
        [
            pa.array(list(ids), pa.string()),
            pa.array(list(rows), pa.int64()),
            pa.array(list(sources), pa.string()),
            pa.array(list(targets), pa.string()),
            pa.ListArray.from_arrays(offsets, pa.array(flat_ids, type=kind)),
            nested(stacked("topk_ids", k, np.int64), kind, k),
            nested(stacked("topk_logprobs", k, np.float16), pa.float16(), k),
            *([nested(stacked("tail_logprobs", temperatures, np.float32), pa.float32(), temperatures)]
              if temperatures else []),
            pa.array([g.seq_logprob for g in generated], pa.float32()),
            *([pa.array(label_logprobs.astype(np.float32).tolist(), pa.list_(pa.float32()))]
              if label_logprobs is not None else []),
        ],
        schema=shard_schema(k, label_logprobs is not None, id_type=id_type, temperatures=temperatures),
    )


def _leaves(column: pa.ChunkedArray) -> np.ndarray:
    """The innermost values of a (nested) list column, in order, as stored (ids keep their type,
    log-probabilities stay float16 or float32)."""
    flat = column.combine_chunks()
    while pa.types.is_list(flat.type) or pa.types.is_fixed_size_list(flat.type) or pa.types.is_large_list(flat.type):
        flat = flat.flatten()  # flatten, not .values: it honours slices and offsets
    return flat.to_numpy(zero_copy_only=False)


def _width(column: pa.ChunkedArray) -> int:
    """Entries per token of a per-token column: its fixed-size lists' size (1 for ``target_ids``)."""
    inner = column.type.value_type
    return inner.list_size if pa.types.is_fixed_size_list(inner) else 1


class DecodedShard:
    """A shard's table (all its columns, or those a reader asked for) as Python lists and numpy
    arrays, each decoded on first use. Arrays keep the stored types (cast where you compute);
    per-token ones are flat over the shard's tokens, (tokens, width) for the top-k and tails."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    @cached_property
    def ids(self) -> list[str]:
        return self.table.column("id").to_pylist()

    @cached_property
    def rows(self) -> np.ndarray:
        """(rows,) int64: each row's 0-based row in the input pool."""
        return self.table.column("row").to_numpy()

    @cached_property
    def sources(self) -> list[str]:
        return self.table.column("source").to_pylist()

    @cached_property
    def targets(self) -> list[str]:
        return self.table.column("target").to_pylist()

    @cached_property
    def seq_logprob(self) -> np.ndarray:
        """(rows,) float32."""
        return self.table.column("seq_logprob").to_numpy()

    @cached_property
    def lengths(self) -> np.ndarray:
        """(rows,) int32: generated tokens per row (EOS included)."""
        return self.table.column("target_ids").combine_chunks().value_lengths().to_numpy()

    @cached_property
    def starts(self) -> np.ndarray:
        """(rows,) int64: where each row's tokens start in the per-token arrays."""
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)

    @property
    def tokens(self) -> int:
        """Generated tokens in the shard (what its manifest entry's ``tokens`` counts)."""
        return int(self.lengths.sum())

    @cached_property
    def target_ids(self) -> np.ndarray:
        """(tokens,) the generated ids, in the stored id type."""
        return self.values("target_ids")

    @cached_property
    def topk_ids(self) -> np.ndarray:
        """(tokens, k) in the stored id type."""
        return self.values("topk_ids")

    @cached_property
    def topk_logprobs(self) -> np.ndarray:
        """(tokens, k) float16, sorted descending."""
        return self.values("topk_logprobs")

    @cached_property
    def tail_logprobs(self) -> np.ndarray:
        """(tokens, temperatures) float32 (format 2): log of the mass outside the top-k at each of
        the manifest's ``generation.kd_temperatures``."""
        return self.values("tail_logprobs")

    @cached_property
    def label_logprobs(self) -> np.ndarray:
        """(rows, labels) float32 (closed-label tasks): the manifest's ``generation.label_set`` order."""
        column = self.table.column("label_logprobs").combine_chunks()
        widths = column.value_lengths().to_numpy()
        if len(widths) and (widths != widths[0]).any():
            raise CacheError("label_logprobs: rows hold different numbers of label scores; the cache is damaged "
                             "or crafted (run `dora cache verify`)")
        values = column.flatten().to_numpy(zero_copy_only=False)
        return values.reshape(len(widths), int(widths[0]) if len(widths) else 0)

    def values(self, name: str) -> np.ndarray:
        """A per-token column's values: (tokens,) for ``target_ids``, (tokens, width) for the others."""
        column = self.table.column(name)
        values = _leaves(column)
        return values if name == "target_ids" else values.reshape(-1, _width(column))

    def row_of(self, name: str, index: int) -> int:
        """The row holding entry ``index`` of per-token column ``name``'s flat values (by that
        column's own list lengths: a crafted shard's columns may disagree)."""
        column = self.table.column(name)
        ends = np.cumsum(column.combine_chunks().value_lengths().to_numpy())
        return int(np.searchsorted(ends, index // _width(column), side="right"))

    def token_tails(self, tail_column: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(top-k log-probabilities (tokens, k), the tail mass outside them (tokens,)), float64. The
        tail is the stored ``tail_logprobs`` column ``tail_column`` (the one at T = 1, format 2), or
        with None one minus the top-k's (format 1)."""
        lp = self.topk_logprobs.astype(np.float64)
        if tail_column is not None:
            tail = np.exp(self.tail_logprobs.astype(np.float64)[:, tail_column])
        else:
            tail = np.clip(1.0 - np.exp(lp).sum(-1), 0.0, 1.0)
        return lp, tail

    def row_mean(self, per_token: np.ndarray) -> np.ndarray:
        """Per row: the mean of ``per_token`` over its generated tokens (0 for a row without any)."""
        bounds = np.concatenate([[0], np.cumsum(self.lengths)])
        return np.array([per_token[a:b].mean() if b > a else 0.0 for a, b in zip(bounds[:-1], bounds[1:])])
