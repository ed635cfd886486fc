"""The Arrow schema of a cache shard (format v1) and a check that a file conforms to it."""

from __future__ import annotations

import pyarrow as pa

from dora.errors import CacheError


def shard_schema(k: int, label_scores: bool = False) -> pa.Schema:
    """Columns of every shard; ``k`` is the number of top-k entries stored per generated token.

    id: stable row id; row: 0-based row in the input pool; source: input text (no prefix);
    target: pseudo-label text; target_ids: generated token ids (teacher vocabulary, EOS
    included); topk_ids / topk_logprobs: per generated token, the k most likely ids and their
    log-probabilities (raw logits, temperature 1, sorted descending); seq_logprob: sum of the
    log-probabilities of ``target_ids``; label_logprobs (closed-label tasks only): the teacher's
    log-probability of each label verbaliser (EOS included, in the manifest's
    ``generation.label_set`` order) scored as a sequence.
    """
    labels = [pa.field("label_logprobs", pa.list_(pa.float32()), nullable=False)] if label_scores else []
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("row", pa.int64(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("target", pa.string(), nullable=False),
            pa.field("target_ids", pa.list_(pa.int32()), nullable=False),
            pa.field("topk_ids", pa.list_(pa.list_(pa.int32(), k)), nullable=False),
            pa.field("topk_logprobs", pa.list_(pa.list_(pa.float16(), k)), nullable=False),
            pa.field("seq_logprob", pa.float32(), nullable=False),
            *labels,
        ]
    )


def check_schema(schema: pa.Schema, k: int, where: str, label_scores: bool = False) -> None:
    """Raise CacheError unless ``schema`` has the v1 columns with their types (extra columns are allowed)."""
    expected = shard_schema(k, label_scores)
    for field in expected:
        idx = schema.get_field_index(field.name)
        if idx < 0:
            raise CacheError(f"{where}: column {field.name!r} is missing; this is not a dora v1 cache shard")
        got = schema.field(idx).type
        if got != field.type:
            raise CacheError(
                f"{where}: column {field.name!r} has type {got}, expected {field.type} "
                f"(k={k} in the manifest); the shard does not belong to this cache"
            )
