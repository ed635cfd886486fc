"""The teacher's fine-tuning selects its checkpoint on --dev: evaluated during training, stopped
early with --patience, and the teacher saved (full or LoRA) is the best one on dev, not the last."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import fever_rows, write_jsonl
from safetensors.torch import load_file
from typer.testing import CliRunner

from dora.cli import app
from dora.errors import ConfigError
from dora.pipeline.train.finetune import RECORD, LoraSettings, finetune_teacher
from dora.pipeline.train.loop import LoopSettings

PRIMARY = "strict_accuracy"
SELECTION = {"dev": "a fingerprint", "task": "fever"}


@pytest.fixture(scope="module")
def examples(data_dir):
    from dora.pipeline.data.inputs import read_examples

    return read_examples(data_dir / "train.jsonl", require_target=True)[:16]


def _settings(**overrides) -> LoopSettings:
    values = dict(epochs=1, max_steps=6, batch_size=4, grad_accum=1, learning_rate=1e-2, warmup_ratio=0.0,
                  weight_decay=0.0, seed=1, eval_every=1, save_every=None)
    return LoopSettings(**{**values, **overrides})


class Scripted:
    """An evaluate whose score at its i-th call is ``scores[i]``; keeps the weights it saw each time
    (merged, for a LoRA model), so a test knows what the model was at every evaluated step."""

    def __init__(self, scores: list[float], first_step: int = 1) -> None:
        self.scores, self.step, self.seen = scores, first_step - 1, {}

    def __call__(self, model) -> dict[str, float]:
        self.step += 1
        from peft import PeftModel

        plain = copy.deepcopy(model).merge_and_unload() if isinstance(model, PeftModel) else model
        self.seen[self.step] = {k: v.detach().clone() for k, v in plain.state_dict().items()}
        score = self.scores[self.step - 1]
        return {PRIMARY: score, "paper_accuracy": score}


def _finetune(t5_dir: Path, examples, out: Path, evaluate, **overrides):
    from dora.pipeline.models.loading import load_tokenizer

    return finetune_teacher(base=str(t5_dir), revision=None, trust_remote_code=False,
                            tokenizer=load_tokenizer(str(t5_dir)), examples=examples, prefix="fever: ",
                            max_source_length=32, max_target_length=8,
                            settings=overrides.pop("settings", _settings()), lora=overrides.pop("lora", None),
                            out_dir=out, evaluate=evaluate, primary=PRIMARY if evaluate else None,
                            selection=overrides.pop("selection", SELECTION) if evaluate else None, **overrides)


def _saved(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def _same(saved: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> bool:
    return all(torch.allclose(v, weights[k], atol=1e-7, rtol=0) for k, v in saved.items())


def _left_behind(out: Path) -> list[str]:
    leftovers = ("best", "best.tmp", "best.old", "final.tmp", "checkpoints")
    return sorted(p.name for p in out.iterdir() if p.name in leftovers)


def test_the_saved_teacher_is_the_best_checkpoint_on_dev_not_the_last(t5_dir, examples, tmp_path):
    out = tmp_path / "teacher"
    evaluate = Scripted([0.1, 0.2, 0.9, 0.5, 0.4, 0.3])  # best at step 3 of 6
    model, record = _finetune(t5_dir, examples, out, evaluate)
    assert record["best_step"] == 3 and record["steps"] == 6 and record["stopped_early"] is False
    assert record["dev"] == {PRIMARY: 0.9, "paper_accuracy": 0.9}
    assert [h["step"] for h in record["history"] if "eval" in h] == [1, 2, 3, 4, 5, 6]
    assert json.loads((out / RECORD).read_text())["best_step"] == 3
    saved = _saved(out)
    assert saved and _same(saved, evaluate.seen[3])
    assert not _same(saved, evaluate.seen[6])  # the last model differs: the test could tell them apart
    assert _left_behind(out) == []
    assert model is None  # labeled from the saved (best) teacher


def test_patience_stops_fine_tuning_early(t5_dir, examples, tmp_path):
    out = tmp_path / "teacher"
    evaluate = Scripted([0.1, 0.5, 0.4, 0.3] + [0.2] * 6)
    _, record = _finetune(t5_dir, examples, out, evaluate, settings=_settings(max_steps=10, patience=2))
    assert record["stopped_early"] is True and record["steps"] == 4 and record["best_step"] == 2
    assert sorted(evaluate.seen) == [1, 2, 3, 4]  # no evaluation after it stopped
    assert _same(_saved(out), evaluate.seen[2])
    assert _left_behind(out) == []


def test_without_dev_the_last_model_is_saved_as_before(t5_dir, examples, tmp_path):
    out = tmp_path / "teacher"
    model, record = _finetune(t5_dir, examples, out, None, settings=_settings(eval_every=None))
    assert record["best_step"] is None and record["dev"] is None and record["stopped_early"] is False
    assert not any("eval" in h for h in record["history"])
    last = {k: v.detach() for k, v in model.state_dict().items()}
    assert _same(_saved(out), last) and _left_behind(out) == []


def test_lora_restores_the_best_adapters_then_merges(t5_dir, examples, tmp_path, monkeypatch):
    import dora.pipeline.train.finetune as finetune

    out = tmp_path / "teacher"
    adapters_seen = []
    real = finetune._save_best

    def spy(trained, best, tokenizer, *, lora):
        real(trained, best, tokenizer, lora=lora)
        adapters_seen.append(sorted(p.name for p in best.iterdir()))

    monkeypatch.setattr(finetune, "_save_best", spy)
    evaluate = Scripted([0.2, 0.8, 0.3, 0.1])
    model, record = _finetune(t5_dir, examples, out, evaluate, settings=_settings(max_steps=4),
                              lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    assert adapters_seen == [["adapter.safetensors"]] * 2  # steps 1 and 2: the adapters alone, never merged
    assert record["best_step"] == 2 and record["lora"]["r"] == 4
    saved = _saved(out)
    assert not any("lora" in k or "base_model" in k for k in saved)  # plain, merged weights
    assert _same(saved, evaluate.seen[2]) and not _same(saved, evaluate.seen[4])
    assert not any("lora" in n for n, _ in model.named_parameters())  # the merged best labels
    assert _same({k: v for k, v in model.state_dict().items() if k in saved}, evaluate.seen[2])
    assert _left_behind(out) == [] and not (out / "adapter_config.json").exists()


def test_a_crash_keeps_best_and_the_resumed_run_installs_it(t5_dir, examples, tmp_path, monkeypatch):
    import dora.pipeline.train.loop as training

    out = tmp_path / "teacher"
    settings = _settings(save_every=2)
    real = training.write_curves
    calls = []

    def crash_at_second_checkpoint(*args):
        real(*args)
        calls.append(1)
        if len(calls) == 2:  # the checkpoint at step 4 is whole
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "write_curves", crash_at_second_checkpoint)
    first = Scripted([0.1, 0.2, 0.9, 0.5])
    with pytest.raises(KeyboardInterrupt):
        _finetune(t5_dir, examples, out, first, settings=settings)
    assert json.loads((out / RECORD).read_text())["complete"] is False
    assert (out / "best" / "model.safetensors").is_file() and not (out / "model.safetensors").exists()
    monkeypatch.setattr(training, "write_curves", real)
    second = Scripted([0.0] * 6, first_step=5)  # steps 5 and 6 after the resume: worse than step 3
    _, record = _finetune(t5_dir, examples, out, second, settings=settings)
    assert sorted(second.seen) == [5, 6] and record["best_step"] == 3 and record["dev"][PRIMARY] == 0.9
    assert _same(_saved(out), first.seen[3])
    assert _left_behind(out) == []


def test_the_dev_selection_is_part_of_the_teachers_identity(t5_dir, examples, tmp_path):
    out = tmp_path / "teacher"
    _finetune(t5_dir, examples, out, Scripted([0.5] * 6))
    again, record = _finetune(t5_dir, examples, out, Scripted([0.5] * 6))
    assert again is None and record["best_step"] == 1  # reused
    with pytest.raises(ConfigError, match="holds a teacher dora fine-tuned for another run"):
        _finetune(t5_dir, examples, out, Scripted([0.5] * 6), selection={**SELECTION, "dev": "other dev data"})
    with pytest.raises(ConfigError, match="another run"):  # selected on dev vs not: other teachers too
        _finetune(t5_dir, examples, out, None)


def test_a_teacher_an_earlier_dora_finished_without_selection_is_reused(t5_dir, examples, tmp_path, capsys):
    """Teachers fine-tuned before dev selection existed (a sweep's, say) are reused as they are on a
    rerun that now passes --dev, with a note, instead of being refused as another run's."""
    out = tmp_path / "teacher"
    _finetune(t5_dir, examples, out, None, settings=_settings(eval_every=None))
    before = _saved(out)
    again, record = _finetune(t5_dir, examples, out, Scripted([0.5] * 6), settings=_settings(eval_every=2, patience=1))
    assert again is None and record.get("best_step") is None
    assert _same(_saved(out), before)
    assert "did not pick its checkpoint on --dev" in " ".join(capsys.readouterr().err.split())


# --- the command line -----------------------------------------------------------------------------

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_patience_without_dev_is_one_line_and_writes_nothing(t5_dir, data_dir, tmp_path):
    out = tmp_path / "cache"
    result = invoke("teacher-label", "--task", "fever", "--teacher", t5_dir, "--train", data_dir / "train.jsonl",
                    "--pool", data_dir / "pool.jsonl", "--out", out, "--patience", "2", "--max-steps", "2")
    assert result.exit_code == 2, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "--patience" in lines[0] and "give --dev FILE" in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []


def test_config_checks_the_new_fields(tmp_path):
    from dora.pipeline.stages.teacher_label import TeacherLabelConfig

    base = dict(task="fever", teacher="t", pool="p.jsonl", out="o", train="t.jsonl")
    for bad, message in [({"patience": 0, "dev": "d.jsonl"}, "--patience must be a positive integer"),
                         ({"eval_every": -1, "dev": "d.jsonl"}, "--eval-every must be a positive integer"),
                         ({"eval_every": 5}, "give --dev FILE"),
                         ({"patience": 3, "dev": "d.jsonl", "finetune": False}, "--no-finetune")]:
        with pytest.raises(ConfigError, match=message):
            TeacherLabelConfig(**{**base, **bad})
    config = TeacherLabelConfig(**base, dev="d.jsonl", patience=2, eval_every=3)
    assert (config.patience, config.eval_every) == (2, 3)


def test_default_eval_every_is_each_epoch_but_at_least_four_times(examples):
    from dora.pipeline.stages.teacher_label import _default_eval_every

    class Plan:
        train, world = examples * 3, 1  # 48 rows: 6 steps per epoch at batch 8

    def every(**overrides):
        return _default_eval_every(Plan, _settings(**{"batch_size": 8, "max_steps": None, "eval_every": None,
                                                      **overrides}))

    assert every(epochs=10) == 6  # 60 steps: once per epoch
    assert every(epochs=3) == 4  # 18 steps: at steps 4, 8, 12, 16 and 18, not only at 6, 12 and 18
    assert every(epochs=1, max_steps=3) == 1  # as often as there are steps


def test_teacher_label_selects_on_dev_and_a_rerun_reuses_or_refuses(t5_dir, data_dir, tmp_path):
    out, teacher = tmp_path / "cache", tmp_path / "cache.teacher"
    args = ["teacher-label", "--task", "fever", "--teacher", t5_dir, "--train", data_dir / "train.jsonl",
            "--pool", data_dir / "pool.jsonl", "--out", out, "--max-steps", "8", "--batch-size", "8",
            "--learning-rate", "3e-3", "--top-k", "4", "--max-new-tokens", "4", "--dev", data_dir / "dev.jsonl"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    record = json.loads((teacher / RECORD).read_text())
    evals = [h for h in record["history"] if "eval" in h]
    assert [h["step"] for h in evals] == [2, 4, 6, 8]  # default: 6 steps per epoch, but at least 4 evaluations
    best = max(evals, key=lambda h: h["eval"][PRIMARY])  # the first of equals is kept
    assert record["best_step"] == best["step"] and record["dev"] == best["eval"] and record["stopped_early"] is False
    assert f"teacher: best dev accuracy {best['eval'][PRIMARY]:.4f} at step {best['step']} of 8" in result.output
    assert not (teacher / "best").exists() and (teacher / "model.safetensors").is_file()

    again = invoke(*args)  # same settings: the teacher is reused (and the complete cache too)
    assert again.exit_code == 0 and "already fine-tuned" in again.output, again.output

    other_dev = write_jsonl(tmp_path / "other_dev.jsonl", fever_rows()[240:256])
    refused = invoke(*args[:-1], other_dev)
    assert refused.exit_code == 2, refused.output
    assert "holds a teacher dora fine-tuned for another run" in refused.stderr
    assert json.loads((teacher / RECORD).read_text()) == record  # the teacher selected on the first dev is kept


def test_a_decoder_only_lora_teacher_is_selected_on_dev_and_labels(llama_dir, data_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from dora.cache import LabelCache

    out, teacher = tmp_path / "cache", tmp_path / "cache.teacher"
    result = invoke("teacher-label", "--task", "fever", "--teacher", llama_dir, "--train", data_dir / "train.jsonl",
                    "--pool", data_dir / "pool.jsonl", "--out", out, "--lora", "--lora-r", "4", "--max-steps", "6",
                    "--batch-size", "8", "--eval-every", "2", "--patience", "1", "--top-k", "4",
                    "--max-new-tokens", "4", "--dev", data_dir / "dev.jsonl")
    assert result.exit_code == 0, result.output
    record = json.loads((teacher / RECORD).read_text())
    evals = [h["step"] for h in record["history"] if "eval" in h]
    assert evals[:2] == [2, 4] and record["best_step"] in evals and set(record["dev"]) >= {PRIMARY, "paper_accuracy"}
    assert record["stopped_early"] == (record["steps"] < 6) and record["lora"]["r"] == 4
    assert "teacher: best dev accuracy" in result.output
    model = AutoModelForCausalLM.from_pretrained(teacher)  # plain weights
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert not (teacher / "best").exists() and LabelCache.open(out).manifest.complete
