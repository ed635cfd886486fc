"""The Arrow schema of a cache shard (formats 1 and 2) and a check that a file conforms to it.

Format 2 added ``tail_logprobs`` (the teacher's log-probability mass outside the stored top-k,
per generated token, at each temperature the manifest lists) and stores token ids as ``uint16``
when the teacher's vocabulary fits (T5's 32,128 does), ``int32`` otherwise.

>>> shard_schema(20, id_type="uint16", temperatures=2).field("tail_logprobs").type
ListType(list<item: fixed_size_list<item: float>[2]>)
>>> id_type_for(32128), id_type_for(151936)
('uint16', 'int32')
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa

from dora.errors import CacheError

IdType = Literal["uint16", "int32"]
ID_TYPES: dict[str, pa.DataType] = {"uint16": pa.uint16(), "int32": pa.int32()}


def id_type_for(vocab_size: int) -> IdType:
    """The narrowest id type that holds every id of a vocabulary of ``vocab_size``."""
    return "uint16" if vocab_size <= 1 << 16 else "int32"


def shard_schema(k: int, label_scores: bool = False, *, id_type: IdType = "int32", temperatures: int = 0) -> pa.Schema:
    """Columns of every shard; ``k`` is the number of top-k entries stored per generated token.

    id: stable row id; row: 0-based row in the input pool; source: input text (no prefix);
    target: pseudo-label text; target_ids: generated token ids (teacher vocabulary, EOS
    included); topk_ids / topk_logprobs: per generated token, the k most likely ids and their
    log-probabilities (raw logits, temperature 1, sorted descending); tail_logprobs (format 2,
    ``temperatures`` > 0): per generated token, log of the teacher's probability mass outside
    those k ids at each of the manifest's ``generation.kd_temperatures`` (-inf when empty);
    seq_logprob: sum of the log-probabilities of ``target_ids``; label_logprobs (closed-label
    tasks only): the teacher's log-probability of each label verbaliser (EOS included, in the
    manifest's ``generation.label_set`` order) scored as a sequence.
    """
    ids = ID_TYPES[id_type]
    tail = ([pa.field("tail_logprobs", pa.list_(pa.list_(pa.float32(), temperatures)), nullable=False)]
            if temperatures else [])
    labels = [pa.field("label_logprobs", pa.list_(pa.float32()), nullable=False)] if label_scores else []
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("row", pa.int64(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("target", pa.string(), nullable=False),
            pa.field("target_ids", pa.list_(ids), nullable=False),
            pa.field("topk_ids", pa.list_(pa.list_(ids, k)), nullable=False),
            pa.field("topk_logprobs", pa.list_(pa.list_(pa.float16(), k)), nullable=False),
            *tail,
            pa.field("seq_logprob", pa.float32(), nullable=False),
            *labels,
        ]
    )


def check_schema(schema: pa.Schema, expected: pa.Schema, where: str) -> None:
    """Raise CacheError unless ``schema`` has the ``expected`` columns with their types (extra columns are allowed)."""
    for field in expected:
        idx = schema.get_field_index(field.name)
        if idx < 0:
            raise CacheError(f"{where}: column {field.name!r} is missing; this is not a shard of this dora cache")
        got = schema.field(idx).type
        if got != field.type:
            raise CacheError(
                f"{where}: column {field.name!r} has type {got}, expected {field.type} "
                "(from the manifest's k, id type and temperatures); the shard does not belong to this cache"
            )
