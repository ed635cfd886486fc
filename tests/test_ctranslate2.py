"""The CTranslate2 engine: the same cache as the transformers engine on T5 teachers, a conversion
made once and checked, and the transformers-5 scale bug of CTranslate2's T5 converter caught."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dora.cache import LabelCache
from dora.cli import app
from dora.errors import ModelError
from dora.pipeline.engines import ctranslate2_engine
from dora.pipeline.engines.registry import resolve_engine

pytest.importorskip("ctranslate2", reason="CTranslate2 is not installed (pip install 'dora-distill[ctranslate2]')")

ARGS = ["--top-k", "6", "--max-new-tokens", "8", "--shard-size", "20", "--label-batch-size", "7"]


@pytest.fixture(scope="module")
def relu_t5(tmp_path_factory, t5_dir) -> Path:
    """A T5 of the original kind: ReLU, tied embeddings, so the decoder output is scaled."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(str(t5_dir))
    torch.manual_seed(3)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=1, num_decoder_layers=1,
                      num_heads=2, feed_forward_proj="relu", tie_word_embeddings=True, dropout_rate=0.0,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("relu") / "t5"
    T5ForConditionalGeneration(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def _run(teacher: Path, pool: Path, out: Path, engine: str, *extra: str):
    # dora refuses an option given twice: an option in ``extra`` replaces its ARGS default.
    defaults = [x for name, value in zip(ARGS[::2], ARGS[1::2]) if name not in extra for x in (name, value)]
    return CliRunner().invoke(app, ["teacher-label", "--task", "fever", "--teacher", str(teacher), "--no-finetune",
                                    "--pool", str(pool), "--out", str(out), "--engine", engine, *defaults, *extra])


def _label(teacher: Path, pool: Path, out: Path, engine: str, *extra: str) -> list[dict]:
    result = _run(teacher, pool, out, engine, *extra)
    assert result.exit_code == 0, result.output
    return LabelCache.open(out).read().to_pylist()


@pytest.mark.parametrize("which", ["v1.1 (gated-gelu, untied head, fine-tuned)", "relu, tied and scaled"])
def test_ctranslate2_writes_the_cache_the_transformers_engine_writes(which, cache_dir, relu_t5, data_dir, tmp_path):
    teacher = cache_dir.with_name(cache_dir.name + ".teacher") if which.startswith("v1.1") else relu_t5
    ours = _label(teacher, data_dir / "pool.jsonl", tmp_path / "ct2", "ctranslate2")
    reference = _label(teacher, data_dir / "pool.jsonl", tmp_path / "hf", "transformers")
    assert len(ours) == len(reference) == 40
    for a, b in zip(ours, reference):
        assert a["target_ids"] == b["target_ids"] and a["target"] == b["target"]
        assert a["topk_ids"] == b["topk_ids"]
        for column in ("topk_logprobs", "tail_logprobs"):  # float16 storage: within 1e-4 plus one rounding step
            np.testing.assert_allclose(np.array(a[column], np.float32), np.array(b[column], np.float32),
                                       atol=1e-4, rtol=2**-10)
        np.testing.assert_allclose(a["label_logprobs"], b["label_logprobs"], atol=1e-4)
        assert a["seq_logprob"] == pytest.approx(b["seq_logprob"], abs=1e-4)
    manifest = LabelCache.open(tmp_path / "ct2").manifest
    assert manifest.generation.backend == "ctranslate2"
    assert manifest.generation.engine["compute_type"] == "float32"


def test_the_unpatched_converter_is_caught_by_the_check(cache_dir, monkeypatch, tmp_path):
    """CTranslate2's own T5 converter under transformers 5 scales a T5 v1.1's decoder output as if
    its embeddings were tied: the conversion check refuses it and keeps nothing."""
    from ctranslate2.converters import TransformersConverter

    from dora.pipeline.models.gguf import dora_home
    from dora.pipeline.models.loading import load_tokenizer

    def unpatched(model_dir, out, *, trust_remote_code):
        TransformersConverter(model_dir).convert(str(out), quantization=None, force=True)

    monkeypatch.setattr(ctranslate2_engine, "_convert", unpatched)
    monkeypatch.setenv("DORA_HOME", str(tmp_path / "home"))
    teacher = str(cache_dir.with_name(cache_dir.name + ".teacher"))
    with pytest.raises(ModelError, match="differ from transformers'"):
        ctranslate2_engine.convert(teacher, load_tokenizer(teacher))
    assert list((dora_home() / "ctranslate2").iterdir()) == []


def test_auto_picks_ctranslate2_for_seq2seq_and_refuses_it_for_decoder_only():
    assert resolve_engine("auto", "seq2seq", "T5ForConditionalGeneration")[0] == "ctranslate2"
    assert resolve_engine("ctranslate2", "seq2seq", "T5ForConditionalGeneration") == ("ctranslate2", "requested")
    with pytest.raises(Exception, match="seq2seq"):
        resolve_engine("ctranslate2", "causal", "LlamaForCausalLM")


def test_int8_is_compared_with_float32_first_and_the_agreement_recorded(cache_dir, data_dir, tmp_path):
    """--compute-type int8 labels the pool's first rows in float32 and int8 first; what it records
    is checked here against two whole caches, one labeled in each type."""
    teacher, pool = cache_dir.with_name(cache_dir.name + ".teacher"), data_dir / "pool.jsonl"
    one_shard = ("--shard-size", "64")  # the sample (all 40 rows) is batched exactly as the cache is
    result = _run(teacher, pool, tmp_path / "int8", "ctranslate2", "--compute-type", "int8", *one_shard)
    assert result.exit_code == 0, result.output
    assert "ctranslate2 int8 against float32 on the pool's first 40 rows: labels equal on" in " ".join(result.output.split())
    low = LabelCache.open(tmp_path / "int8").read().to_pylist()
    ref = _label(teacher, pool, tmp_path / "f32", "ctranslate2", *one_shard)
    manifest = LabelCache.open(tmp_path / "int8").manifest
    assert manifest.generation.dtype == "int8" and manifest.generation.engine["compute_type"] == "int8"
    recorded = manifest.generation.engine["agreement"]
    assert recorded["rows"] == 40 and recorded["reference"] == "float32" and recorded["compute_type"] == "int8"
    assert recorded["labels_equal"] == pytest.approx(np.mean([a["target_ids"] == b["target_ids"] for a, b in zip(ref, low)]))
    deltas = []
    for a, b in zip(ref, low):  # top-1 log-probabilities while both decoded the same prefix
        n = min(len(a["target_ids"]), len(b["target_ids"]))
        differ = [i for i in range(n) if a["target_ids"][i] != b["target_ids"][i]]
        steps = differ[0] + 1 if differ else n
        deltas += [abs(x[0] - y[0]) for x, y in zip(a["topk_logprobs"][:steps], b["topk_logprobs"][:steps])]
    assert 0 < recorded["mean_abs_logprob_difference"] == pytest.approx(np.mean(deltas), rel=0.05, abs=2e-3)
    assert recorded["max_abs_logprob_difference"] == pytest.approx(max(deltas), rel=0.05, abs=2e-3)
    # What was generated in int8 is part of the cache's identity: float32 may not continue it.
    again = _run(teacher, pool, tmp_path / "int8", "ctranslate2", *one_shard)
    assert again.exit_code != 0 and "different generation" in again.output


@pytest.mark.parametrize("extra, message", [
    (["--engine", "transformers", "--compute-type", "int8"], "--compute-type is CTranslate2's"),
    (["--engine", "ctranslate2", "--compute-type", "int4"], "--compute-type must be one of"),
    (["--engine", "ctranslate2", "--compute-type", "float16"], "does not support it on cpu"),
    (["--engine", "ctranslate2", "--engine-arg", "compute_type=int8"], "use --compute-type"),
    (["--engine", "ctranslate2", "--engine-arg", "device=gpu"], "CTranslate2 cannot use it here"),
    (["--engine", "ctranslate2", "--tensor-parallel-size", "2"], "one MPI process per GPU"),
    (["--engine", "auto", "--tensor-parallel-size", "2"], "one MPI process per GPU"),
    (["--engine", "vllm", "--label-batch-tokens", "100"], "max_num_batched_tokens"),
])
def test_ctranslate2_options_are_checked_before_anything_runs(extra, message, cache_dir, data_dir, tmp_path):
    teacher = cache_dir.with_name(cache_dir.name + ".teacher")
    result = CliRunner().invoke(app, ["teacher-label", "--task", "fever", "--teacher", str(teacher), "--no-finetune",
                                      "--pool", str(data_dir / "pool.jsonl"), "--out", str(tmp_path / "c"), *extra])
    assert result.exit_code != 0 and message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and not (tmp_path / "c").exists()


def test_ctranslate2_samples_repeatably_and_stores_the_raw_distribution(cache_dir, data_dir, tmp_path):
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    teacher, pool = cache_dir.with_name(cache_dir.name + ".teacher"), data_dir / "pool.jsonl"
    sampled = ("--temperature", "1.5", "--seed", "3")
    a = _label(teacher, pool, tmp_path / "a", "ctranslate2", *sampled)
    b = _label(teacher, pool, tmp_path / "b", "ctranslate2", *sampled)
    greedy = _label(teacher, pool, tmp_path / "g", "ctranslate2")
    assert [r["target_ids"] for r in a] == [r["target_ids"] for r in b]  # the seed makes it repeatable
    assert sum(x["target_ids"] != y["target_ids"] for x, y in zip(a, greedy)) >= 5  # and it does sample
    manifest = LabelCache.open(tmp_path / "a").manifest
    assert manifest.generation.do_sample and manifest.generation.temperature == 1.5
    # The stored log-probabilities are the teacher's own (T = 1) along the sampled sequence.
    model, tok = AutoModelForSeq2SeqLM.from_pretrained(str(teacher)).eval(), AutoTokenizer.from_pretrained(str(teacher))
    for row in a[:8]:
        enc = tok("fever: " + row["source"], return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc, labels=torch.tensor([row["target_ids"]])).logits[0]
        top = logits.log_softmax(-1).topk(6, dim=-1)
        assert top.indices.tolist() == row["topk_ids"]
        np.testing.assert_allclose(top.values.numpy(), np.array(row["topk_logprobs"], np.float32), rtol=1e-3, atol=1e-3)
        chosen = logits.log_softmax(-1).gather(-1, torch.tensor(row["target_ids"])[:, None]).sum()
        assert row["seq_logprob"] == pytest.approx(float(chosen), abs=1e-3)


def test_batches_by_tokens_give_the_same_cache(cache_dir, data_dir, tmp_path):
    from dora.pipeline.engines.generation import plan_batches

    # Longest first; at most 3 rows; at most 40 padded positions = rows x (longest prompt + 4 new tokens).
    assert plan_batches([5, 12, 3, 9, 30, 7], 3, 4, 40) == [[4], [1, 3], [5, 0, 2]]
    assert plan_batches([5, 12, 3, 9, 30, 7], 3, 4) == [[4, 1, 3], [5, 0, 2]]
    teacher, pool = cache_dir.with_name(cache_dir.name + ".teacher"), data_dir / "pool.jsonl"
    for engine in ("ctranslate2", "transformers"):
        whole = _label(teacher, pool, tmp_path / f"{engine}-rows", engine)
        capped = _label(teacher, pool, tmp_path / f"{engine}-tokens", engine, "--label-batch-tokens", "64")
        assert [r["target_ids"] for r in capped] == [r["target_ids"] for r in whole]
        for x, y in zip(capped, whole):
            np.testing.assert_allclose(np.array(x["topk_logprobs"], np.float32), np.array(y["topk_logprobs"], np.float32),
                                       atol=1e-4, rtol=2**-10)
        assert LabelCache.open(tmp_path / f"{engine}-tokens").manifest.generation.engine["batch_tokens"] == 64
