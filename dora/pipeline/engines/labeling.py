"""Labeling one shard: prompts in, the shard's Arrow table out. Shared by the single-process
loop and the Ray workers (``dora.pipeline.engines.ray_label``), so both write identical shards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from dora.cache.schema import IdType
from dora.cache.shard import build_shard
from dora.pipeline.data.encoding import encode_prompts, target_ids
from dora.pipeline.data.inputs import Example
from dora.pipeline.engines.generation import decode
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
        table = build_shard([r.id for r in rows], [r.row for r in rows], [r.source for r in rows],
                            [decode(self.tokenizer, g.ids) for g in generated], generated, self.settings.top_k, scores,
                            id_type=self.id_type, temperatures=len(self.settings.kd_temperatures or ()))
        return table, sum(len(g.ids) for g in generated)


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

    def labeler(self, tokenizer: Any = None, *, model: Any = None) -> ShardLabeler:
        """A labeler on an engine started here (on ``model`` when it is loaded already)."""
        from dora.pipeline.engines.registry import start_engine
        from dora.pipeline.models.loading import load_tokenizer

        if tokenizer is None:
            tokenizer = load_tokenizer(self.teacher_path, revision=self.revision,
                                       trust_remote_code=self.trust_remote_code)
        engine = start_engine(self.engine, self.teacher_path, tokenizer, self.kind, self.settings,  # type: ignore[arg-type]
                              revision=self.revision, trust_remote_code=self.trust_remote_code, model=model)
        return ShardLabeler(engine=engine, tokenizer=tokenizer, settings=self.settings, source_prefix=self.source_prefix,
                            max_target_length=self.max_target_length, id_type=self.id_type, label_set=self.label_set)
