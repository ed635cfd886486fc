"""The label-cache contract: shards loadable by ordinary tools, values sane, manifest honest."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import CACHE_STEPS

from dora.cache import LabelCache, Manifest, shard_schema
from dora.errors import CacheError
from dora.files import file_sha256


def test_manifest_describes_the_cache(cache_dir, t5_dir):
    cache = LabelCache.open(cache_dir)
    m = cache.manifest
    assert m.complete and m.format == "dora-label-cache" and m.format_version == 2
    assert m.generation.kd_temperatures == [1.0, 2.0] and m.generation.id_type == "uint16"  # 400 < 65,536 ids
    assert m.rows == m.pool.rows == 40 and [s.rows for s in m.shards] == [16, 16, 8]
    assert [s.first_row for s in m.shards] == [0, 16, 32]
    assert m.generation.k == 8 and m.generation.backend == "transformers" and m.generation.logprobs == "raw"
    assert m.teacher.kind == "seq2seq" and m.teacher.architecture == "T5ForConditionalGeneration"
    assert m.teacher.finetuned and len(m.teacher.weights_sha256) == 64
    assert m.teacher.base == str(t5_dir) and m.teacher.name_or_path == str(cache_dir) + ".teacher"
    assert m.task["name"] == "fever" and m.task["source_prefix"] == "fever: "
    assert m.stats["tokens"] == sum(s.tokens for s in m.shards) > 0 and m.costs["labeling"]["examples"] == 40
    assert m.costs["labeling"]["tokens"] == m.stats["tokens"] and m.costs["labeling"]["invocations"] == 1
    assert m.costs["teacher_finetune"]["examples"] > 0 and m.costs["teacher_finetune"]["steps"] == CACHE_STEPS
    for entry in m.shards:
        path = cache_dir / entry.file
        assert file_sha256(path) == entry.sha256 and path.stat().st_size == entry.bytes
    assert cache.verify_checksums() == []
    assert (cache_dir / "tokenizer" / "tokenizer.json").is_file()


def test_values_are_sorted_logprobs_and_decode_to_target(cache_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cache_dir / "tokenizer")
    table = LabelCache.open(cache_dir).read()
    assert table.schema.equals(shard_schema(8, label_scores=True, id_type="uint16", temperatures=2))
    assert table.column("row").to_pylist() == list(range(40))
    for row in table.to_pylist():
        lp = np.array(row["topk_logprobs"], dtype=np.float32)
        assert lp.shape == (len(row["target_ids"]), 8)
        assert (lp <= 0).all() and (np.diff(lp, axis=1) <= 0).all()
        tail = np.array(row["tail_logprobs"], dtype=np.float64)  # log mass outside the top-k at T = 1 and 2
        assert tail.shape == (len(row["target_ids"]), 2) and (tail <= 0).all()
        np.testing.assert_allclose(np.exp(lp.astype(np.float64)).sum(-1) + np.exp(tail[:, 0]), 1.0, atol=5e-3)
        assert (tail[:, 1] >= tail[:, 0]).all()  # tempering moves mass into the tail
        assert tok.decode(row["target_ids"], skip_special_tokens=True) == row["target"]
        # The chosen (greedy) token is the teacher's top-1, and its logprob sums to seq_logprob.
        assert [ids[0] for ids in row["topk_ids"]] == row["target_ids"]
        assert row["seq_logprob"] == pytest.approx(float(lp[:, 0].sum()), abs=0.05)
        assert len(row["label_logprobs"]) == 2 and all(x < 0 for x in row["label_logprobs"])


def test_topk_logprobs_come_from_raw_logits(cache_dir):
    """Teacher-force the stored pseudo-label through the teacher: same top-k ids, same logprobs."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    m = LabelCache.open(cache_dir).manifest
    teacher = m.teacher.name_or_path
    model = AutoModelForSeq2SeqLM.from_pretrained(teacher).eval()
    tok = AutoTokenizer.from_pretrained(teacher)
    row = LabelCache.open(cache_dir).read().slice(3, 1).to_pylist()[0]
    enc = tok("fever: " + row["source"], return_tensors="pt")
    labels = torch.tensor([row["target_ids"]])
    with torch.no_grad():
        logits = model(**enc, labels=labels).logits[0]
    top = logits.log_softmax(-1).topk(8, dim=-1)
    assert top.indices.tolist() == row["topk_ids"]
    np.testing.assert_allclose(top.values.numpy(), np.array(row["topk_logprobs"], dtype=np.float32), rtol=1e-3, atol=1e-3)  # float16 storage
    # tail_logprobs: the mass outside those ids under softmax(logits / T), stored in float32.
    for column, t in enumerate(m.generation.kd_temperatures):
        p = torch.softmax(logits.double() / t, -1)
        expected = torch.log1p(-p.gather(-1, top.indices).sum(-1))
        np.testing.assert_allclose(np.array(row["tail_logprobs"])[:, column], expected.numpy(), atol=1e-5)
    # label_logprobs: each verbaliser (EOS included) scored as a sequence by teacher forcing.
    assert m.generation.label_set == ["SUPPORTS", "REFUTES"]
    for label, stored in zip(m.generation.label_set, row["label_logprobs"]):
        ids = torch.tensor([tok(label, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]])
        with torch.no_grad():
            lp = model(**enc, labels=ids).logits.log_softmax(-1)[0].gather(-1, ids[0, :, None]).sum()
        assert stored == pytest.approx(float(lp), abs=1e-4)


