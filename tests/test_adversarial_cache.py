"""Adversarial caches and output directories: every command that reads a cache, fed crafted ones
(custom code, links out of the cache, flipped bytes, values out of range, hostile JSON), and every
command that writes, pointed at files that are not its own. Each case: the exit code, a fragment of
the one-line message, and nothing outside the intended output changed (tests/adversarial.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from adversarial import Case, run_case

from dora.cache import LabelCache
from dora.cache.shard import parquet_options
from dora.files import file_sha256

EVIL = """import pathlib
pathlib.Path({marker!r}).write_text("the cache's code ran")
from transformers import PreTrainedTokenizerFast as EvilTokenizer
"""


# --- crafted caches ------------------------------------------------------------------------------


def copy_cache(tmp: Path, cache: Path, name: str = "c") -> Path:
    dst = tmp / name
    shutil.copytree(cache, dst, ignore=shutil.ignore_patterns(".dora-lock"))
    return dst


def rewrite_manifest(root: Path, change) -> None:
    data = json.loads((root / "manifest.json").read_text())
    change(data)
    (root / "manifest.json").write_text(json.dumps(data))


def relist_tokenizer(root: Path) -> None:
    """List every file of tokenizer/ in the manifest with its real size and hash, as an attacker would."""
    files = [{"file": f"tokenizer/{p.name}", "bytes": p.stat().st_size, "sha256": file_sha256(p)}
             for p in sorted((root / "tokenizer").iterdir())]
    rewrite_manifest(root, lambda d: d.__setitem__("tokenizer_files", files))


def plant_code(root: Path, marker: Path) -> None:
    """A tokenizer that declares custom code and ships it, correctly hashed in the manifest."""
    (root / "tokenizer" / "evil.py").write_text(EVIL.format(marker=str(marker)))
    config = json.loads((root / "tokenizer" / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]}
    config["tokenizer_class"] = "EvilTokenizer"  # unknown to transformers: only the shipped code could load it
    (root / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(config))
    relist_tokenizer(root)


def rewrite_shard(root: Path, change) -> None:
    """Change shard 0's values and give it a valid size and sha256: only range checks can tell."""
    cache = LabelCache.open(root, verify=False)
    entry = cache.manifest.shards[0]
    table = change(cache.read_shard(entry, check=False))
    path = root / entry.file
    schema = cache.manifest.schema()
    pq.write_table(table.cast(schema), path, **parquet_options(schema))

    def relist(d):
        d["shards"][0].update(bytes=path.stat().st_size, sha256=file_sha256(path))

    rewrite_manifest(root, relist)


def set_nested(table: pa.Table, name: str, value) -> pa.Table:
    rows = table.column(name).to_pylist()

    def fill(x):
        return [fill(v) for v in x] if isinstance(x, list) else value

    rows[0] = fill(rows[0])
    return table.set_column(table.schema.get_field_index(name), name, pa.array(rows, table.schema.field(name).type))


def flip_byte(root: Path) -> None:
    path = root / "shards" / "part-00000.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def another_cache(tmp: Path, cache: Path, name: str) -> Path:
    """A well-formed cache of another pool (its manifest says so)."""
    other = copy_cache(tmp, cache, name)
    rewrite_manifest(other, lambda d: d["pool"].update(fingerprint="0" * 64))
    return other


def user_dir(tmp: Path, name: str = "mine") -> Path:
    mine = tmp / name
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's own file")
    return mine


# --- setups: each returns the placeholders its case uses ------------------------------------------


def s_code(tmp, cache_dir, **_):
    c = copy_cache(tmp, cache_dir)
    plant_code(c, tmp / "MARKER")
    return {"c": c}


def s_code_two(tmp, cache_dir, **_):
    return {**s_code(tmp, cache_dir), "d": copy_cache(tmp, cache_dir, "d")}


def s_unlisted_file(tmp, cache_dir, **_):
    c = copy_cache(tmp, cache_dir)
    (c / "tokenizer" / "helper.py").write_text("raise SystemExit('ran')")
    return {"c": c}


def s_listed_config(tmp, cache_dir, **_):
    c = copy_cache(tmp, cache_dir)
    (c / "tokenizer" / "config.json").write_text(json.dumps({"auto_map": {"AutoConfig": "x.Y"}}))
    relist_tokenizer(c)
    return {"c": c}


