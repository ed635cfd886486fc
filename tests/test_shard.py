"""One shard both ways (``dora.cache.shard``): what labeling builds is exactly the schema's rows
on disk, and decoding gives the rows back, whatever their tokens, tails and label scores."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dora.cache.schema import shard_schema
from dora.cache.shard import DecodedShard, build_shard
from dora.cache.writer import write_shard_file
from dora.errors import CacheError


@dataclass(frozen=True)
class Tokens:
    """One row's generation, shaped as an engine returns it."""

    ids: np.ndarray
    topk_ids: np.ndarray
    topk_logprobs: np.ndarray
    seq_logprob: float
    tail_logprobs: np.ndarray | None = None


def labeled(seed: int, n: int, k: int, temps: int, labels: int, vocab: int, empty: str) -> dict:
    """n rows; ``empty``: "none" (every row generated tokens), "some" (every third row none), "all"."""
    rng = np.random.default_rng(seed)
    generated = []
    for i in range(n):
        length = 0 if empty == "all" or (empty == "some" and i % 3 == 1) else int(rng.integers(1, 6))
        lp = -np.sort(rng.exponential(2.0, (length, k)), axis=1).astype(np.float32)
        generated.append(Tokens(ids=rng.integers(0, vocab, length).astype(np.int32),
                                topk_ids=rng.integers(0, vocab, (length, k)).astype(np.int32), topk_logprobs=lp,
                                seq_logprob=float(lp[:, 0].sum()),
                                tail_logprobs=-rng.exponential(1.0, (length, temps)).astype(np.float32)))
    return {"ids": [f"id-{seed}-{i}" for i in range(n)], "rows": [10 + 2 * i for i in range(n)],
            "sources": [f"claim {i} é" for i in range(n)], "targets": ["" if not len(g.ids) else f"t{i}"
                                                                    for i, g in enumerate(generated)],
            "generated": generated,
            "label_logprobs": -rng.exponential(1.0, (n, labels)).astype(np.float32) if labels else None}


def build(data: dict, k: int, temps: int, id_type: str) -> pa.Table:
    return build_shard(data["ids"], data["rows"], data["sources"], data["targets"], data["generated"], k,
                       data["label_logprobs"], id_type=id_type, temperatures=temps)  # type: ignore[arg-type]


def by_hand(data: dict, k: int, temps: int, id_type: str) -> pa.Table:
    """The same rows as plain Python values, typed by the schema alone."""
    rows = []
    for i, g in enumerate(data["generated"]):
        row = {"id": data["ids"][i], "row": data["rows"][i], "source": data["sources"][i],
               "target": data["targets"][i], "target_ids": g.ids.tolist(), "topk_ids": g.topk_ids.tolist(),
               "topk_logprobs": g.topk_logprobs.astype(np.float16).tolist(), "seq_logprob": g.seq_logprob}
        if temps:
            row["tail_logprobs"] = g.tail_logprobs.tolist()
        if data["label_logprobs"] is not None:
            row["label_logprobs"] = data["label_logprobs"][i].tolist()
        rows.append(row)
    schema = shard_schema(k, data["label_logprobs"] is not None, id_type=id_type, temperatures=temps)  # type: ignore[arg-type]
    return pa.Table.from_pylist(rows, schema=schema)


CASES = [  # (k, temperatures, labels, id type, empty pseudo-labels)
    (4, 2, 3, "uint16", "some"), (3, 1, 0, "int32", "none"), (2, 0, 0, "uint16", "some"),
    (5, 3, 2, "int32", "all"), (1, 0, 4, "uint16", "none"),
]


@pytest.mark.parametrize("k, temps, labels, id_type, empty", CASES)
def test_built_shards_are_the_schemas_rows_byte_for_byte(tmp_path, k, temps, labels, id_type, empty):
    data = labeled(7, 9, k, temps, labels, 30_000, empty)
    schema = shard_schema(k, bool(labels), id_type=id_type, temperatures=temps)  # type: ignore[arg-type]
    entries = []
    for name, table in (("built", build(data, k, temps, id_type)), ("by-hand", by_hand(data, k, temps, id_type))):
        (tmp_path / name / "shards").mkdir(parents=True)
        assert table.schema == schema
        entries.append(write_shard_file(tmp_path / name, 0, table, schema=schema, shard_size=16, pool_rows=9))
    built, hand = entries
    assert (tmp_path / "built" / built.file).read_bytes() == (tmp_path / "by-hand" / hand.file).read_bytes()
    assert built.tokens == sum(len(g.ids) for g in data["generated"])


@settings(max_examples=30)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 12), k=st.integers(1, 6), temps=st.integers(0, 3),
       labels=st.integers(0, 4), id_type=st.sampled_from(["uint16", "int32"]),
       empty=st.sampled_from(["none", "some", "all"]))
