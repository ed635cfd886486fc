"""Decoder-only students: prompt + target, the loss on the target only, the same KD objectives,
scored by generation; and what a teacher knows reaches such a student through the cache."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl
from typer.testing import CliRunner

from dora.cli import app
from dora.pipeline.data.encoding import encode_pair, target_ids
from dora.pipeline.kd.objectives import OBJECTIVES, causal_forward, collate_kd, training_loss
from dora.pipeline.models.loading import load_model, load_tokenizer

FAST = ["--max-steps", "4", "--batch-size", "4", "--eval-batch-size", "8", "--max-new-tokens", "6"]


def _train(*args: str) -> dict:
    result = CliRunner().invoke(app, ["train-student", "--task", "fever", *args])
    assert result.exit_code == 0, result.output
    return result


def test_causal_forward_gives_the_logits_of_prompt_then_target(llama_dir):
    """The batched, left-shifted forward equals one unpadded forward per row, position for position."""
    tokenizer = load_tokenizer(str(llama_dir))
    model, _ = load_model(str(llama_dir))
    rows = [("fever: cats purr", "SUPPORTS"), ("fever: a much longer claim about the moon and the sun", "REFUTES"),
            ("fever: x", "NOT ENOUGH INFO")]
    features = [encode_pair(tokenizer, "seq2seq", s, target_ids(tokenizer, t, 16), 64) for s, t in rows]
    batch = collate_kd(features, tokenizer.pad_token_id)
    with torch.no_grad():
        batched = causal_forward(model, batch)(batch["labels"])
        for i, f in enumerate(features):
            alone = model(torch.tensor([f["input_ids"] + f["labels"]])).logits[0, len(f["input_ids"]) - 1 : -1]
            torch.testing.assert_close(batched[i, : len(f["labels"])], alone, atol=1e-5, rtol=1e-5)


def test_the_loss_is_the_cross_entropy_of_the_target_tokens_only(llama_dir):
    """A padded batch's loss equals the mean cross-entropy of the target tokens computed by hand,
    one unpadded row at a time (the prompt contributes none), and its gradients are finite."""
    tokenizer = load_tokenizer(str(llama_dir))
    model, _ = load_model(str(llama_dir))
    rows = [("fever: cats purr", "SUPPORTS"), ("fever: a much longer claim about the moon and the sun", "REFUTES")]
    features = [encode_pair(tokenizer, "seq2seq", s, target_ids(tokenizer, t, 16), 64) for s, t in rows]
    loss = training_loss(OBJECTIVES["none"](), model, collate_kd(features, tokenizer.pad_token_id), "causal")
    total, count = 0.0, 0
    with torch.no_grad():
        for f in features:
            n = len(f["labels"])
            logits = model(torch.tensor([f["input_ids"] + f["labels"]])).logits[0, -n - 1 : -1]
            total += torch.nn.functional.cross_entropy(logits, torch.tensor(f["labels"]), reduction="sum").item()
            count += n
    assert loss.item() == pytest.approx(total / count, rel=1e-5)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.fixture(scope="module")
def llama_cache(tmp_path_factory, llama_dir, data_dir) -> Path:
    """The tiny Llama labels the pool as it is (no fine-tuning): a same-vocabulary cache."""
    out = tmp_path_factory.mktemp("causal") / "cache"
    result = CliRunner().invoke(app, [
        "teacher-label", "--task", "fever", "--teacher", str(llama_dir), "--no-finetune", "--pool",
        str(data_dir / "pool.jsonl"), "--out", str(out), "--top-k", "8", "--max-new-tokens", "6", "--shard-size", "20",
    ])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("route", ["topk", "aligned", "labels", "annotate"])
def test_a_decoder_only_student_trains_on_every_route(route, llama_dir, llama_cache, cache_dir, data_dir, tmp_path):
    """Same-vocabulary top-k (a Llama teacher's cache), cross-tokenizer and label-set KD (the T5
    teacher's cache) and gold only: each trains, selects on dev, scores test by generation."""
    out = tmp_path / route
    source = {"topk": ["--cache", str(llama_cache)], "aligned": ["--cache", str(cache_dir)],
              "labels": ["--cache", str(cache_dir), "--kd-loss", "labels"],
              "annotate": ["--train", str(data_dir / "train.jsonl")]}[route]
    _train("--student", str(llama_dir), *source, "--dev", str(data_dir / "dev.jsonl"),
           "--test", str(data_dir / "test.jsonl"), "--out", str(out), *FAST)
    record = json.loads((out / "run.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert record["kd_loss"] == {"annotate": "none"}.get(route, route)
    assert record["strategy"] == ("annotate" if route == "annotate" else "distill")
    assert metrics["test"] is not None and metrics["reported_on"]["split"] == "test"
    predictions = [json.loads(line) for line in (out / "test_predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 16 and all("prediction" in p for p in predictions)
    model, kind = load_model(str(out))
    assert kind == "causal"
    if route == "aligned":
        assert record["alignment"]["aligned_positions"] > 0


# --- knowledge transfer at tiny scale --------------------------------------------------------------

WORDS = ["red", "blue", "green", "tall", "small", "old", "new", "fast", "slow", "warm", "cold", "dark"]
ANIMALS = ["cat", "dog", "cow", "fox", "owl", "bee", "ant", "elk", "yak", "emu", "bat", "eel", "ram", "hen", "pig", "rat"]


def _rule_rows(n: int, seed: int) -> list[dict]:
    """Claims of three adjectives and an animal; the teacher's rule: SUPPORTS for the first eight
    animals. Twelve gold rows show a few of the sixteen animals; 200 show them all."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        animal = rng.choice(ANIMALS)
        words = rng.sample(WORDS, 3) + [animal]
        rng.shuffle(words)
        rows.append({"id": f"r{seed}-{i}", "source": " ".join(words),
                     "target": "SUPPORTS" if ANIMALS.index(animal) < 8 else "REFUTES"})
    return rows


def test_a_student_distilled_from_the_cache_agrees_with_the_teacher_more_than_one_trained_on_gold(
        tmp_path, llama_dir):
    """The teacher learns a rule from 200 gold rows and labels a pool of 300; a student that sees
    only 12 gold rows agrees with it less on held-out claims than the same student distilled from
    the cache. Agreement = accuracy against the teacher's own predictions."""
    gold = write_jsonl(tmp_path / "gold.jsonl", _rule_rows(200, 1))
    few = write_jsonl(tmp_path / "few.jsonl", _rule_rows(12, 2))
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"id": r["id"], "source": r["source"]} for r in _rule_rows(300, 3)])
    held_out = write_jsonl(tmp_path / "held_out.jsonl", _rule_rows(64, 4))
    cache, teacher = tmp_path / "cache", tmp_path / "teacher"
    result = CliRunner().invoke(app, [
        "teacher-label", "--task", "fever", "--teacher", str(llama_dir), "--train", str(gold), "--pool", str(pool),
        "--out", str(cache), "--teacher-out", str(teacher), "--max-steps", "150", "--batch-size", "16",
        "--learning-rate", "3e-3", "--top-k", "8", "--max-new-tokens", "4", "--shard-size", "100",
    ])
    assert result.exit_code == 0, result.output
    scored = tmp_path / "teacher_scores.json"
    result = CliRunner().invoke(app, ["evaluate", "--task", "fever", "--model", str(teacher), "--data", str(held_out),
                                      "--out", str(scored), "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    teacher_rows = [json.loads(line) for line in scored.with_name("teacher_scores.predictions.jsonl").read_text().splitlines()]
    assert json.loads(scored.read_text())["scores"]["accuracy"] >= 0.8  # the teacher learned the rule
    agree = write_jsonl(tmp_path / "agree.jsonl", [{"id": r["id"], "source": r["source"], "target": r["prediction"]}
                                                  for r in teacher_rows])
    common = ["--student", str(llama_dir), "--test", str(agree), "--learning-rate", "3e-3", "--batch-size", "16",
              "--max-new-tokens", "4", "--seed", "3"]
    _train(*common, "--cache", str(cache), "--max-steps", "150", "--out", str(tmp_path / "distill"))
    _train(*common, "--train", str(few), "--max-steps", "150", "--out", str(tmp_path / "annotate"))
    distill = json.loads((tmp_path / "distill" / "metrics.json").read_text())["test"]["strict"]["accuracy"]
    annotate = json.loads((tmp_path / "annotate" / "metrics.json").read_text())["test"]["strict"]["accuracy"]
    assert distill > annotate + 0.1, (distill, annotate)