def test_loads_unchanged_with_pandas_duckdb_polars_and_datasets(cache_dir):
    import datasets
    import duckdb
    import pandas as pd
    import polars as pl

    files = sorted(str(p) for p in (cache_dir / "shards").glob("*.parquet"))
    df = pd.concat([pd.read_parquet(f) for f in files])
    assert len(df) == 40 and list(df.columns) == shard_schema(8, label_scores=True, temperatures=2).names
    assert df["topk_ids"].iloc[0][0].dtype == np.uint16
    ((n,),) = duckdb.sql(f"select count(*) from read_parquet({files})").fetchall()
    assert n == 40
    assert pl.read_parquet(files).height == 40
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert ds.num_rows == 40 and len(ds[0]["topk_ids"][0]) == 8


def test_shards_have_explicit_row_groups_and_zstd(cache_dir):
    meta = pq.ParquetFile(cache_dir / "shards" / "part-00000.parquet").metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"


@pytest.fixture
def cache_copy(cache_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(cache_dir, dst)
    return dst


def test_truncated_or_missing_shard_is_caught(cache_copy):
    shard = cache_copy / "shards" / "part-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CacheError, match="part-00001.parquet.*truncated"):
        LabelCache.open(cache_copy)
    shard.unlink()
    with pytest.raises(CacheError, match="part-00001.parquet: listed in the manifest but missing"):
        LabelCache.open(cache_copy)


def test_flipped_byte_is_caught_by_checksums(cache_copy):
    shard = cache_copy / "shards" / "part-00002.parquet"
    data = bytearray(shard.read_bytes())
    data[64] ^= 0xFF  # inside the first data page, not the footer
    shard.write_bytes(bytes(data))
    problems = LabelCache.open(cache_copy).verify_checksums()
    assert len(problems) == 1 and "part-00002.parquet" in problems[0]


@pytest.mark.parametrize("bad_file", ["../../etc/passwd", "/etc/passwd", "shards/../x.parquet", "shards/part-00000.parquet.exe"])
def test_manifest_cannot_point_outside_the_cache(cache_copy, bad_file):
    data = json.loads((cache_copy / "manifest.json").read_text())
    data["shards"][0]["file"] = bad_file
    (cache_copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(CacheError, match="not shards/part-NNNNN.parquet"):
        LabelCache.open(cache_copy)


def test_symlinked_shard_is_refused(cache_copy, tmp_path):
    shard = cache_copy / "shards" / "part-00000.parquet"
    outside = tmp_path / "outside.parquet"
    shutil.move(shard, outside)
    shard.symlink_to(outside)
    with pytest.raises(CacheError, match="symbolic link"):
        LabelCache.open(cache_copy)


def test_manifest_from_a_newer_format_is_refused(cache_copy):
    data = json.loads((cache_copy / "manifest.json").read_text())
    data["format_version"] = 3
    (cache_copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(CacheError, match="format version 3 is not supported"):
        LabelCache.open(cache_copy)


def test_format_1_caches_still_open_and_inconsistent_manifests_are_refused(cache_dir, tmp_path):
    from conftest import downgrade_to_v1

    old = LabelCache.open(downgrade_to_v1(cache_dir, tmp_path / "v1"))
    assert old.manifest.format_version == 1 and old.read().schema.equals(shard_schema(8, label_scores=True))
    assert old.read(["target"]).equals(LabelCache.open(cache_dir).read(["target"]))
    data = json.loads((tmp_path / "v1" / "manifest.json").read_text())
    data["generation"]["kd_temperatures"] = [2.0]  # a format 1 manifest has no tails to describe
    (tmp_path / "v1" / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(CacheError, match="format 1 manifest has no kd_temperatures"):
        LabelCache.open(tmp_path / "v1")
    data = json.loads((cache_dir / "manifest.json").read_text())
    data["generation"]["kd_temperatures"] = [2.0, 1.0]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(CacheError, match="ascending"):
        Manifest.from_dict(data)
    data["generation"]["kd_temperatures"] = [1.0, 2.0]
    data["teacher"]["vocab_size"] = 70000
    with pytest.raises(CacheError, match="uint16 ids cannot hold"):
        Manifest.from_dict(data)


def test_a_shard_of_the_other_format_is_refused(cache_dir, cache_copy, tmp_path):
    """A format 1 shard swapped into a format 2 cache (sizes and hashes fixed up) fails the schema check."""
    from conftest import downgrade_to_v1

    v1 = downgrade_to_v1(cache_dir, tmp_path / "v1")
    shutil.copy(v1 / "shards" / "part-00000.parquet", cache_copy / "shards" / "part-00000.parquet")
    data = json.loads((cache_copy / "manifest.json").read_text())
    path = cache_copy / "shards" / "part-00000.parquet"
    data["shards"][0].update(bytes=path.stat().st_size, sha256=file_sha256(path))
    (cache_copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(CacheError, match="part-00000.parquet: column 'target_ids' has type list<element: int32>.*does not belong"):
        LabelCache.open(cache_copy)


def test_manifest_round_trips(cache_dir):
    m = LabelCache.open(cache_dir).manifest
    again = Manifest.from_dict(json.loads(m.to_json()))
    assert again == m
    with pytest.raises(CacheError, match="field 'shard_size' should be int"):
        Manifest.from_dict(json.loads(dataclasses.replace(m, shard_size="16").to_json()))  # type: ignore[arg-type]
