"""Encoder (classifier) students: a tiny BERT built from a config learns FEVER's labels from gold
and from a cache's label scores; its loss, label mapping, evaluation, prediction and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import fever_rows, write_jsonl
from typer.testing import CliRunner

from dora.cli import app
from dora.pipeline.kd.classifier import LabelHead, LabelObjective, collate_classifier
from dora.pipeline.kd.losses import label_kd_loss, label_set_kl

runner = CliRunner()


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT encoder without a head (like the MiniLM sentence encoder), BPE tokenizer."""
    from dora.pipeline.models.scratch import save_model_dir, tiny_bert, train_tokenizer

    texts = [t for r in fever_rows()[:1500] for t in ("fever: " + r["source"], r["target"])]
    tok = train_tokenizer(texts, vocab_size=400, kind="llama")
    path = tmp_path_factory.mktemp("models") / "bert"
    save_model_dir(tiny_bert(tok, hidden=32, layers=1, heads=2), tok, path)
    return path


def _train(args: list[str], task: str = "fever"):
    return runner.invoke(app, ["train-student", "--task", task, "--epochs", "2", "--batch-size", "8",
                               "--learning-rate", "1e-3", "--max-source-length", "48", *args])


# --- the loss ---------------------------------------------------------------------------------------


def test_label_kd_on_the_teachers_own_labels_is_cross_entropy() -> None:
    """A teacher sure of its labels (scores T -> 0 sharpened) gives, at alpha 0 and T = 1, the
    cross-entropy on those labels; identical distributions give zero KL."""
    g = torch.Generator().manual_seed(0)
    student = torch.randn(6, 3, generator=g)
    teacher_labels = torch.tensor([0, 2, 1, 1, 0, 2])
    for sharpness in (1e2, 1e4):  # teacher log-scores / T with T -> 0
        sure = torch.nn.functional.one_hot(teacher_labels, 3).float() * sharpness
        kd = label_kd_loss(student, teacher_labels, sure, torch.ones(6, dtype=torch.bool), temperature=1.0, alpha=0.0)
        ce = torch.nn.functional.cross_entropy(student, teacher_labels)
        assert torch.allclose(kd, ce, atol=1e-5), (sharpness, kd, ce)
    same = torch.log_softmax(student, -1)
    assert float(label_set_kl(student, same, 2.0).abs().max()) < 1e-6
    # The limit itself: a teacher that gives the other labels no mass at all (-inf scores).
    exact = torch.full((6, 3), -torch.inf).scatter(1, teacher_labels.unsqueeze(1), 0.0)
    kd = label_kd_loss(student, teacher_labels, exact, torch.ones(6, dtype=torch.bool), temperature=1.0)
    assert torch.allclose(kd, torch.nn.functional.cross_entropy(student, teacher_labels), atol=1e-6)


def test_label_kd_gold_rows_and_mixing() -> None:
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    labels = torch.tensor([1, 0, 1, 0])
    ce = torch.nn.functional.cross_entropy(student, labels, reduction="none")
    assert torch.allclose(label_kd_loss(student, labels), ce.mean())  # no teacher: gold cross-entropy
    none = torch.zeros(4, dtype=torch.bool)
    assert torch.allclose(label_kd_loss(student, labels, teacher, none), ce.mean())  # all rows gold
    rows = torch.tensor([True, False, True, False])
    kl = label_set_kl(student, teacher, 2.0)
    mixed = label_kd_loss(student, labels, teacher, rows, temperature=2.0, alpha=0.25)
    expected = torch.where(rows, 0.75 * kl + 0.25 * ce, ce).mean()
    assert torch.allclose(mixed, expected)


def test_cache_labels_in_another_order_map_onto_the_head(tmp_path) -> None:
    head = LabelHead(("SUPPORTS", "REFUTES"))
    objective = LabelObjective(head, order=head.order_of(["REFUTES", "SUPPORTS"], "cache"))
    table = pa.table({"source": ["a", "b"], "label_logprobs": [[-0.1, -3.0], [-2.0, -0.2]]})

    class Tok:
        def __call__(self, texts, truncation, max_length):
            return {"input_ids": [[1, 2, 3][: len(t)] for t in texts]}

    rows = objective.featurise(table, Tok(), prefix="", max_source_length=8, max_target_length=8)
    # Row 0: the teacher prefers REFUTES (its first label), which is the head's index 1.
    assert rows[0]["labels"] == 1 and rows[1]["labels"] == 0
    np.testing.assert_allclose(rows[0]["label_logprobs"], [-3.0, -0.1])
    batch = collate_classifier([*rows, {"input_ids": [5], "labels": 0}], pad_id=0)
    assert batch["label_rows"].tolist() == [True, True, False]
    with pytest.raises(Exception, match="pass --labels"):
        head.order_of(["YES", "NO"], "cache")


