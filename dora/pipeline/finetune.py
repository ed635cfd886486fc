"""Fine-tuning a teacher on the labeled set: full or LoRA (peft), seq2seq or decoder-only.

The result is a plain Hugging Face directory (LoRA weights merged in) plus
``dora_finetune.json``, which records what was trained on and what it cost. A rerun with the
same base model, data and settings finds that record and skips training; an interrupted run
resumes from ``checkpoints/last``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from dora.cache.manifest import write_atomic
from dora.errors import ConfigError
from dora.pipeline.costs import Devices, Ledger
from dora.pipeline.data import Example, fingerprint
from dora.pipeline.distributed import process_rank
from dora.pipeline.encoding import causal_targets, collate, decoder_inputs, encode_pair, target_ids
from dora.pipeline.losses import token_cross_entropy
from dora.pipeline.models import ModelKind, load_model
from dora.pipeline.progress import console
from dora.pipeline.tracking import Tracker
from dora.pipeline.training import LoopSettings, train_loop

RECORD = "dora_finetune.json"


@dataclass(frozen=True, kw_only=True)
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05


def sequence_loss(kind: ModelKind) -> Callable[[Any, dict[str, Any]], Any]:
    """Mean token cross-entropy over label positions (the completion only, for causal models)."""

    def loss_fn(model: Any, batch: dict) -> Any:
        if kind == "seq2seq":
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           decoder_input_ids=decoder_inputs(model, batch["labels"])).logits
            labels = batch["labels"]
        else:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logits, labels = causal_targets(logits, batch["labels"])
        ce = token_cross_entropy(torch.log_softmax(logits.float(), dim=-1), labels)
        return ce.sum() / (labels != -100).sum().clamp(min=1)

    return loss_fn


def finetune_teacher(
    *,
    base: str,
    revision: str | None,
    trust_remote_code: bool,
    tokenizer: Any,
    examples: list[Example],
    prefix: str,
    max_source_length: int,
    max_target_length: int,
    settings: LoopSettings,
    lora: LoraSettings | None,
    out_dir: Path,
    fsdp: bool = False,
    report_to: str = "none",
) -> tuple[Any | None, dict[str, Any]]:
    """Fine-tune ``base`` on the labeled examples and save it to ``out_dir``; with ``fsdp``
    under a multi-process launch, the model is sharded over the processes.

    Returns (the trained model, or None when an earlier run's result was reused; the record).
    """
    key_data = {"base": base, "data": fingerprint(examples), "targets": hashlib.sha256(
        "\n".join(e.target or "" for e in examples).encode()).hexdigest(), "prefix": prefix,
        "max_source_length": max_source_length, "max_target_length": max_target_length,
        "settings": asdict(settings) | {"resume": None}, "lora": asdict(lora) if lora else None}
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()
    record_path = out_dir / RECORD
    rank, world = process_rank()
    ledger = Ledger(out_dir, "teacher_finetune")
    devices = Devices.here(processes=world)
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("key") == key:
            console.print(f"teacher: already fine-tuned with these data and settings in {out_dir}; skipping")
            if rank == 0:
                ledger.record_noop(devices, "already fine-tuned with these data and settings")
            return None, record | {"cost": _cost(ledger, record, len(examples))}
        raise ConfigError(
            f"{out_dir}: holds a teacher fine-tuned on other data or settings; "
            "pass another --teacher-out, or delete it to fine-tune again"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        ledger.compact()
    # Loading counts as fine-tuning time: a rerun after a crash pays for it again.
    with ledger.invocation(devices) if rank == 0 else contextlib.nullcontext() as run:
        model, kind = load_model(base, revision=revision, trust_remote_code=trust_remote_code)
        n_params = sum(p.numel() for p in model.parameters()) / 1e6
        console.print(f"teacher: fine-tuning {base} ({kind}, {n_params:.1f}M parameters) on {len(examples)} examples")
        features = [
            encode_pair(tokenizer, kind, prefix + e.source, target_ids(tokenizer, e.target or "", max_target_length),
                        max_source_length)
            for e in examples
        ]
        train_model = _with_lora(model, kind, lora) if lora is not None else model
        merged: dict[str, Any] = {}

        def save_final(trained: Any, path: Path, state_dict: dict[str, Any] | None) -> None:
            if state_dict is not None:  # gathered from FSDP shards: rebuild a plain model on this rank
                trained, _ = load_model(base, revision=revision, trust_remote_code=trust_remote_code)
                trained = _with_lora(trained, kind, lora) if lora is not None else trained
                trained.load_state_dict(state_dict)
            if lora is not None:
                trained = trained.merge_and_unload()  # vLLM and the student stage want plain weights
            merged["model"] = trained
            trained.save_pretrained(str(path), safe_serialization=True)
            tokenizer.save_pretrained(str(path))

        result = train_loop(
            model=train_model, features=features, collate=lambda f: collate(f, tokenizer.pad_token_id),
            loss_fn=sequence_loss(kind), settings=settings, out_dir=out_dir,
            save_model=save_final, final_dir=out_dir, description="fine-tune teacher", fsdp=fsdp,
            tracker=Tracker(report_to, out_dir, f"teacher-{out_dir.name}") if rank == 0 else None, ledger=run,
        )
    train_model = merged.get("model", train_model) if not fsdp else None  # FSDP: rank 0 reloads it to label
    record = {"key": key, "base": base, "steps": result.steps, "epochs": result.epochs,
              "lora": asdict(lora) if lora else None, "history": result.history}
    if rank == 0:
        record["cost"] = _cost(ledger, record, len(examples))
        write_atomic(out_dir / RECORD, json.dumps(record, indent=2).encode())  # last: marks the teacher complete
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # the optimizer state is dead weight now
    return train_model, record


def _cost(ledger: Ledger, record: dict[str, Any], gold_labels: int) -> dict[str, Any]:
    """Every fine-tuning invocation's cost, summed from the teacher's ledger (or the record's own
    cost for a teacher fine-tuned before dora kept ledgers)."""
    entries = ledger.entries()
    if not entries and "cost" in record:
        return record["cost"]
    return ledger.summary() | {"gold_labels": gold_labels}


def _with_lora(model: Any, kind: ModelKind, lora: LoraSettings) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model

    task_type = TaskType.SEQ_2_SEQ_LM if kind == "seq2seq" else TaskType.CAUSAL_LM
    return get_peft_model(model, LoraConfig(task_type=task_type, r=lora.r, lora_alpha=lora.alpha,
                                            lora_dropout=lora.dropout, target_modules="all-linear"))