def s_linked(rel: str):
    """A setup whose cache has ``rel`` moved outside it and a symbolic link left in its place."""
    def setup(tmp, cache_dir, **_):
        c = copy_cache(tmp, cache_dir)
        outside = tmp / ("outside-" + rel.replace("/", "-"))
        shutil.move(c / rel, outside)
        (c / rel).symlink_to(outside, target_is_directory=outside.is_dir())
        return {"c": c}

    return setup


def s_flipped(tmp, cache_dir, **_):
    c = copy_cache(tmp, cache_dir)
    flip_byte(c)
    return {"c": c}


def s_ids_beyond_vocab(tmp, cache_dir, **_):
    c = copy_cache(tmp, cache_dir)
    vocab = LabelCache.open(c).manifest.teacher.vocab_size
    rewrite_shard(c, lambda t: set_nested(t, "topk_ids", vocab + 7))
    return {"c": c}


def s_target_ids_beyond_vocab(tmp, cache_dir, **_):
    c = copy_cache(tmp, cache_dir)
    rewrite_shard(c, lambda t: set_nested(t, "target_ids", 65000))
    return {"c": c}


def s_positive_logprobs(tmp, cache_dir, **_):
    c = copy_cache(tmp, cache_dir)
    rewrite_shard(c, lambda t: set_nested(t, "topk_logprobs", 3.0))
    return {"c": c}


def s_nan_tail(tmp, cache_dir, **_):
    c = copy_cache(tmp, cache_dir)
    rewrite_shard(c, lambda t: set_nested(t, "tail_logprobs", float("nan")))
    return {"c": c}