# --- the stage, through the CLI -------------------------------------------------------------------


def test_encoder_student_from_gold_then_cache(bert_dir, cache_dir, data_dir, tmp_path) -> None:
    annotate = tmp_path / "annotate"
    result = _train(["--student", str(bert_dir), "--train", str(data_dir / "train.jsonl"),
                     "--dev", str(data_dir / "dev.jsonl"), "--test", str(data_dir / "test.jsonl"),
                     "--out", str(annotate)])
    assert result.exit_code == 0, result.output
    config = json.loads((annotate / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "SUPPORTS", "1": "REFUTES"}
    record = json.loads((annotate / "run.json").read_text())
    assert record["strategy"] == "annotate" and record["kd_loss"] == "none"
    assert record["labels"] == ["SUPPORTS", "REFUTES"]
    metrics = json.loads((annotate / "metrics.json").read_text())
    preds = [json.loads(x)["prediction"] for x in (annotate / "test_predictions.jsonl").read_text().splitlines()]
    assert set(preds) <= {"SUPPORTS", "REFUTES"} and len(preds) == 16
    targets = [json.loads(x)["target"] for x in (data_dir / "test.jsonl").read_text().splitlines()]
    assert metrics["test"]["strict"]["accuracy"] == pytest.approx(np.mean([p == t for p, t in zip(preds, targets)]))

    # dora evaluate and dora predict use the saved classifier unchanged.
    scores = tmp_path / "scores.json"
    result = runner.invoke(app, ["evaluate", "--task", "fever", "--model", str(annotate), "--data",
                                 str(data_dir / "test.jsonl"), "--out", str(scores)])
    assert result.exit_code == 0, result.output
    assert json.loads(scores.read_text())["scores"]["accuracy"] == pytest.approx(metrics["test"]["strict"]["accuracy"])
    predicted = tmp_path / "predicted.jsonl"
    result = runner.invoke(app, ["predict", "--task", "fever", "--model", str(annotate), "--data",
                                 str(data_dir / "test.jsonl"), "--out", str(predicted)])
    assert result.exit_code == 0, result.output
    assert [json.loads(x)["prediction"] for x in predicted.read_text().splitlines()] == preds

    # Distill: the teacher's label scores from the shared cache (mixed with gold).
    distill = tmp_path / "distill"
    result = _train(["--student", str(bert_dir), "--cache", str(cache_dir), "--train", str(data_dir / "train.jsonl"),
                     "--dev", str(data_dir / "dev.jsonl"), "--out", str(distill)])
    assert result.exit_code == 0, result.output
    record = json.loads((distill / "run.json").read_text())
    assert record["strategy"] == "mixed" and record["kd_loss"] == "labels" and record["cache_rows"] == 40
    assert "KL at T=2.0 to the teacher's distribution over the labels (SUPPORTS, REFUTES)" in " ".join(result.output.split())


def test_distilled_classifier_learns_the_teachers_labels(bert_dir, cache_dir, data_dir, tmp_path) -> None:
    """Trained long enough on the cache alone, the student agrees with its teacher's own labels on
    the pool far more often than chance: the KD signal reaches the head."""
    from dora.cache import LabelCache

    out = tmp_path / "distill-only"
    result = runner.invoke(app, ["train-student", "--task", "fever", "--student", str(bert_dir), "--cache",
                                 str(cache_dir), "--out", str(out), "--epochs", "30", "--batch-size", "8",
                                 "--learning-rate", "3e-3", "--max-source-length", "48", "--temperature", "1"])
    assert result.exit_code == 0, result.output
    table = LabelCache.open(cache_dir).read(["source", "label_logprobs"])
    labels = LabelCache.open(cache_dir).manifest.generation.label_set
    teacher = [labels[int(np.argmax(x))] for x in table.column("label_logprobs").to_pylist()]
    pool = tmp_path / "pool.jsonl"
    write_jsonl(pool, [{"source": s, "target": t} for s, t in zip(table.column("source").to_pylist(), teacher)])
    scores = tmp_path / "agreement.json"
    result = runner.invoke(app, ["evaluate", "--task", "fever", "--model", str(out), "--data", str(pool),
                                 "--out", str(scores), "--max-source-length", "48"])
    assert result.exit_code == 0, result.output
    majority = max(teacher.count(x) for x in set(teacher)) / len(teacher)
    agreement = json.loads(scores.read_text())["scores"]["accuracy"]
    assert agreement >= max(0.9, majority), (agreement, majority)


def test_a_classifier_over_other_labels_gets_a_fresh_head(bert_dir, tmp_path) -> None:
    """A checkpoint that already classifies (here: two labels named otherwise) is trained over the
    task's labels with its head started afresh, not its old weights under new names."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from dora.pipeline.models.loading import load_model

    other = tmp_path / "sentiment"
    model = AutoModelForSequenceClassification.from_pretrained(str(bert_dir), num_labels=2,
                                                               id2label={0: "NEGATIVE", 1: "POSITIVE"})
    with torch.no_grad():
        model.classifier.weight.fill_(0.5)
    model.save_pretrained(str(other))
    AutoTokenizer.from_pretrained(str(bert_dir)).save_pretrained(str(other))
    loaded, kind = load_model(str(other), labels=("SUPPORTS", "REFUTES"))
    assert kind == "classifier" and loaded.config.id2label == {0: "SUPPORTS", 1: "REFUTES"}
    assert not torch.allclose(loaded.classifier.weight, torch.full_like(loaded.classifier.weight, 0.5))
    same, _ = load_model(str(other), labels=("NEGATIVE", "POSITIVE"))  # its own labels: kept as trained
    assert torch.allclose(same.classifier.weight, torch.full_like(same.classifier.weight, 0.5))


# --- refusals: one line, non-zero exit, nothing written --------------------------------------------


def _refused(result, out: Path, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output
    assert not out.exists()


def test_encoder_student_needs_a_label_set(bert_dir, tmp_path) -> None:
    train = write_jsonl(tmp_path / "nq.jsonl", [{"source": "who wrote hamlet", "target": "shakespeare"}] * 4)
    out = tmp_path / "out"
    _refused(_train(["--student", str(bert_dir), "--train", str(train), "--out", str(out)], task="nq"),
             out, "closed label set", "--labels")


def test_encoder_student_refuses_gold_outside_the_labels(bert_dir, data_dir, tmp_path) -> None:
    rows = [json.loads(x) for x in (data_dir / "train.jsonl").read_text().splitlines()][:6]
    rows[3]["target"] = "NOT ENOUGH INFO"
    train = write_jsonl(tmp_path / "gold.jsonl", rows)
    out = tmp_path / "out"
    _refused(_train(["--student", str(bert_dir), "--train", str(train), "--out", str(out)]), out,
             "gold.jsonl", "row 4", "'NOT ENOUGH INFO'", "--labels")
    # Its own labels, given with --labels, are accepted as the head.
    result = _train(["--student", str(bert_dir), "--train", str(train), "--out", str(out),
                     "--labels", "SUPPORTS,REFUTES,NOT ENOUGH INFO"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["id2label"]["2"] == "NOT ENOUGH INFO"


def test_encoder_student_refuses_a_cache_without_label_scores(bert_dir, t5_dir, data_dir, tmp_path) -> None:
    cache = tmp_path / "cache"
    result = runner.invoke(app, ["teacher-label", "--task", "fever", "--teacher", str(t5_dir), "--no-finetune",
                                 "--pool", str(data_dir / "pool.jsonl"), "--out", str(cache), "--no-score-labels",
                                 "--max-new-tokens", "4", "--top-k", "4"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    _refused(_train(["--student", str(bert_dir), "--cache", str(cache), "--out", str(out)]), out,
             str(cache), "label_logprobs", "relabel")


def test_encoder_student_refuses_a_token_kd_loss(bert_dir, cache_dir, tmp_path) -> None:
    out = tmp_path / "out"
    _refused(_train(["--student", str(bert_dir), "--cache", str(cache_dir), "--out", str(out), "--kd-loss", "topk"]),
             out, "--kd-loss labels")


def test_encoder_without_its_tokenizer(bert_dir, data_dir, tmp_path) -> None:
    import shutil

    student = tmp_path / "bert-no-tokenizer"
    student.mkdir()
    for f in bert_dir.iterdir():
        if f.name in ("config.json", "model.safetensors"):
            shutil.copy(f, student / f.name)
    out = tmp_path / "out"
    _refused(_train(["--student", str(student), "--train", str(data_dir / "train.jsonl"), "--out", str(out)]), out,
             "no tokenizer files", str(student))


def test_an_encoder_cannot_be_the_teacher(bert_dir, data_dir, tmp_path) -> None:
    out = tmp_path / "cache"
    result = runner.invoke(app, ["teacher-label", "--task", "fever", "--teacher", str(bert_dir), "--no-finetune",
                                 "--pool", str(data_dir / "pool.jsonl"), "--out", str(out)])
    _refused(result, out, "cannot write pseudo-labels")
