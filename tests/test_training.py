"""The training loop: gradient accumulation, and resuming after a crash gives the same model."""

from __future__ import annotations

import json

import pytest
import torch

from dora.errors import ConfigError
from dora.pipeline.data.encoding import collate
from dora.pipeline.train.finetune import sequence_loss
from dora.pipeline.train.loop import LoopSettings, steps_per_epoch, total_steps, train_loop


def _setup(t5_dir):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(t5_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(t5_dir)
    texts = [f"fever: claim number {i}" for i in range(21)]
    feats = [{"input_ids": tok(t)["input_ids"], "labels": tok("SUPPORTS" if i % 2 else "REFUTES")["input_ids"]}
             for i, t in enumerate(texts)]
    return tok, model, feats


SETTINGS = LoopSettings(epochs=3, max_steps=None, batch_size=4, grad_accum=2, learning_rate=1e-3, warmup_ratio=0.1,
                        weight_decay=0.01, seed=7, eval_every=None, save_every=2)


def test_step_arithmetic():
    # 21 rows / batch 4 = 6 micro-batches = 3 optimizer steps per epoch (accumulating 2)
    assert steps_per_epoch(21, SETTINGS) == 3 and total_steps(21, SETTINGS) == 9


def test_resume_after_a_crash_matches_an_uninterrupted_run(t5_dir, tmp_path):
    tok, model, feats = _setup(t5_dir)
    loss = sequence_loss("seq2seq")
    pad = lambda f: collate(f, tok.pad_token_id)  # noqa: E731
    whole = train_loop(model=model, features=feats, collate=pad, loss_fn=loss, settings=SETTINGS,
                       out_dir=tmp_path / "whole", save_model=lambda m, p, sd: None)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    assert whole.steps == 9 and whole.examples_seen == 3 * 21

    _, model2, _ = _setup(t5_dir)
    calls = {"n": 0}

    def crashing(m, batch):
        calls["n"] += 1
        if calls["n"] == 11:  # micro-batch 11 is inside step 6, after the checkpoint at step 4
            raise KeyboardInterrupt
        return loss(m, batch)

    with pytest.raises(KeyboardInterrupt):
        train_loop(model=model2, features=feats, collate=pad, loss_fn=crashing, settings=SETTINGS,
                   out_dir=tmp_path / "crash", save_model=lambda m, p, sd: None)
    state = json.loads((tmp_path / "crash" / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["step"] == 4

    _, model3, _ = _setup(t5_dir)  # a fresh process would start from the base weights too
    resumed = train_loop(model=model3, features=feats, collate=pad, loss_fn=loss, settings=SETTINGS,
                         out_dir=tmp_path / "crash", save_model=lambda m, p, sd: None)
    assert resumed.steps == 9 and resumed.examples_seen == whole.examples_seen
    for k, v in model3.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-5, atol=1e-6, msg=k)


def test_a_checkpoint_from_another_run_is_not_resumed_silently(t5_dir, tmp_path):
    tok, model, feats = _setup(t5_dir)
    pad = lambda f: collate(f, tok.pad_token_id)  # noqa: E731
    train_loop(model=model, features=feats, collate=pad, loss_fn=sequence_loss("seq2seq"),
               settings=SETTINGS, out_dir=tmp_path, save_model=lambda m, p, sd: None)
    with pytest.raises(ConfigError, match="different run"):
        train_loop(model=model, features=feats[:10], collate=pad, loss_fn=sequence_loss("seq2seq"),
                   settings=SETTINGS, out_dir=tmp_path, save_model=lambda m, p, sd: None)