def s_deep_manifest(tmp, cache_dir, **_):
    c = copy_cache(tmp, cache_dir)
    (c / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    return {"c": c}


def s_huge_int_manifest(tmp, cache_dir, **_):
    c = copy_cache(tmp, cache_dir)
    text = (c / "manifest.json").read_text()
    data = json.loads(text)
    (c / "manifest.json").write_text(text.replace(f'"shard_size": {data["shard_size"]}', '"shard_size": ' + "9" * 5000))
    return {"c": c}


def s_huge_vocab(tmp, cache_dir, **_):
    c = copy_cache(tmp, cache_dir)
    rewrite_manifest(c, lambda d: d["teacher"].update(vocab_size=10**12))
    return {"c": c}


def s_tokenizer_changed(tmp, cache_dir, **_):
    c = copy_cache(tmp, cache_dir)
    path = c / "tokenizer" / "tokenizer.json"
    text = path.read_text()
    path.write_text(text.replace('"<unk>"', '"<UNK>"', 1))  # same size, other content
    return {"c": c}


def s_rows_invented(tmp, cache_dir, **_):
    c = copy_cache(tmp, cache_dir)
    rewrite_manifest(c, lambda d: d["pool"].update(rows=d["pool"]["rows"] + d["shard_size"]))
    return {"c": c}


def s_push_onto_other(tmp, cache_dir, **_):
    return {"c": copy_cache(tmp, cache_dir), "dest": another_cache(tmp, cache_dir, "dest")}


def s_push_onto_user_dir(tmp, cache_dir, **_):
    return {"c": copy_cache(tmp, cache_dir), "dest": user_dir(tmp)}


def s_copy(tmp, cache_dir, **_):
    return {"c": copy_cache(tmp, cache_dir)}


def s_pull_into_broken(tmp, cache_dir, **_):
    dest = tmp / "dest"
    dest.mkdir()
    (dest / "manifest.json").write_text("{not json")
    return {"c": copy_cache(tmp, cache_dir), "dest": dest}


def s_pull_into_user_dir(tmp, cache_dir, **_):
    return {"c": copy_cache(tmp, cache_dir), "dest": user_dir(tmp)}


def s_pull_into_other_cache(tmp, cache_dir, **_):
    return {"c": copy_cache(tmp, cache_dir), "dest": another_cache(tmp, cache_dir, "dest")}


def s_source_lists_code(tmp, cache_dir, **_):
    c = copy_cache(tmp, cache_dir)
    (c / "tokenizer" / "evil.py").write_text("print('ran')")
    relist_tokenizer(c)
    return {"c": c}


def s_auto_map_only(tmp, cache_dir, **_):
    c = copy_cache(tmp, cache_dir)
    config = json.loads((c / "tokenizer" / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (c / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(config))
    relist_tokenizer(c)
    return {"c": c}


def s_filter_into_user_dir(tmp, cache_dir, **_):
    return {"c": copy_cache(tmp, cache_dir), "out": user_dir(tmp)}


def s_student_user_dir(tmp, cache_dir, t5_dir, **_):
    return {"c": copy_cache(tmp, cache_dir), "out": user_dir(tmp), "t5": t5_dir}


def s_student_into_cache(tmp, cache_dir, t5_dir, **_):
    return {"c": copy_cache(tmp, cache_dir), "d": copy_cache(tmp, cache_dir, "d"), "t5": t5_dir}


def s_student_other_run(tmp, cache_dir, t5_dir, **_):
    out = tmp / "run"
    out.mkdir()
    (out / ".dora-run.json").write_text(json.dumps({"stage": "train-student", "identity": "0" * 64}))
    return {"c": copy_cache(tmp, cache_dir), "out": out, "t5": t5_dir}


def s_student_hostile_marker(tmp, cache_dir, t5_dir, **_):
    out = tmp / "run"
    out.mkdir()
    (out / ".dora-run.json").write_text("[" * 100_000)
    return {"c": copy_cache(tmp, cache_dir), "out": out, "t5": t5_dir}


def s_label_shards_only(tmp, t5_dir, data_dir, **_):
    out = tmp / "out"
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "keep-me.txt").write_text("the user's file")
    return {"out": out, "t5": t5_dir, "data": data_dir}


def s_label_user_dir(tmp, t5_dir, data_dir, **_):
    return {"out": user_dir(tmp, "out"), "t5": t5_dir, "data": data_dir}


def s_label_other_cache(tmp, cache_dir, t5_dir, data_dir, **_):
    return {"out": another_cache(tmp, cache_dir, "out"), "t5": t5_dir, "data": data_dir}


TRAIN = ["train-student", "--task", "fever", "--student", "{t5}", "--cache", "{c}", "--max-steps", "1"]
LABEL = ["teacher-label", "--task", "fever", "--teacher", "{t5}", "--train", "{data}/train.jsonl",
         "--pool", "{data}/pool.jsonl", "--out", "{out}", "--max-steps", "1", "--shard-size", "16"]
OFFLINE = {"HF_HUB_OFFLINE": "1"}

CASES = [
    # 1. Custom code in a cache's tokenizer: refused by every reader, before anything loads it.
    Case("code/info", ["cache", "info", "{c}"], 2, "\'tokenizer/evil.py\', which is not a tokenizer data file", s_code),
    Case("code/verify", ["cache", "verify", "{c}"], 1, "\'tokenizer/evil.py\', which is not a tokenizer data file", s_code),
    Case("code/push", ["cache", "push", "{c}", "{tmp}/pushed"], 2, "\'tokenizer/evil.py\', which is not a tokenizer data file", s_code),
    Case("code/pull", ["cache", "pull", "{c}", "{tmp}/pulled"], 2, "not a tokenizer data file", s_code),
    Case("code/filter", ["cache", "filter", "{c}", "{tmp}/f", "--min-length", "1"], 2, "\'tokenizer/evil.py\', which is not a tokenizer data file", s_code),
    Case("code/merge", ["cache", "merge", "{c}", "{d}", "--out", "{tmp}/m"], 2, "\'tokenizer/evil.py\', which is not a tokenizer data file", s_code_two),
    Case("code/train-topk", [*TRAIN, "--out", "{tmp}/r"], 2, "\'tokenizer/evil.py\', which is not a tokenizer data file", s_code),
    Case("code/train-uld", [*TRAIN, "--kd-loss", "uld", "--out", "{tmp}/r"], 2, "\'tokenizer/evil.py\', which is not a tokenizer data file", s_code),
    Case("tokenizer/unlisted-file", ["cache", "info", "{c}"], 2, "helper.py: not listed in the manifest",
         s_unlisted_file),
    Case("tokenizer/listed-config", ["cache", "verify", "{c}"], 1, "'tokenizer/config.json', which is not a tokenizer",
         s_listed_config),
    Case("tokenizer/changed", [*TRAIN, "--out", "{tmp}/r"], 2, "tokenizer.json: sha256 does not match",
         s_tokenizer_changed),
    # 3. Links out of the cache: never followed, by readers or copiers.
    Case("link/tokenizer-dir/info", ["cache", "info", "{c}"], 2, "tokenizer: is a symbolic link", s_linked("tokenizer")),
    Case("link/tokenizer-dir/push", ["cache", "push", "{c}", "{tmp}/pushed"], 2, "symbolic link",
         s_linked("tokenizer")),
    Case("link/tokenizer-dir/filter", ["cache", "filter", "{c}", "{tmp}/f", "--min-length", "1"], 2,
         "symbolic link", s_linked("tokenizer")),
    Case("link/shards-dir/train", [*TRAIN, "--out", "{tmp}/r"], 2, "shards: is a symbolic link", s_linked("shards")),
    Case("link/shards-dir/verify", ["cache", "verify", "{c}"], 1, "symbolic link", s_linked("shards")),
    Case("link/tokenizer-file/merge", ["cache", "merge", "{c}", "{c}", "--out", "{tmp}/m"], 2,
         "tokenizer.json: is a symbolic link", s_linked("tokenizer/tokenizer.json")),
    Case("link/manifest/info", ["cache", "info", "{c}"], 2, "manifest.json: is a symbolic link", s_linked("manifest.json")),
    Case("link/source-shard/pull", ["cache", "pull", "{c}", "{tmp}/pulled"], 2, "part-00001.parquet: is a symbolic link",
         s_linked("shards/part-00001.parquet")),
    Case("code/auto-map-only/info", ["cache", "info", "{c}"], 2, "tokenizer_config.json: declares custom tokenizer code",
         s_auto_map_only),
    Case("code/auto-map-only/verify", ["cache", "verify", "{c}"], 1, "declares custom tokenizer code", s_auto_map_only),
    Case("code/auto-map-only/pull", ["cache", "pull", "{c}", "{tmp}/pulled"], 2, "declares custom tokenizer code",
         s_auto_map_only),
    Case("code/auto-map-only/train", [*TRAIN, "--kd-loss", "aligned", "--out", "{tmp}/r"], 2,
         "declares custom tokenizer code", s_auto_map_only),
    Case("code/source-lists-py/pull", ["cache", "pull", "{c}", "{tmp}/pulled"], 2, "'tokenizer/evil.py'",
         s_source_lists_code),
    # 5. Integrity on every read.
    Case("flipped/train", [*TRAIN, "--out", "{tmp}/r"], 2, "part-00000.parquet: sha256 does not match", s_flipped),
    Case("flipped/filter", ["cache", "filter", "{c}", "{tmp}/f", "--min-length", "1"], 2, "sha256 does not match",
         s_flipped),
    Case("flipped/merge", ["cache", "merge", "{c}", "{c}", "--out", "{tmp}/m"], 2, "sha256 does not match", s_flipped),
    Case("flipped/info", ["cache", "info", "{c}"], 2, "sha256 does not match", s_flipped),
    # 6. Values out of range with a valid sha256: one line, not an IndexError or a NaN loss.
    Case("ids-beyond-vocab/train", [*TRAIN, "--out", "{tmp}/r"], 2, "row 0: topk_ids outside the teacher vocabulary",
         s_ids_beyond_vocab),
    Case("ids-beyond-vocab/train-no-verify", [*TRAIN, "--no-verify", "--out", "{tmp}/r"], 2,
         "topk_ids outside the teacher vocabulary", s_ids_beyond_vocab),
    Case("ids-beyond-vocab/filter", ["cache", "filter", "{c}", "{tmp}/f", "--max-entropy", "9"], 2,
         "outside the teacher vocabulary", s_ids_beyond_vocab),
    Case("ids-beyond-vocab/verify", ["cache", "verify", "{c}"], 1, "topk_ids outside the teacher vocabulary",
         s_ids_beyond_vocab),
    Case("target-ids-beyond-vocab/train", [*TRAIN, "--out", "{tmp}/r"], 2, "target_ids outside the teacher vocabulary",
         s_target_ids_beyond_vocab),
    Case("positive-logprobs/train", [*TRAIN, "--out", "{tmp}/r"], 2, "topk_logprobs holds values above 0",
         s_positive_logprobs),
    Case("nan-tail/train", [*TRAIN, "--out", "{tmp}/r"], 2, "tail_logprobs holds values above 0 or NaN", s_nan_tail),
    # 6. Hostile JSON.
    Case("deep-manifest/info", ["cache", "info", "{c}"], 2, "nested more than", s_deep_manifest),
    Case("deep-manifest/verify", ["cache", "verify", "{c}"], 1, "nested more than", s_deep_manifest),
    Case("deep-manifest/train", [*TRAIN, "--out", "{tmp}/r"], 2, "nested more than", s_deep_manifest),
    Case("deep-manifest/pull", ["cache", "pull", "{c}", "{tmp}/pulled"], 2, "nested more than", s_deep_manifest),
    Case("huge-int-manifest/info", ["cache", "info", "{c}"], 2, "not a file dora wrote", s_huge_int_manifest),
    Case("huge-int-manifest/pull", ["cache", "pull", "{c}", "{tmp}/pulled"], 2, "not a file dora wrote",
         s_huge_int_manifest),
    Case("huge-vocab/train", [*TRAIN, "--out", "{tmp}/r"], 2, "vocab_size 1000000000000 is not between", s_huge_vocab),
    Case("rows-invented/verify", ["cache", "verify", "{c}"], 1, "rows are missing or invented", s_rows_invented),
    # 2. Writers never overwrite what is not theirs.
    Case("push/onto-another-cache", ["cache", "push", "{c}", "{dest}"], 2, "holds another cache", s_push_onto_other),
    Case("push/onto-user-dir", ["cache", "push", "{c}", "{dest}"], 2, "is no dora cache", s_push_onto_user_dir),
    Case("push/into-itself", ["cache", "push", "{c}", "{c}/shards"], 2, "lies inside it", s_copy),
    Case("push/hub-offline", ["cache", "push", "{c}", "hf://datasets/org/name"], 2, "offline", s_copy, env=OFFLINE),
    Case("pull/hub-offline", ["cache", "pull", "hf://datasets/org/name", "{tmp}/pulled"], 2, "offline", env=OFFLINE),
    Case("pull/refused-connection", ["cache", "pull", "http://127.0.0.1:9/cache", "{tmp}/pulled"], 2,
         "cannot be reached"),
    Case("pull/into-broken-manifest", ["cache", "pull", "{c}", "{dest}"], 2, "not a readable cache", s_pull_into_broken),
    Case("pull/into-user-dir", ["cache", "pull", "{c}", "{dest}"], 2, "is no dora cache", s_pull_into_user_dir),
    Case("pull/into-another-cache", ["cache", "pull", "{c}", "{dest}"], 2, "holds another cache",
         s_pull_into_other_cache),
    Case("filter/no-criterion-leaves-nothing", ["cache", "filter", "{c}", "{tmp}/f"], 2, "at least one criterion",
         s_copy),
    Case("filter/into-user-dir", ["cache", "filter", "{c}", "{out}", "--min-length", "1"], 2, "not empty",
         s_filter_into_user_dir),
    Case("merge/into-user-dir", ["cache", "merge", "{c}", "{c}", "--out", "{out}"], 2, "not empty",
         s_filter_into_user_dir),
    Case("student/into-user-dir", [*TRAIN, "--out", "{out}"], 2, "is not a dora student run (notes.txt is there)",
         s_student_user_dir),
    Case("student/into-a-cache", [*TRAIN, "--out", "{d}"], 2, "is not a dora student run", s_student_into_cache),
    Case("student/into-another-run", [*TRAIN, "--out", "{out}"], 2, "holds an unfinished student run with other",
         s_student_other_run),
    Case("student/hostile-marker", [*TRAIN, "--out", "{out}"], 2, "nested more than", s_student_hostile_marker),
    Case("label/out-with-only-shards", LABEL, 2, "is not empty and is not a dora cache (shards is there)",
         s_label_shards_only),
    Case("label/out-user-dir", LABEL, 2, "is not a dora cache (notes.txt is there)", s_label_user_dir),
    Case("label/out-another-cache", LABEL, 2, "holds a cache made with a different pool", s_label_other_cache),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_hostile_cache_or_target(case, tmp_path, cache_dir, t5_dir, data_dir):
    run_case(case, tmp_path, cache_dir=cache_dir, t5_dir=t5_dir, data_dir=data_dir, t5=t5_dir, data=data_dir)
    assert not (tmp_path / "MARKER").exists(), "code shipped with a cache ran"
    for leftover in ("pulled", "pushed", "f", "m", "r", "pulled.hub-download"):
        assert not (tmp_path / leftover).exists(), f"{leftover} left behind by a refused command"


def test_no_verify_skips_the_hash_and_is_recorded(cache_dir, tmp_path, t5_dir):
    """--no-verify skips the sha256 check (and run.json says so); the value checks still run."""
    from typer.testing import CliRunner

    from dora.cli import app

    c = copy_cache(tmp_path, cache_dir)
    rewrite_manifest(c, lambda d: d["shards"][2].update(sha256="f" * 64))  # a stale hash over sound bytes
    args = ["train-student", "--task", "fever", "--student", str(t5_dir), "--cache", str(c), "--max-steps", "1"]
    refused = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "r1")])
    assert refused.exit_code == 2 and "part-00002.parquet: sha256 does not match" in refused.output
    assert not (tmp_path / "r1").exists()
    skipped = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "r2"), "--no-verify"])
    assert skipped.exit_code == 0, skipped.output
    record = json.loads((tmp_path / "r2" / "run.json").read_text())
    assert record["cache_verified"] is False and record["config"]["verify"] is False


