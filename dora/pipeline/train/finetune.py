"""Fine-tuning a teacher on the labeled set: full or LoRA (peft), seq2seq or decoder-only.

The result is a plain Hugging Face directory (LoRA weights merged in) plus
``dora_finetune.json``, which records what was trained on and what it cost. A rerun with the
same base model, data and settings finds that record and skips training; an interrupted run
resumes from ``checkpoints/last``.

With ``evaluate`` (the teacher's score on dev data) fine-tuning evaluates every
``settings.eval_every`` steps, stops early after ``settings.patience`` evaluations without a better
score, and the teacher saved is the best one on dev, not the last: its model files (full
fine-tuning) or its adapter weights (LoRA, ``best/adapter.safetensors``) are kept in ``best/`` until
the teacher is complete, so a resumed run still has them.

dora writes only into a new or empty directory, or one it made for the same run: the record is
written first (``"complete": false``, with the run's key) and again last (``"complete": true``).
Any other directory (the user's own model, another run's teacher) is refused before any work.
One run at a time per directory (``dora.rundir``, locked with ``dora.lock``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from dora.errors import CacheError, ConfigError
from dora.files import parse_json
from dora.lock import Guarded
from dora.pipeline.costs.ledger import Devices, Ledger
from dora.pipeline.data.encoding import causal_targets, collate, decoder_inputs, encode_pair, target_ids
from dora.pipeline.data.inputs import Example, fingerprint
from dora.pipeline.kd.losses import token_cross_entropy
from dora.pipeline.models.kinds import ModelKind
from dora.pipeline.models.loading import load_model
from dora.pipeline.train.checkpoint import STATE_FILE
from dora.pipeline.train.distributed import process_rank
from dora.pipeline.train.loop import LoopSettings, train_loop
from dora.pipeline.train.tracking import Tracker
from dora.progress import console, note
from dora.rundir import RunDir, RunWords, write_json

RECORD = "dora_finetune.json"


@dataclass(frozen=True, kw_only=True)
class LoraSettings:
    """LoRA adapters' shape; rank and alpha come from the stage's config (``--lora-r``, ``--lora-alpha``)."""

    r: int
    alpha: int
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
    evaluate: Callable[[Any], dict[str, float]] | None = None,
    primary: str | None = None,
    selection: dict[str, Any] | None = None,
) -> tuple[Any | None, dict[str, Any]]:
    """Fine-tune ``base`` on the labeled examples and save it to ``out_dir``; with ``fsdp``
    under a multi-process launch, the model is sharded over the processes.

    ``evaluate(model)`` (rank 0; a stub that returns ``{}`` on the other ranks) scores the model on
    dev data, flat (``{"strict_accuracy": ...}``); the best ``primary`` score selects the teacher
    saved, and ``settings.patience`` stops early. ``selection`` describes what ``evaluate`` scores
    (the dev data's fingerprint, the metric, generation settings): it is part of the run's key, so a
    teacher selected on other dev data is not reused.

    Returns (the trained model, or None when an earlier run's result was reused or the model is
    to be read from ``out_dir``; the record).
    """
    if evaluate is not None and (primary is None or selection is None):
        raise ValueError("finetune_teacher: evaluate needs primary and selection")
    key = _run_key(base=base, examples=examples, prefix=prefix, max_source_length=max_source_length,
                   max_target_length=max_target_length, settings=settings, lora=lora,
                   selection=None if evaluate is None else {**selection, "primary": primary})  # type: ignore[dict-item]
    # A teacher finished by an earlier dora, which scored --dev only after fine-tuning, is reused as
    # it is: its key is the same run's without selection.
    unselected = None if evaluate is None else _run_key(
        base=base, examples=examples, prefix=prefix, max_source_length=max_source_length,
        max_target_length=max_target_length, settings=replace(settings, eval_every=None, patience=None), lora=lora)
    rank, world = process_rank()
    ledger = Ledger(out_dir, "teacher_finetune")
    devices = Devices.here(processes=world)
    run = _teacher_dir(out_dir, key, finished_before=unselected)
    # Before any work: refuse a directory dora did not make for this run (read-only).
    record = run.recorded()
    if record is not None and record.get("complete", True):  # records without the flag were written last
        return _reuse(record, out_dir=out_dir, ledger=ledger, devices=devices, rank=rank, gold_labels=len(examples))
    failed = True
    try:
        if rank == 0:
            record = run.claim()
            if record is not None and record.get("complete", True):  # another run finished this teacher meanwhile
                if world > 1:  # the other ranks are already on their way to fine-tune
                    raise ConfigError(f"{out_dir}: another run finished this teacher meanwhile; rerun to use it")
                failed = False
                return _reuse(record, out_dir=out_dir, ledger=ledger, devices=devices, rank=rank,
                              gold_labels=len(examples))
            if record is None:  # first: marks the directory as this run's before anything else is written
                run.write_marker({"key": key, "base": base, "complete": False})
            ledger.compact()
        result = _finetune(base=base, revision=revision, trust_remote_code=trust_remote_code, tokenizer=tokenizer,
                           examples=examples, prefix=prefix, max_source_length=max_source_length,
                           max_target_length=max_target_length, settings=settings, lora=lora, out_dir=out_dir,
                           fsdp=fsdp, report_to=report_to, key=key, ledger=ledger, devices=devices, rank=rank,
                           evaluate=evaluate, primary=primary)
        failed = False
        return result
    finally:
        run.release(failed=failed, keep=_worth_keeping)


def _run_key(*, base: str, examples: list[Example], prefix: str, max_source_length: int, max_target_length: int,
             settings: LoopSettings, lora: LoraSettings | None, selection: dict[str, Any] | None = None) -> str:
    """What makes a fine-tuned teacher this run's: base model, data, targets and settings, and
    what selected its checkpoint (dev data and metric) when one was selected."""
    key_data = {"base": base, "data": fingerprint(examples), "targets": hashlib.sha256(
        "\n".join(e.target or "" for e in examples).encode()).hexdigest(), "prefix": prefix,
        "max_source_length": max_source_length, "max_target_length": max_target_length,
        "settings": asdict(settings) | {"resume": None}, "lora": asdict(lora) if lora else None}
    if selection is not None:  # absent otherwise: teachers fine-tuned without dev keep their keys
        key_data["selection"] = selection
    return hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()


def _reuse(record: dict[str, Any], *, out_dir: Path, ledger: Ledger, devices: Devices, rank: int,
           gold_labels: int) -> tuple[None, dict[str, Any]]:
    """An earlier run's teacher, used as it is (and recorded as a no-op in the ledger)."""
    console.print(f"teacher: already fine-tuned with these data and settings in {out_dir}; skipping")
    if rank == 0:
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # a crash after the record may have left them
        for name in (BEST, BEST_TMP, BEST_OLD):
            shutil.rmtree(out_dir / name, ignore_errors=True)
        ledger.record_noop(devices, "already fine-tuned with these data and settings")
    return None, record | {"cost": _cost(ledger, record, gold_labels)}


def _finetune(*, base: str, revision: str | None, trust_remote_code: bool, tokenizer: Any, examples: list[Example],
              prefix: str, max_source_length: int, max_target_length: int, settings: LoopSettings,
              lora: LoraSettings | None, out_dir: Path, fsdp: bool, report_to: str, key: str, ledger: Ledger,
              devices: Devices, rank: int, evaluate: Callable[[Any], dict[str, float]] | None = None,
              primary: str | None = None) -> tuple[Any | None, dict[str, Any]]:
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
        best = out_dir / BEST

        def save_final(trained: Any, path: Path, state_dict: dict[str, Any] | None) -> None:
            if path == best:  # the best on dev so far (during training)
                _save_best(trained, best, tokenizer, lora=lora is not None)
                return
            if evaluate is not None:  # the best on dev becomes the teacher, not the last
                if not best.is_dir():
                    raise ConfigError(f"{best}: the checkpoint selected on --dev is missing; delete {out_dir} to "
                                      "fine-tune again, or choose a new --teacher-out")
                if lora is None:
                    _install_best(best, out_dir)
                    merged["model"] = None  # labeled from the saved teacher
                    return
                _restore_adapters(trained, best)
            if state_dict is not None:  # gathered from FSDP shards: rebuild a plain model on this rank
                trained, _ = load_model(base, revision=revision, trust_remote_code=trust_remote_code)
                trained = _with_lora(trained, kind, lora) if lora is not None else trained
                trained.load_state_dict(state_dict)
            if lora is not None:
                trained = trained.merge_and_unload()  # vLLM and the student stage want plain weights
            merged["model"] = trained
            # Written beside the checkpoints, then moved in: a full disk leaves no half-written weights.
            tmp = path / FINAL_TMP
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                trained.save_pretrained(str(tmp), safe_serialization=True)
                tokenizer.save_pretrained(str(tmp))
                for item in sorted(tmp.iterdir()):
                    os.replace(item, path / item.name)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

        result = train_loop(
            model=train_model, features=features, collate=lambda f: collate(f, tokenizer.pad_token_id),
            loss_fn=sequence_loss(kind), settings=settings, out_dir=out_dir,
            save_model=save_final, final_dir=out_dir, description="fine-tune teacher", fsdp=fsdp,
            tracker=Tracker(report_to, out_dir, f"teacher-{out_dir.name}") if rank == 0 else None, ledger=run,
            evaluate=evaluate, primary=primary,
        )
    train_model = merged.get("model", train_model) if not fsdp else None  # FSDP: rank 0 reloads it to label
    record = {"key": key, "base": base, "complete": True, "steps": result.steps, "epochs": result.epochs,
              "lora": asdict(lora) if lora else None, "best_step": result.best_step if evaluate else None,
              "stopped_early": result.stopped_early, "dev": result.best if evaluate else None,
              "history": result.history}
    if rank == 0:
        record["cost"] = _cost(ledger, record, len(examples))
        write_json(out_dir / RECORD, record)  # last: marks the teacher complete
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # the optimizer state is dead weight now
        for name in (BEST, BEST_TMP, BEST_OLD):  # kept until now: a resumed run installs the best from it
            shutil.rmtree(out_dir / name, ignore_errors=True)
    return train_model, record


# --- the checkpoint selected on dev ------------------------------------------------------------------

BEST, BEST_TMP, BEST_OLD = "best", "best.tmp", "best.old"
ADAPTER = "adapter.safetensors"


def _save_best(trained: Any, best: Path, tokenizer: Any, *, lora: bool) -> None:
    """Replace ``best/`` with this model: its adapter weights alone (LoRA: merging would end the
    training), or the whole model and tokenizer. Written beside it and swapped in, so a crash
    leaves the previous best or this one whole."""
    tmp, old = best.with_name(BEST_TMP), best.with_name(BEST_OLD)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if lora:
            from peft import get_peft_model_state_dict
            from safetensors.torch import save_file

            tmp.mkdir(parents=True)
            weights = {k: v.detach().to("cpu").contiguous() for k, v in get_peft_model_state_dict(trained).items()}
            save_file(weights, str(tmp / ADAPTER))
        else:
            trained.save_pretrained(str(tmp), safe_serialization=True)
            tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(old, ignore_errors=True)
        if best.is_dir():
            os.replace(best, old)
        os.replace(tmp, best)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _restore_adapters(trained: Any, best: Path) -> None:
    """Load the best adapter weights back into the trained LoRA model (before it is merged)."""
    from peft import set_peft_model_state_dict
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = best / ADAPTER
    if not path.is_file():
        raise ConfigError(f"{path}: the adapters selected on --dev are missing; delete {best.parent} to fine-tune "
                          "again, or choose a new --teacher-out")
    fix = f"delete {best.parent} to fine-tune again, or choose a new --teacher-out"
    try:
        result = set_peft_model_state_dict(trained, load_file(str(path)))
    except (OSError, RuntimeError, ValueError, SafetensorError) as e:  # a damaged file, other shapes
        raise ConfigError(f"{path}: cannot be loaded as this teacher's adapters ({str(e).splitlines()[0][:200]}); "
                          f"{fix}") from None
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise ConfigError(f"{path}: holds weights that are not this teacher's adapters ({unexpected[0]}); {fix}")


def _install_best(best: Path, out_dir: Path) -> None:
    """Make ``best/``'s files the teacher directory's model files (hard links where the file
    system has them, else copies; ``best/`` stays whole until the teacher is complete)."""
    tmp = out_dir / FINAL_TMP
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for item in sorted(best.iterdir()):
            if not item.is_file() or item.is_symlink():
                continue
            try:
                os.link(item, tmp / item.name)
            except OSError:
                shutil.copy2(item, tmp / item.name)
        for item in sorted(tmp.iterdir()):
            os.replace(item, out_dir / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- the teacher directory: whose it is, one run at a time, no leftovers (``dora.rundir``) ------------

FINAL_TMP = "final.tmp"


TEACHER_DIR = Guarded(
    directory="the teacher directory", create_fix="choose a writable --teacher-out",
    busy="is fine-tuning a teacher in this directory", wait="wait for it to finish, or choose another --teacher-out",
    mine="this run already holds this directory (is --teacher-out the same as --out?); choose another --teacher-out")
TEACHER_WORDS = RunWords(
    not_dir="{dir}: not a directory; choose a new --teacher-out for the fine-tuned teacher",
    foreign=f"{{dir}}: not empty and not a teacher directory dora made (it holds {{name!r}} and no {RECORD}); dora "
            "writes the fine-tuned teacher only into a new or empty directory and would overwrite these files: "
            "choose a new --teacher-out",
    other=f"{{dir}}: holds a teacher dora fine-tuned for another run (other base model, data, settings or --dev, says "
          f"its {RECORD}); choose a new --teacher-out, or delete that directory to fine-tune again",
    damaged="dora writes this file; delete {dir} to fine-tune again, or choose a new --teacher-out",
    unparsable="not valid JSON")


def _teacher_dir(out_dir: Path, key: str, finished_before: str | None = None) -> RunDir:
    """The teacher directory of the run ``key``: its record (``dora_finetune.json``, written first with
    ``"complete": false`` and last with true) is its marker. ``finished_before``: the key the same
    teacher had before dora selected teachers on dev; a complete record with it is this run's too
    (said once: it was not selected on dev)."""

    def earlier(record: dict[str, Any]) -> dict[str, Any] | None:
        if finished_before is not None and record["key"] == finished_before and record.get("complete", True):
            note(f"{out_dir}: a teacher fine-tuned by an earlier dora, which did not pick its checkpoint on --dev; "
                 "reusing it as it is (delete the directory to fine-tune one picked on dev)")
            return record
        raise run.refusal()

    run = RunDir(out_dir, identity=key, markers=(RECORD,), field="key", words=TEACHER_WORDS, guarded=TEACHER_DIR,
                 valid=_record_ok, invalid="not a teacher record dora wrote (an object with a string key, a true or "
                 "false complete, numeric steps and a cost object)", other=earlier)
    return run


def _record_ok(raw: Any) -> bool:
    if not isinstance(raw, dict) or not isinstance(raw.get("key"), str):
        return False
    if not isinstance(raw.get("complete", True), bool):
        return False
    for name in ("steps", "epochs"):
        if name in raw and (isinstance(raw[name], bool) or not isinstance(raw[name], (int, float))):
            return False
    cost = raw.get("cost", {})
    if not isinstance(cost, dict) or not isinstance(cost.get("entries", []), list):
        return False
    return all(isinstance(v, (int, float, str, list)) or v is None for v in cost.values())


def _worth_keeping(out_dir: Path) -> bool:
    """Whether a failed run's directory holds something of value: a checkpoint to resume, a finished teacher."""
    checkpoints = out_dir / "checkpoints"
    if any((checkpoints / d / STATE_FILE).is_file() for d in ("last", "last.old")):
        return True
    try:
        record = parse_json((out_dir / RECORD).read_bytes(), str(out_dir / RECORD))
    except (OSError, CacheError):
        return False
    return _record_ok(record) and record.get("complete", True)


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
