"""Sharing caches: info, verify, push and pull through real backends, damage and malice refused."""

from __future__ import annotations

import functools
import http.server
import json
import math
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dora.cache import LabelCache
from dora.cache.share import pull, push
from dora.cache.verify import verify
from dora.cli import app
from dora.errors import CacheError

runner = CliRunner()


def _files(root: Path) -> dict[str, bytes]:
    """The cache's files; the local cost ledger stays home (the manifest carries its entries)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "dora-ledger.jsonl"}


@pytest.fixture
def served(tmp_path):
    """A loopback HTTP server over a directory (python's http.server), stopped after the test."""
    servers = []

    def serve(directory: Path) -> str:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
        handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for s in servers:
        s.shutdown()


def test_info_and_verify_a_sound_cache(cache_dir):
    result = runner.invoke(app, ["cache", "info", str(cache_dir), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["rows"] == 40 and info["shards"] == 3 and info["tokens"] > 0 and info["bytes_per_token"] > 0
    assert info["seq_logprob"]["mean"] < 0 and info["costs"]["labeling"]["examples"] == 40
    assert "teacher" in runner.invoke(app, ["cache", "info", str(cache_dir)]).output
    assert verify(cache_dir) == []
    ok = runner.invoke(app, ["cache", "verify", str(cache_dir)])
    assert ok.exit_code == 0 and ok.stdout.strip().endswith(": ok")


def test_verify_reports_one_line_per_problem(cache_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(cache_dir, bad)
    shard = bad / "shards" / "part-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[64] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = runner.invoke(app, ["cache", "verify", str(bad)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "part-00001.parquet: sha256" in lines[0]


@pytest.mark.parametrize("scheme", ["dir", "file", "memory"])
def test_push_pull_round_trip_is_byte_identical(cache_dir, tmp_path, scheme):
    dest = {"dir": str(tmp_path / "remote"), "file": f"file://{tmp_path / 'remote'}",
            "memory": f"memory://dora-test-{tmp_path.name}"}[scheme]
    result = runner.invoke(app, ["cache", "push", str(cache_dir), dest, "--license", "cc-by-sa-4.0"])
    assert result.exit_code == 0, result.output
    got = tmp_path / "pulled"
    result = runner.invoke(app, ["cache", "pull", dest, str(got)])
    assert result.exit_code == 0, result.output
    assert _files(got) == {k: v for k, v in _files(cache_dir).items()}
    assert verify(got) == []


def test_pull_over_http_and_load_with_datasets(cache_dir, tmp_path, served):
    import datasets

    remote = tmp_path / "hublike"
    push(cache_dir, str(remote), license="cc-by-sa-4.0")
    card = (remote / "README.md").read_text()
    assert "license: cc-by-sa-4.0" in card and "path: shards/*.parquet" in card and "dora train-student" in card
    ds = datasets.load_dataset(str(remote), split="train")
    assert ds.num_rows == 40 and len(ds[0]["topk_ids"][0]) == 8
    url = served(remote)
    pull(url, tmp_path / "pulled")
    assert _files(tmp_path / "pulled") == _files(cache_dir)
    subset = pull(url, tmp_path / "subset", shards=[0, 2])
    assert [s.index for s in subset.shards] == [0, 2] and subset.lineage["subset"]["of_rows"] == 40
    assert LabelCache.open(tmp_path / "subset").num_rows == 24
    assert pull(url, tmp_path / "first", rows=20).rows == 32  # whole shards covering 20 rows


@pytest.mark.parametrize(("damage", "needle"), [
    ("flip", "part-00001.parquet: sha256 does not match"),
    ("truncate", "part-00001.parquet: 10 bytes"),
    ("delete", "part-00001.parquet: listed in the manifest but missing at the source"),
    ("manifest", "part-00001.parquet: sha256 does not match"),
])
def test_pull_refuses_damage_naming_the_shard(cache_dir, tmp_path, damage, needle):
    remote = tmp_path / "remote"
    push(cache_dir, str(remote))
    shard = remote / "shards" / "part-00001.parquet"
    if damage == "flip":
        data = bytearray(shard.read_bytes())
        data[100] ^= 0x01
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:10])
    elif damage == "delete":
        shard.unlink()
    else:
        manifest = json.loads((remote / "manifest.json").read_text())
        manifest["shards"][1]["sha256"] = "0" * 64
        (remote / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["cache", "pull", str(remote), str(tmp_path / "got")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines
    assert not (tmp_path / "got" / "shards" / "part-00001.parquet").exists()
    assert not (tmp_path / "got" / "manifest.json").exists()  # nothing usable was left half-made
    assert not list((tmp_path / "got").rglob("*.part-*"))


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("file", "../../../etc/passwd", "not shards/part-NNNNN.parquet"),
    ("file", "/etc/passwd", "not shards/part-NNNNN.parquet"),
    ("bytes", 10**15, "beyond any real shard"),
    ("tokenizer", "../../secret", "is not tokenizer/NAME"),
])
def test_malicious_manifests_are_refused_before_reading(cache_dir, tmp_path, field, value, needle):
    remote = tmp_path / "remote"
    push(cache_dir, str(remote))
    manifest = json.loads((remote / "manifest.json").read_text())
    if field == "tokenizer":
        manifest["tokenizer_files"][0]["file"] = value
    else:
        manifest["shards"][0][field] = value
    (remote / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match=needle):
        pull(str(remote), tmp_path / "got")
    assert not (tmp_path / "got" / "shards").exists()


def test_symlinks_out_of_a_cache_are_refused(cache_dir, tmp_path):
    local = tmp_path / "cache"
    shutil.copytree(cache_dir, local)
    outside = tmp_path / "elsewhere.parquet"
    shutil.move(local / "shards" / "part-00000.parquet", outside)
    (local / "shards" / "part-00000.parquet").symlink_to(outside)
    assert any("symbolic link" in p for p in verify(local))
    with pytest.raises(CacheError, match="part-00000.parquet: is a symbolic link"):
        pull(str(local), tmp_path / "got")
    assert not (tmp_path / "got" / "shards" / "part-00000.parquet").exists()


def test_an_interrupted_pull_resumes(cache_dir, tmp_path, monkeypatch):
    from dora.cache import share

    remote = tmp_path / "remote"
    push(cache_dir, str(remote))
    got = tmp_path / "got"
    fetch = share._fetch

    def dies_at_the_last_shard(fs, url, target, *args):
        if target.name == "part-00002.parquet":
            target.with_name(".part-00002.parquet.part-999").write_bytes(b"half")
            raise KeyboardInterrupt  # the transfer dies mid-file
        fetch(fs, url, target, *args)

    monkeypatch.setattr(share, "_fetch", dies_at_the_last_shard)
    with pytest.raises(KeyboardInterrupt):
        pull(str(remote), got)
    assert not (got / "manifest.json").exists() and (got / share.PULL_MARKER).exists()
    monkeypatch.setattr(share, "_fetch", fetch)
    kept = got / "shards" / "part-00000.parquet"
    before = kept.stat().st_mtime_ns
    pull(str(remote), got)
    assert kept.stat().st_mtime_ns == before  # not fetched again
    assert _files(got) == _files(cache_dir)  # the dead pull's partial file and its marker are gone
    assert verify(got) == []


def test_filter_keeps_what_passes_and_records_lineage(cache_dir, tmp_path):
    from dora.cache.shard import DecodedShard
    from dora.cache.transform import mean_entropy

    table = LabelCache.open(cache_dir).read()
    shard = DecodedShard(table)
    lp = table.column("seq_logprob").to_numpy()
    cut = float(np.median(lp))
    result = runner.invoke(app, ["cache", "filter", str(cache_dir), str(tmp_path / "f"), "--min-seq-logprob", str(cut)])
    assert result.exit_code == 0, result.output
    kept = LabelCache.open(tmp_path / "f")
    assert kept.num_rows == int((lp >= cut).sum()) and 0 < kept.num_rows < 40
    assert (kept.read().column("seq_logprob").to_numpy() >= cut).all()
    assert kept.manifest.lineage["filter"]["criteria"] == {"min_seq_logprob": cut}
    assert verify(tmp_path / "f") == []
    # Mean token entropy of the top-k plus the tail bucket, by hand; the tail's mass is the stored
    # one at T = 1 (format 2), or what the top-k leaves (format 1).
    for column in (0, None):
        expected = []
        for row in table.to_pylist():
            per = []
            for lps, tails in zip(row["topk_logprobs"], row["tail_logprobs"]):
                p = [math.exp(x) for x in lps]
                tail = math.exp(tails[0]) if column == 0 else max(0.0, 1 - sum(p))
                per.append(-sum(q * math.log(q) for q in p) - (tail * math.log(tail) if tail > 0 else 0.0))
            expected.append(sum(per) / len(per) if per else 0.0)
        assert mean_entropy(shard, column) == pytest.approx(np.array(expected), rel=1e-9, abs=1e-12)
    assert mean_entropy(shard, 0).max() > mean_entropy(shard, 0).min() > 0
    # Gold agreement (the tiny fixture teacher's pseudo-labels may be empty strings, so the gold
    # mapping is given directly; the CLI reads it from a labeled file with ids).
    rows = table.to_pylist()
    gold = {r["id"]: r["target"] if i % 2 else r["target"] + " (disagrees)" for i, r in enumerate(rows)}
    from dora.cache.transform import filter_cache

    agreed = filter_cache(cache_dir, tmp_path / "g", gold=gold)
    assert agreed.rows == 20 and agreed.lineage["filter"]["criteria"] == {"gold_agreement": True}
    none = runner.invoke(app, ["cache", "filter", str(cache_dir), str(tmp_path / "h")])
    assert none.exit_code == 2 and "at least one criterion" in none.stderr


def test_merge_deduplicates_and_refuses_mixed_teachers(cache_dir, tmp_path):
    from dora.cache.transform import filter_cache

    a = filter_cache(cache_dir, tmp_path / "a", max_length=10**6)  # all rows
    b = filter_cache(cache_dir, tmp_path / "b", min_seq_logprob=-1e9)
    result = runner.invoke(app, ["cache", "merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out",
                                 str(tmp_path / "m"), "--shard-size", "25"])
    assert result.exit_code == 0, result.output
    merged = LabelCache.open(tmp_path / "m")
    assert merged.num_rows == a.rows == b.rows == 40 and merged.manifest.lineage["duplicates_dropped"] == 40
    assert [s.rows for s in merged.manifest.shards] == [25, 15]
    assert verify(tmp_path / "m") == []
    other = tmp_path / "other"
    shutil.copytree(cache_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["generation"]["max_new_tokens"] = 99
    (other / "manifest.json").write_text(json.dumps(manifest))
    bad = runner.invoke(app, ["cache", "merge", str(cache_dir), str(other), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "different generation" in bad.stderr


def test_filter_by_a_gold_file_through_the_cli(cache_dir, tmp_path):
    rows = LabelCache.open(cache_dir).read().to_pylist()
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps({"id": r["id"], "source": r["source"], "target": "SUPPORTS"}) + "\n"
                            for r in rows))
    result = runner.invoke(app, ["cache", "filter", str(cache_dir), str(tmp_path / "g"), "--gold", str(gold)])
    assert result.exit_code == 0, result.output
    expected = sum(r["target"].strip() == "SUPPORTS" for r in rows)
    assert f"kept {expected} of 40 rows" in result.stdout
    assert LabelCache.open(tmp_path / "g").num_rows == expected


def test_hub_urls_are_parsed_and_checked():
    from dora.cache.share import _hub

    assert _hub("hf://datasets/my-lab/fever-t5xxl") == ("my-lab/fever-t5xxl", None)
    assert _hub("hf://datasets/my-lab/fever-t5xxl@v1.0") == ("my-lab/fever-t5xxl", "v1.0")
    assert _hub("s3://bucket/cache") is None
    with pytest.raises(CacheError, match="dataset repositories"):
        _hub("hf://my-lab/model")
    with pytest.raises(CacheError, match="ORG/NAME"):
        _hub("hf://datasets/just-a-name")


def test_the_dataset_cards_commands_use_current_visible_options(cache_dir):
    """The card's `dora train-student` line is a promise to whoever pulls the cache: every option it
    names is one train-student shows in --help (not a hidden, deprecated one such as --eval)."""
    import re

    import typer

    from dora.cache import LabelCache
    from dora.cache.card import dataset_card
    from dora.cli import app

    card = dataset_card(LabelCache.open(cache_dir).manifest)
    line = next(x for x in card.splitlines() if x.startswith("dora train-student"))
    command = typer.main.get_command(app).commands["train-student"]
    visible = {o for p in command.params if not getattr(p, "hidden", False) for o in (*p.opts, *p.secondary_opts)}
    named = set(re.findall(r"(--[a-z][a-z0-9-]*)", line))
    assert named and named <= visible, sorted(named - visible)
