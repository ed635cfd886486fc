"""Labeling one shard: prompts in, the shard's Arrow table out. Shared by the single-process
loop and the Ray workers (``dora.pipeline.engines.ray_label``), so both write identical shards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from dora.cache.schema import IdType
from dora.pipeline.data.encoding import encode_prompts, target_ids
from dora.pipeline.data.inputs import Example
from dora.pipeline.engines.generation import Generated, decode
from dora.pipeline.engines.settings import Engine, EngineSettings


def pool_prompts(tokenizer: Any, rows: Sequence[Example], source_prefix: str, max_source_length: int) -> list[list[int]]:
    """The token ids the teacher sees for pool rows: the task's prefix, then the source, cut to length."""
    return encode_prompts(tokenizer, [source_prefix + ex.source for ex in rows], max_source_length)


@dataclass(kw_only=True)
class ShardLabeler:
    """An engine plus what turns pool rows into its prompts and its outputs into a shard."""

    engine: Engine
    tokenizer: Any
    settings: EngineSettings
    source_prefix: str
    max_target_length: int
    id_type: IdType
    label_set: Sequence[str] = ()

    def __post_init__(self) -> None:
        self.verbalisers = [target_ids(self.tokenizer, label, self.max_target_length) for label in self.label_set]

    def label(self, rows: list[Example], on_batch: Callable[[int], None] | None = None) -> tuple[pa.Table, int]:
        """(the shard's table, generated tokens) for ``rows``."""
        prompts = pool_prompts(self.tokenizer, rows, self.source_prefix, self.settings.max_source_length)
        generated = self.engine.label(prompts, on_batch=on_batch)
        scores = self.engine.score(prompts, self.verbalisers) if self.verbalisers else None
        table = shard_table(rows, generated, self.tokenizer, self.settings.top_k, scores, id_type=self.id_type,
                            kd_temperatures=self.settings.kd_temperatures or ())
        return table, sum(len(g.ids) for g in generated)


def shard_table(rows: list[Example], generated: list[Generated], tokenizer: Any, k: int,
                label_scores: np.ndarray | None = None, *, id_type: IdType = "int32",
                kd_temperatures: Sequence[float] = ()) -> pa.Table:
    """Build one shard's Arrow table from generation results (schema: ``dora.cache.shard_schema``)."""
    from dora.cache import shard_schema
    from dora.cache.schema import ID_TYPES

    n_temps = len(kd_temperatures)
    lengths = np.array([len(g.ids) for g in generated], dtype=np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    empty = not lengths.sum()

    def stacked(part: str, width: int, dtype: Any) -> np.ndarray:
        if empty:
            return np.zeros(0, dtype)
        return np.concatenate([getattr(g, part).reshape(-1, width) for g in generated]).reshape(-1).astype(dtype)

    ids = ID_TYPES[id_type]
    nested = lambda values, kind, width: pa.ListArray.from_arrays(  # noqa: E731
        offsets, pa.FixedSizeListArray.from_arrays(pa.array(values, type=kind), width))
    flat_ids = np.concatenate([g.ids for g in generated]) if not empty else np.zeros(0, np.int32)
    if n_temps and any(g.tail_logprobs is None for g in generated):
        raise ValueError("the engine returned no tail log-probabilities for the requested temperatures")
    return pa.Table.from_arrays(
        [
            pa.array([r.id for r in rows], pa.string()),
            pa.array([r.row for r in rows], pa.int64()),
            pa.array([r.source for r in rows], pa.string()),
            pa.array([decode(tokenizer, g.ids) for g in generated], pa.string()),
            pa.ListArray.from_arrays(offsets, pa.array(flat_ids, type=ids)),
            nested(stacked("topk_ids", k, np.int64), ids, k),
            nested(stacked("topk_logprobs", k, np.float16), pa.float16(), k),
            *([nested(stacked("tail_logprobs", n_temps, np.float32), pa.float32(), n_temps)] if n_temps else []),
            pa.array([g.seq_logprob for g in generated], pa.float32()),
            *([pa.array(label_scores.astype(np.float32).tolist(), pa.list_(pa.float32()))]
              if label_scores is not None else []),
        ],
        schema=shard_schema(k, label_scores is not None, id_type=id_type, temperatures=n_temps),
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
    id_type: IdType = "int32"
    label_set: tuple[str, ...] = ()

    def labeler(self, tokenizer: Any = None, *, model: Any = None, engine: Engine | None = None) -> ShardLabeler:
        """A labeler on ``engine``, or on one started here (on ``model`` when it is loaded already)."""
        from dora.pipeline.engines.registry import start_engine
        from dora.pipeline.models.loading import load_tokenizer

        if tokenizer is None:
            tokenizer = load_tokenizer(self.teacher_path, revision=self.revision,
                                       trust_remote_code=self.trust_remote_code)
        if engine is None:
            engine = start_engine(self.engine, self.teacher_path, tokenizer, self.kind, self.settings,  # type: ignore[arg-type]
                                  revision=self.revision, trust_remote_code=self.trust_remote_code, model=model)
        return ShardLabeler(engine=engine, tokenizer=tokenizer, settings=self.settings, source_prefix=self.source_prefix,
                            max_target_length=self.max_target_length, id_type=self.id_type, label_set=self.label_set)