def test_push_leaves_nothing_in_the_source_cache(cache_dir, tmp_path):
    c = copy_cache(tmp_path, cache_dir)
    before = sorted(p.name for p in c.rglob("*"))
    from dora.cache.share import push

    push(c, str(tmp_path / "dest"))
    assert sorted(p.name for p in c.rglob("*")) == before
    assert not (tmp_path / "dest" / ".dora-push.json").exists()
    assert LabelCache.open(tmp_path / "dest").manifest == LabelCache.open(c).manifest


def test_an_interrupted_push_resumes_and_only_its_own(cache_dir, tmp_path, monkeypatch):
    from dora.cache import share
    from dora.errors import CacheError

    c = copy_cache(tmp_path, cache_dir)
    dest = tmp_path / "dest"
    real = share.contained
    calls = {"n": 0}

    def dies_after_two_files(root, rel):
        if rel.startswith("shards/"):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
        return real(root, rel)

    monkeypatch.setattr(share, "contained", dies_after_two_files)
    with pytest.raises(KeyboardInterrupt):
        share.push(c, str(dest))
    monkeypatch.setattr(share, "contained", real)
    assert (dest / share.PUSH_MARKER).exists() and not (dest / "manifest.json").exists()
    other = another_cache(tmp_path, cache_dir, "other")
    with pytest.raises(CacheError, match="unfinished push of another cache"):
        share.push(other, str(dest))
    share.push(c, str(dest))
    assert LabelCache.open(dest).manifest == LabelCache.open(c).manifest


