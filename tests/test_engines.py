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


def test_the_started_engines_precision_check_is_printed_and_recorded(monkeypatch, t5_dir, data_dir, tmp_path):
    """The stage runs whatever precision check the engine it started has, on the pool's first rows,
    prints what it found and records it in the manifest under ``generation.engine.agreement``."""
    from typer.testing import CliRunner

    from dora.cache import LabelCache
    from dora.cli import app
    from dora.pipeline.engines.settings import PRECISION_ROWS, PrecisionCheck
    from dora.pipeline.engines.transformers_engine import TransformersEngine

    samples: list[list[list[int]]] = []

    class Checked(TransformersEngine):
        def check_precision(self, sample):
            samples.append(list(sample()))
            return PrecisionCheck({"rows": len(samples[0]), "labels_equal": 0.5}, "half the labels moved", warning=True)

    monkeypatch.setitem(engines.ENGINES, "transformers", Checked)
    out = tmp_path / "c"
    result = CliRunner().invoke(app, ["teacher-label", "--task", "fever", "--teacher", str(t5_dir), "--no-finetune",
                                      "--pool", str(data_dir / "pool.jsonl"), "--out", str(out), "--top-k", "4",
                                      "--max-new-tokens", "4", "--shard-size", "16"])
    assert result.exit_code == 0, result.output
    assert "note: half the labels moved" in " ".join(result.output.split())
    pool_rows = 40
    assert len(samples) == 1 and len(samples[0]) == min(PRECISION_ROWS, pool_rows)
    assert all(isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in samples[0])
    engine = LabelCache.open(out).manifest.generation.engine
    assert engine["agreement"] == {"rows": pool_rows, "labels_equal": 0.5}
    assert engine["batch_size"] == 32  # the engine's own settings are there too


def test_the_teacher_stage_names_no_engine():
    """Engines' special cases live in the engines: the stage's body (all but the option sections it
    declares) names none of them, and it does not import an engine's module."""
    import ast
    import inspect
    import re

    from dora.pipeline.stages import teacher_label as stage

    source = inspect.getsource(stage)
    options = {c.__name__ for c in (*stage.TeacherLabelConfig.SECTIONS, stage.TeacherLabelConfig)}
    body = [n for n in ast.parse(source).body if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Assign))
            and getattr(n, "name", None) not in options]
    assert len(body) > 10
    for node in body:
        named = re.findall(r"ctranslate2|vllm", ast.get_source_segment(source, node) or "", re.IGNORECASE)
        assert not named, f"{getattr(node, 'name', 'an assignment')} names {named[0]}"
    assert not hasattr(stage, "ctranslate2_engine") and not hasattr(stage, "vllm_engine")
