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


def _label(teacher: Path, pool: Path, out: Path, engine: str) -> list[dict]:
    result = CliRunner().invoke(app, ["teacher-label", "--task", "fever", "--teacher", str(teacher), "--no-finetune",
                                      "--pool", str(pool), "--out", str(out), "--engine", engine, *ARGS])
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


def test_quantised_compute_types_are_refused_for_now(cache_dir, data_dir, tmp_path):
    teacher = cache_dir.with_name(cache_dir.name + ".teacher")
    result = CliRunner().invoke(app, ["teacher-label", "--task", "fever", "--teacher", str(teacher), "--no-finetune",
                                      "--pool", str(data_dir / "pool.jsonl"), "--out", str(tmp_path / "c"),
                                      "--engine", "ctranslate2", "--engine-arg", "compute_type=int8", *ARGS])
    assert result.exit_code != 0 and "only float32 for now" in result.output
    assert not (tmp_path / "c").exists()