def test_the_cache_tokenizer_is_loaded_without_remote_code_even_unchecked(cache_dir, tmp_path, monkeypatch):
    """Second line of defence: were the checks gone, trust_remote_code=False still keeps the code out."""
    from dora.cache import trust
    from dora.errors import CacheError

    c = copy_cache(tmp_path, cache_dir)
    plant_code(c, tmp_path / "MARKER")
    monkeypatch.setattr(trust, "check_tokenizer_files", lambda root, listed, **kw: root / "tokenizer")
    try:  # transformers either ignores the auto_map or refuses it; it never imports evil.py
        tokenizer = trust.load_cache_tokenizer(c, [])
        assert type(tokenizer).__module__.startswith("transformers.")
    except CacheError:
        pass
    assert not (tmp_path / "MARKER").exists()


def test_writer_refuses_a_teacher_tokenizer_that_needs_code(cache_dir, tmp_path):
    from transformers import AutoTokenizer

    from dora.cache import CacheWriter
    from dora.errors import CacheError

    c = copy_cache(tmp_path, cache_dir)
    manifest = LabelCache.open(c).manifest
    tok = AutoTokenizer.from_pretrained(str(c / "tokenizer"))
    tok.init_kwargs["auto_map"] = {"AutoTokenizer": ["x.Y", None]}  # saved into tokenizer_config.json
    fresh = dataclasses.replace(manifest, shards=(), complete=False, tokenizer_files=())
    with pytest.raises(CacheError, match="needs custom code"):
        CacheWriter.open(tmp_path / "new", fresh, tok)
    assert not (tmp_path / "new" / "tokenizer").exists()


