"""Labeling one shard: prompts in, the shard's Arrow table out. Shared by the single-process
loop and the Ray workers (``dora.pipeline.ray_label``), so both write identical shards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from dora.pipeline.data import Example
from dora.pipeline.encoding import encode_prompts, target_ids
from dora.pipeline.engines import Engine, EngineSettings
from dora.pipeline.generation import Generated, decode


@dataclass(kw_only=True)
class ShardLabeler:
    """An engine plus what turns pool rows into its prompts and its outputs into a shard."""

    engine: Engine
    tokenizer: Any
    source_prefix: str
    max_source_length: int
    max_target_length: int
    top_k: int
    label_set: Sequence[str] = ()

    def __post_init__(self) -> None:
        self.verbalisers = [target_ids(self.tokenizer, label, self.max_target_length) for label in self.label_set]

    def label(self, rows: list[Example], on_batch: Callable[[int], None] | None = None) -> tuple[pa.Table, int]:
        """(the shard's table, generated tokens) for ``rows``."""
        prompts = encode_prompts(self.tokenizer, [self.source_prefix + ex.source for ex in rows],
                                 self.max_source_length)
        generated = self.engine.label(prompts, on_batch=on_batch)
        scores = self.engine.score(prompts, self.verbalisers) if self.verbalisers else None
        table = shard_table(rows, generated, self.tokenizer, self.top_k, scores)
        return table, sum(len(g.ids) for g in generated)


def shard_table(rows: list[Example], generated: list[Generated], tokenizer: Any, k: int,
                label_scores: np.ndarray | None = None) -> pa.Table:
    """Build one shard's Arrow table from generation results (schema: ``dora.cache.shard_schema``)."""
    from dora.cache import shard_schema

    lengths = np.array([len(g.ids) for g in generated], dtype=np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    flat_ids = np.concatenate([g.topk_ids for g in generated]).reshape(-1) if lengths.sum() else np.zeros(0, np.int32)
    flat_lp = (np.concatenate([g.topk_logprobs for g in generated]).reshape(-1).astype(np.float16)
               if lengths.sum() else np.zeros(0, np.float16))
    nested = lambda values, kind: pa.ListArray.from_arrays(  # noqa: E731
        offsets, pa.FixedSizeListArray.from_arrays(pa.array(values, type=kind), k))
    target_ids = pa.ListArray.from_arrays(offsets, pa.array(
        np.concatenate([g.ids for g in generated]) if lengths.sum() else np.zeros(0, np.int32), type=pa.int32()))
    return pa.Table.from_arrays(
        [
            pa.array([r.id for r in rows], pa.string()),
            pa.array([r.row for r in rows], pa.int64()),
            pa.array([r.source for r in rows], pa.string()),
            pa.array([decode(tokenizer, g.ids) for g in generated], pa.string()),
            target_ids,
            nested(flat_ids, pa.int32()),
            nested(flat_lp, pa.float16()),
            pa.array([g.seq_logprob for g in generated], pa.float32()),
            *([pa.array(label_scores.astype(np.float32).tolist(), pa.list_(pa.float32()))]
              if label_scores is not None else []),
        ],
        schema=shard_schema(k, label_scores is not None),
    )


@dataclass(frozen=True, kw_only=True)
class LabelSpec:
    """How to start a labeler anywhere: in this process or in a Ray worker (plain, serialisable values)."""

    teacher_path: str
    revision: str | None
    trust_remote_code: bool
    kind: str
    engine: str
    settings: EngineSettings
    source_prefix: str
    max_target_length: int
    label_set: tuple[str, ...] = ()

    def labeler(self, tokenizer: Any = None, *, model: Any = None) -> ShardLabeler:
        from dora.pipeline.engines import start_engine
        from dora.pipeline.models import load_tokenizer

        if tokenizer is None:
            tokenizer = load_tokenizer(self.teacher_path, revision=self.revision,
                                       trust_remote_code=self.trust_remote_code)
        engine = start_engine(self.engine, self.teacher_path, tokenizer, self.kind, self.settings,  # type: ignore[arg-type]
                              revision=self.revision, trust_remote_code=self.trust_remote_code, model=model)
        return ShardLabeler(engine=engine, tokenizer=tokenizer, source_prefix=self.source_prefix,
                            max_source_length=self.settings.max_source_length,
                            max_target_length=self.max_target_length, top_k=self.settings.top_k,
                            label_set=self.label_set)