def test_decoding_a_built_shard_gives_its_rows_back(seed, n, k, temps, labels, id_type, empty):
    data = labeled(seed, n, k, temps, labels, 60_000 if id_type == "uint16" else 150_000, empty)
    shard = DecodedShard(build(data, k, temps, id_type))
    assert (shard.ids, shard.rows.tolist(), shard.sources, shard.targets) == (
        data["ids"], data["rows"], data["sources"], data["targets"])
    assert shard.tokens == sum(len(g.ids) for g in data["generated"]) == len(shard.target_ids)
    assert shard.topk_ids.shape == shard.topk_logprobs.shape == (shard.tokens, k)
    for i, g in enumerate(data["generated"]):
        lo, length = int(shard.starts[i]), int(shard.lengths[i])
        assert length == len(g.ids)
        got = slice(lo, lo + length)
        np.testing.assert_array_equal(shard.target_ids[got], g.ids)
        np.testing.assert_array_equal(shard.topk_ids[got], g.topk_ids)
        np.testing.assert_array_equal(shard.topk_logprobs[got], g.topk_logprobs.astype(np.float16))  # stored as
        if temps:
            np.testing.assert_array_equal(shard.tail_logprobs[got], g.tail_logprobs)
            assert shard.tail_logprobs.shape == (shard.tokens, temps)
        assert shard.seq_logprob[i] == np.float32(g.seq_logprob)
    if labels:
        np.testing.assert_array_equal(shard.label_logprobs, data["label_logprobs"])
    else:
        assert "label_logprobs" not in shard.table.column_names
    if not temps:
        assert "tail_logprobs" not in shard.table.column_names


@pytest.mark.parametrize("k, temps, labels, id_type, empty", CASES)
def test_decoding_honours_files_slices_filters_and_chunks(tmp_path, k, temps, labels, id_type, empty):
    """What readers hand the decoder: a Parquet file read back, filtered rows, several chunks."""
    data = labeled(3, 10, k, temps, labels, 30_000, empty)
    table = build(data, k, temps, id_type)
    pq.write_table(table, tmp_path / "s.parquet")
    whole = DecodedShard(pq.read_table(tmp_path / "s.parquet"))
    keep = np.arange(10) % 2 == 0
    parts = [DecodedShard(table.filter(pa.array(keep))),
             DecodedShard(pa.concat_tables([table.slice(0, 3), table.slice(3)]).filter(pa.array(keep)))]
    for part in parts:
        assert part.ids == [x for x, kept in zip(whole.ids, keep) if kept]
        for j, i in enumerate(np.flatnonzero(keep)):
            mine = slice(int(part.starts[j]), int(part.starts[j] + part.lengths[j]))
            theirs = slice(int(whole.starts[i]), int(whole.starts[i] + whole.lengths[i]))
            for name in ("target_ids", "topk_ids", "topk_logprobs", *(["tail_logprobs"] if temps else [])):
                np.testing.assert_array_equal(getattr(part, name)[mine], getattr(whole, name)[theirs])
        if labels:
            np.testing.assert_array_equal(part.label_logprobs, whole.label_logprobs[keep])


def test_tails_entropy_and_the_row_of_a_token():
    data = labeled(5, 6, 3, 2, 0, 1000, "some")
    shard = DecodedShard(build(data, 3, 2, "int32"))
    lp, stored = shard.token_tails(1)
    np.testing.assert_array_equal(stored, np.exp(shard.tail_logprobs[:, 1].astype(np.float64)))
    _, leftover = shard.token_tails(None)  # format 1: what the top-k leaves
    np.testing.assert_allclose(leftover, np.clip(1 - np.exp(lp).sum(-1), 0, 1))
    means = shard.row_mean(np.arange(shard.tokens, dtype=np.float64))
    assert [m for m, n in zip(means, shard.lengths) if n == 0] == [0.0, 0.0]  # rows 1 and 4 generated nothing
    for i in range(shard.num_rows):
        for t in range(int(shard.starts[i]), int(shard.starts[i] + shard.lengths[i])):
            assert shard.row_of("target_ids", t) == shard.row_of("topk_ids", t * 3 + 2) == i


def test_ragged_label_scores_are_a_damaged_cache():
    table = build(labeled(1, 3, 2, 0, 2, 100, "none"), 2, 0, "int32")
    ragged = table.set_column(table.schema.get_field_index("label_logprobs"), "label_logprobs",
                              pa.array([[-1.0, -2.0], [-1.0], [-0.5, -3.0]], pa.list_(pa.float32())))
    with pytest.raises(CacheError, match="different numbers of label scores"):
        DecodedShard(ragged).label_logprobs
    assert DecodedShard(table.slice(0, 0)).label_logprobs.shape == (0, 0)