# --- the same crafted cache through real processes, with a terminal that answers "y" ------------------


PTY_COMMANDS = [
    ["cache", "info", "{c}"],
    ["cache", "verify", "{c}"],
    ["cache", "push", "{c}", "{tmp}/pushed"],
    ["cache", "pull", "{c}", "{tmp}/pulled"],
    ["cache", "filter", "{c}", "{tmp}/f", "--min-length", "1"],
    ["cache", "merge", "{c}", "{c}", "--out", "{tmp}/m"],
    ["train-student", "--task", "fever", "--student", "{t5}", "--cache", "{c}", "--out", "{tmp}/r1", "--max-steps", "1"],
    ["train-student", "--task", "fever", "--student", "{t5}", "--cache", "{c}", "--out", "{tmp}/r2", "--max-steps", "1",
     "--kd-loss", "uld"],
]


def test_planted_tokenizer_code_never_runs_even_when_a_terminal_says_yes(cache_dir, t5_dir, tmp_path):
    import pty

    c = copy_cache(tmp_path, cache_dir)
    marker = tmp_path / "MARKER"
    plant_code(c, marker)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    for command in PTY_COMMANDS:
        args = [a.format(c=c, tmp=tmp_path, t5=t5_dir) for a in command]
        master, slave = pty.openpty()
        os.write(master, b"y\n" * 64)  # transformers' "Do you wish to run the custom code? [y/N]"
        try:
            done = subprocess.run([sys.executable, "-m", "dora", *args], stdin=slave, capture_output=True, text=True,
                                  env=env, timeout=300)
        finally:
            os.close(slave)
            os.close(master)
        assert done.returncode in (1, 2), (args, done.stdout, done.stderr)
        assert "custom tokenizer code" in done.stdout + done.stderr or "not a tokenizer data file" in done.stderr, \
            (args, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        assert not marker.exists(), f"the cache's code ran under: dora {' '.join(args)}"


# --- a full disk names the file, and leaves no half-written cache -----------------------------------


def _enospc(path):
    import errno

    return OSError(errno.ENOSPC, "No space left on device", str(path))


def test_a_full_disk_during_filter_names_the_file_and_keeps_nothing(cache_dir, tmp_path, monkeypatch):
    from dora.cache import transform
    from dora.errors import CacheError

    def full(table, where, **kw):
        raise _enospc(where)

    monkeypatch.setattr(transform.pq, "write_table", full)
    with pytest.raises(CacheError, match=r"part-00000.parquet.tmp: could not write the derived cache \(No space"):
        transform.filter_cache(cache_dir, tmp_path / "f", min_length=1)
    assert not (tmp_path / "f").exists()


def test_a_full_disk_during_merge_keeps_an_empty_out_empty(cache_dir, tmp_path, monkeypatch):
    from dora.cache import transform
    from dora.errors import CacheError

    (tmp_path / "m").mkdir()  # given empty: it stays, empty
    monkeypatch.setattr(transform, "write_manifest", lambda root, m: (_ for _ in ()).throw(_enospc(root / "manifest.json")))
    with pytest.raises(CacheError, match="manifest.json: could not write the derived cache"):
        transform.merge_caches([cache_dir, cache_dir], tmp_path / "m")
    assert (tmp_path / "m").is_dir() and not any((tmp_path / "m").iterdir())


def test_a_full_disk_during_pull_names_the_file(cache_dir, tmp_path, monkeypatch):
    from dora.cache import share
    from dora.errors import CacheError

    monkeypatch.setattr(share, "write_manifest", lambda root, m: (_ for _ in ()).throw(_enospc(root / "manifest.json")))
    with pytest.raises(CacheError, match=r"got/manifest.json: no space left on the device; free space, then rerun"):
        share.pull(str(cache_dir), tmp_path / "got")
    monkeypatch.undo()
    share.pull(str(cache_dir), tmp_path / "got")  # the rerun finishes it
    assert LabelCache.open(tmp_path / "got").manifest == LabelCache.open(cache_dir).manifest


def test_a_damaged_source_in_merge_leaves_no_out(cache_dir, tmp_path):
    from dora.cache.transform import merge_caches
    from dora.errors import CacheError

    c = copy_cache(tmp_path, cache_dir)
    rewrite_manifest(c, lambda d: d["shards"][1].update(sha256="0" * 64))
    with pytest.raises(CacheError, match="part-00001.parquet: sha256 does not match"):
        merge_caches([cache_dir, c], tmp_path / "m")
    assert not (tmp_path / "m").exists()
