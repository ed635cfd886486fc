"""GGUF models: converted once to safetensors, the converted checkpoint gives the logits transformers
gives from the GGUF itself, and every command takes a GGUF where it takes a model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dora.cli import app
from dora.errors import ModelError
from dora.pipeline.models import gguf as gguf_models
from dora.pipeline.models.loading import load_model, load_tokenizer, weights_sha256

pytest.importorskip("gguf")
from tiny_gguf import write_llama_gguf  # noqa: E402


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, llama_dir) -> Path:
    """The fixture Llama as a Q8_0 GGUF, alone in its directory."""
    root = tmp_path_factory.mktemp("gguf")
    return write_llama_gguf(llama_dir, root / "tiny-llama.Q8_0.gguf")


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DORA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _logits(model, tokenizer, text: str) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokenizer(text)["input_ids"]])).logits


def test_converted_checkpoint_has_the_logits_transformers_gives_the_gguf(tiny_gguf, home):
    from transformers import AutoModelForCausalLM

    model, kind = load_model(str(tiny_gguf))
    tokenizer = load_tokenizer(str(tiny_gguf))
    reference = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)
    text = "fever: a claim about cats and dogs"
    assert kind == "causal"
    assert torch.equal(_logits(model, tokenizer, text), _logits(reference, tokenizer, text))
    converted = home / "gguf" / gguf_models.sha256_of(tiny_gguf)
    assert (converted / "model.safetensors").is_file() and not list(converted.glob("*.gguf"))
    assert "quantization_config" not in json.loads((converted / "config.json").read_text())
    record = json.loads((converted / gguf_models.RECORD).read_text())
    assert record["sha256"] == weights_sha256(str(tiny_gguf)) == gguf_models.sha256_of(tiny_gguf)
    assert record["architecture"] == "llama"


def test_conversion_happens_once_and_a_directory_holding_the_gguf_names_it(tiny_gguf, home, monkeypatch, capsys):
    first = gguf_models.resolve(str(tiny_gguf))
    assert "converting" in capsys.readouterr().err
    monkeypatch.setattr(gguf_models, "_convert", lambda *a: pytest.fail("converted twice"))
    assert gguf_models.resolve(str(tiny_gguf.parent)) == first  # the directory holds exactly this GGUF
    assert "converting" not in capsys.readouterr().err


def test_a_tampered_or_half_written_conversion_is_not_used(tiny_gguf, home):
    target = home / "gguf" / gguf_models.sha256_of(tiny_gguf)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # no record: not a finished conversion
    with pytest.raises(ModelError, match="not a complete conversion"):
        gguf_models.resolve(str(tiny_gguf))
    assert (target / "config.json").read_text() == "{}"  # never deleted: dora cannot tell it made it


def test_an_architecture_transformers_cannot_dequantise_is_one_line(llama_dir, data_dir, tmp_path, home):
    odd = write_llama_gguf(llama_dir, tmp_path / "odd.gguf", architecture="notamodel")
    result = CliRunner().invoke(app, ["evaluate", "--task", "fever", "--model", str(odd),
                                      "--data", str(data_dir / "test.jsonl")])
    assert result.exit_code != 0
    assert "cannot dequantise a GGUF of architecture 'notamodel'" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not list((home / "gguf").glob("*")) if (home / "gguf").exists() else True  # nothing half-made


def test_a_failed_conversion_leaves_nothing_behind(tiny_gguf, home, monkeypatch):
    def fail(path, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf_models, "_convert", fail)
    with pytest.raises(OSError):
        gguf_models.resolve(str(tiny_gguf))
    assert list((home / "gguf").iterdir()) == []  # neither the target nor the temporary sibling


def test_a_conversion_finished_meanwhile_by_another_process_is_used(tiny_gguf, home, monkeypatch):
    digest = gguf_models.sha256_of(tiny_gguf)
    real = gguf_models._convert

    def racing(path, out):  # another process renames its finished conversion into place first
        other = home / "gguf" / "other"
        other.mkdir()
        real(path, other)
        (other / gguf_models.RECORD).write_text(json.dumps({"sha256": digest}))
        other.rename(home / "gguf" / digest)
        real(path, out)

    monkeypatch.setattr(gguf_models, "_convert", racing)
    assert gguf_models.resolve(str(tiny_gguf)) == str(home / "gguf" / digest)
    assert sorted(p.name for p in (home / "gguf").iterdir()) == [digest]


def test_a_gguf_student_trains_and_its_run_records_the_file(tiny_gguf, data_dir, tmp_path, home):
    out = tmp_path / "student"
    result = CliRunner().invoke(app, ["train-student", "--task", "fever", "--student", str(tiny_gguf),
                                      "--train", str(data_dir / "train.jsonl"), "--test", str(data_dir / "test.jsonl"),
                                      "--out", str(out), "--max-steps", "2", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    assert record["gguf"] == {"file": tiny_gguf.name, "sha256": gguf_models.sha256_of(tiny_gguf), "role": "student"}
    assert load_model(str(out))[1] == "causal"


def test_a_truncated_gguf_is_a_clear_error(tiny_gguf, tmp_path, home):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:300])
    with pytest.raises(ModelError, match="not a readable GGUF|cannot dequantise"):
        gguf_models.resolve(str(cut))
    with pytest.raises(ModelError, match="no such GGUF file"):
        gguf_models.resolve(str(tmp_path / "missing.gguf"))
    two = tmp_path / "two"
    two.mkdir()
    shutil.copy(tiny_gguf, two / "a.gguf")
    shutil.copy(tiny_gguf, two / "b.gguf")
    with pytest.raises(ModelError, match="holds 2 GGUF files"):
        gguf_models.resolve(str(two))


def test_teacher_label_from_a_gguf_records_its_sha256(tiny_gguf, data_dir, tmp_path, home):
    from dora.cache import LabelCache

    out = tmp_path / "cache"
    result = CliRunner().invoke(app, [
        "teacher-label", "--task", "fever", "--teacher", str(tiny_gguf), "--no-finetune",
        "--pool", str(data_dir / "pool.jsonl"), "--out", str(out), "--top-k", "4", "--max-new-tokens", "4",
        "--shard-size", "20",
    ])
    assert result.exit_code == 0, result.output
    manifest = LabelCache.open(out).manifest
    digest = gguf_models.sha256_of(tiny_gguf)
    assert manifest.teacher.weights_sha256 == digest
    assert manifest.lineage["gguf"] == {"file": tiny_gguf.name, "sha256": digest, "role": "teacher"}
    verified = CliRunner().invoke(app, ["cache", "verify", str(out)])
    assert verified.exit_code == 0, verified.output


def test_make_student_cuts_a_gguf_teacher(tiny_gguf, tmp_path, home):
    out = tmp_path / "student"
    result = CliRunner().invoke(app, ["make-student", "--from", str(tiny_gguf), "--layers", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    model, kind = load_model(str(out))
    teacher, _ = load_model(str(tiny_gguf))
    assert kind == "causal" and model.config.num_hidden_layers == 1
    assert torch.equal(model.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    made = json.loads((out / "make_student.json").read_text())
    assert made["teacher_weights_sha256"] == gguf_models.sha256_of(tiny_gguf)
