"""The paper's settings one flag away, and settings that cannot work refused before any work."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from dora.cache import LabelCache
from dora.cli import app

runner = CliRunner()


def test_preset_paper_sets_what_is_not_given_and_records_it(cache_dir, t5_dir, data_dir, tmp_path):
    out = tmp_path / "distill"
    result = runner.invoke(app, ["train-student", "--preset", "paper", "--task", "fever", "--student", str(t5_dir),
                                 "--cache", str(cache_dir), "--out", str(out), "--max-steps", "1",
                                 "--learning-rate", "1e-3", "--max-new-tokens", "5"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    config, preset = record["config"], record["preset_values"]
    assert record["preset"] == "paper"
    # What the user gave wins; everything else the preset covers takes the paper's value.
    assert config["learning_rate"] == 1e-3 and config["max_new_tokens"] == 5 and config["max_steps"] == 1
    assert "learning_rate" not in preset and "max_new_tokens" not in preset
    assert preset == {"batch_size": 32, "grad_accum": 1, "warmup_ratio": 0.0, "weight_decay": 0.0,
                      "max_source_length": 128, "max_target_length": 8, "temperature": 2.0, "alpha": 0.0,
                      "eval_every": 2000, "epochs": 50.0}
    assert {k: config[k] for k in preset} == preset
    annotate = runner.invoke(app, ["train-student", "--preset", "paper", "--task", "fever", "--student", str(t5_dir),
                                   "--train", str(data_dir / "train.jsonl"), "--out", str(tmp_path / "annotate"),
                                   "--max-steps", "1"])
    assert annotate.exit_code == 0, annotate.output
    config = json.loads((tmp_path / "annotate" / "run.json").read_text())["config"]
    assert config["epochs"] == 20.0 and config["learning_rate"] == 3e-5 and config["max_new_tokens"] == 7
    bad = runner.invoke(app, ["train-student", "--preset", "fast", "--task", "fever", "--student", str(t5_dir),
                              "--train", str(data_dir / "train.jsonl"), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--preset must be none or paper" in bad.stderr


def test_preset_paper_on_the_teacher_keeps_greedy_labels(t5_dir, data_dir, tmp_path):
    """The teacher's --temperature samples pseudo-labels: the paper's KD temperature is not for it."""
    out = tmp_path / "cache"
    result = runner.invoke(app, ["teacher-label", "--preset", "paper", "--task", "fever", "--teacher", str(t5_dir),
                                 "--train", str(data_dir / "train.jsonl"), "--pool", str(data_dir / "pool.jsonl"),
                                 "--out", str(out), "--max-steps", "1", "--top-k", "4"])
    assert result.exit_code == 0, result.output
    m = LabelCache.open(out).manifest
    assert not m.generation.do_sample and m.generation.temperature == 0.0
    assert (m.generation.max_source_length, m.generation.max_new_tokens) == (128, 7)
    record = json.loads((tmp_path / "cache.teacher" / "dora_finetune.json").read_text())
    assert record["steps"] == 1


def test_float16_t5_v1_1_teacher_is_refused(t5_dir, data_dir, tmp_path):
    result = runner.invoke(app, ["teacher-label", "--task", "fever", "--teacher", str(t5_dir), "--no-finetune",
                                 "--pool", str(data_dir / "pool.jsonl"), "--out", str(tmp_path / "c"),
                                 "--dtype", "float16"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "--dtype float16 overflows" in result.stderr and "use --dtype bfloat16" in result.stderr
    assert not (tmp_path / "c").exists()


def test_scoring_left_padded_prompts_uses_real_positions(llama_dir):
    """A decoder with absolute position embeddings (GPT-2): a continuation scored in a left-padded
    batch gets the log-probability it gets alone."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from dora.pipeline.engines.generation import hf_score

    tok = AutoTokenizer.from_pretrained(llama_dir)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)).eval()
    prompts = [tok(text)["input_ids"] for text in ("fever: a claim", "fever: a much longer claim about cats and dogs")]
    continuations = [tok("SUPPORTS", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    batched = hf_score(model, tok, "causal", prompts, continuations, batch_size=2)
    alone = [hf_score(model, tok, "causal", [p], continuations, batch_size=1)[0] for p in prompts]
    assert len(prompts[0]) != len(prompts[1])
    assert batched[:, 0] == pytest.approx([a[0] for a in alone], abs=1e-5)
