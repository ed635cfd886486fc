"""Engine choice and pass-through arguments (no vLLM needed)."""

from __future__ import annotations

import pytest

from dora.errors import ConfigError
from dora.pipeline.engines import registry as engines
from dora.pipeline.engines.registry import parse_engine_args, resolve_engine


def test_engine_args_from_pairs_and_files(tmp_path):
    (tmp_path / "e.yaml").write_text("enforce_eager: true\nmax_num_seqs: 8\nkv_cache_dtype: fp8\n")
    (tmp_path / "e.json").write_text('{"max_num_seqs": 4, "hf_overrides": {"rope_theta": 5}}')
    assert parse_engine_args(["max-num-seqs=16", "quantization=fp8", "swap_space=0.5", "x={\"a\": [1]}"],
                             tmp_path / "e.yaml") == {
        "enforce_eager": True, "max_num_seqs": 16, "kv_cache_dtype": "fp8", "quantization": "fp8",
        "swap_space": 0.5, "x": {"a": [1]}}
    assert parse_engine_args([], tmp_path / "e.json") == {"max_num_seqs": 4, "hf_overrides": {"rope_theta": 5}}


@pytest.mark.parametrize(("content", "suffix", "needle"), [
    ("[1, 2]", ".json", "expected a mapping"),
    ("{not json", ".json", "not valid JSON"),
    ("a: [", ".yaml", "not valid YAML"),
])
def test_bad_engine_config_files(tmp_path, content, suffix, needle):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    with pytest.raises(ConfigError, match=needle):
        parse_engine_args([], path)
    with pytest.raises(ConfigError, match="file not found; check --engine-config"):
        parse_engine_args([], tmp_path / "missing.yaml")


def test_resolve_engine(monkeypatch):
    from dora.pipeline.engines import ctranslate2_engine

    assert resolve_engine("transformers", "causal", "LlamaForCausalLM") == ("transformers", "requested")
    monkeypatch.setattr(ctranslate2_engine, "available", lambda: False)
    assert resolve_engine("auto", "seq2seq", "T5ForConditionalGeneration")[0] == "transformers"
    with pytest.raises(Exception, match="CTranslate2 is not installed"):
        resolve_engine("ctranslate2", "seq2seq", "T5ForConditionalGeneration")
    monkeypatch.setattr(engines, "vllm_available", lambda: True)
    monkeypatch.setattr(engines, "vllm_serves", lambda arch: arch == "LlamaForCausalLM")
    assert resolve_engine("auto", "causal", "LlamaForCausalLM")[0] == "vllm"
    assert resolve_engine("auto", "causal", "MyOwnForCausalLM") == (
        "transformers", "the installed vLLM does not serve MyOwnForCausalLM")
    with pytest.raises(Exception, match="does not serve MyOwnForCausalLM"):
        resolve_engine("vllm", "causal", "MyOwnForCausalLM")
