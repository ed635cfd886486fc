"""Stage 2, ``dora train-student``: train a compact seq2seq student from a label cache and/or gold.

Reads top to bottom: validate inputs, open the cache (cheap checks), load the student, choose
the distillation loss from the tokenizer fingerprints, build features, train with the explicit
loop, save the best model as a plain Hugging Face checkpoint with metrics and a run record.

Gold only (``train`` without ``cache``) is the *annotate* baseline; cache only is *distill*;
both mixes them (gold rows get cross-entropy, cache rows the KD loss).

Example::

    from dora.pipeline.student import TrainStudentConfig, train_student
    train_student(TrainStudentConfig(task="fever", student="models/t5-small-dir", cache="cache/fever",
                                     eval="test.jsonl", out="runs/distill"))
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dora import __version__
from dora.cache import LabelCache, tokenizer_fingerprint
from dora.errors import CacheError, ConfigError, ModelError
from dora.pipeline.config import Optimisation, TaskInputs, as_paths, positive_ints
from dora.pipeline.costs import Stopwatch
from dora.pipeline.data import Example, read_examples
from dora.pipeline.encoding import IGNORE, collate, encode_pair, target_ids
from dora.pipeline.evaluation import predict
from dora.pipeline.losses import token_cross_entropy, topk_kl_per_token
from dora.pipeline.metrics import require_encoder, score
from dora.pipeline.models import load_model, load_tokenizer, save_hf, vocab_size
from dora.pipeline.progress import console
from dora.pipeline.tasks import Task, get_task
from dora.pipeline.training import steps_per_epoch, train_loop

KdMode = Literal["auto", "topk", "sequence"]


@dataclass(frozen=True, kw_only=True)
class TrainStudentConfig(TaskInputs, Optimisation):
    """Everything ``train_student`` needs (task and training fields: ``dora.pipeline.config``)."""

    out: Path
    """Output directory: the student checkpoint, tokenizer, metrics.json and run.json."""
    student: str = "google/t5-v1_1-small"
    """Student: a local seq2seq (T5) directory or a hub id."""
    cache: Path | None = None
    """Label cache made by ``dora teacher-label`` (the distill route); its task must match."""
    train: Path | None = None
    """Gold labeled examples (the annotate route; mixed in when a cache is given too)."""
    eval: Path | None = None
    """Labeled test or dev file scored with the task metric during and after training."""
    kd: KdMode = "auto"
    """Distillation loss: topk (same tokenizer), sequence (pseudo-label text only), or auto."""
    temperature: float = 2.0
    """KD temperature T (the paper used 2)."""
    alpha: float = 0.0
    """Weight of cross-entropy on the pseudo-label; the KD term gets 1 - alpha (paper: 0)."""
    eval_every: int | None = None
    """Evaluate every N steps (default: once per epoch); the best checkpoint is kept."""
    save_every: int = 500
    """Save a resumable checkpoint every N steps."""
    resume: bool = True
    """Continue from ``<out>/checkpoints/last`` when it exists."""
    eval_batch_size: int = 32
    """Batch size for generating eval predictions."""
    encoder: str | None = None
    """Sentence encoder directory for BERT-iBLEU (multipit_gen)."""

    def __post_init__(self) -> None:
        TaskInputs.__post_init__(self)
        Optimisation.__post_init__(self)
        as_paths(self, "out", "cache", "train", "eval")
        if self.cache is None and self.train is None:
            raise ConfigError("give --cache (distill), --train (annotate with gold labels), or both")
        if self.temperature <= 0:
            raise ConfigError(f"--temperature must be positive, got {self.temperature}; the paper used 2.0")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"--alpha must be in [0, 1], got {self.alpha}")
        if self.kd not in ("auto", "topk", "sequence"):
            raise ConfigError(f"--kd must be auto, topk or sequence, got {self.kd!r}")
        positive_ints(self, "eval_batch_size", "save_every")
        if self.eval_every is not None:
            positive_ints(self, "eval_every")


@dataclass(frozen=True, kw_only=True)
class TrainStudentResult:
    out: Path
    kd: str
    metrics: dict[str, Any]
    record: dict[str, Any]


def train_student(config: TrainStudentConfig) -> TrainStudentResult:
    """Run stage 2 and return the scores of the saved (best) student."""
    watch = Stopwatch()
    task = get_task(config.task, metric=config.metric, prefix=config.prefix)
    # 1. Inputs first: bad rows and unfit caches fail before any model loads.
    gold = read_examples(config.train, fields=config.fields, require_target=True) if config.train else []
    evals = read_examples(config.eval, fields=config.fields, require_target=True) if config.eval else []
    cache = LabelCache.open(config.cache) if config.cache else None
    if cache is not None:
        _check_cache_task(cache, task, config.cache)
    if evals and task.metric == "bert_ibleu":
        require_encoder(config.encoder)  # fail now, not at the first evaluation

    # 2. The student, and which loss the cache allows.
    tokenizer = load_tokenizer(config.student, revision=config.revision, trust_remote_code=config.trust_remote_code)
    model, kind = load_model(config.student, revision=config.revision, trust_remote_code=config.trust_remote_code)
    if kind != "seq2seq":
        raise ModelError(f"student {config.student!r} is a decoder-only model; dora trains seq2seq (T5) students")
    kd = _choose_kd(config, cache, tokenizer, model)

    # 3. Features: cache rows carry the teacher's top-k; gold rows only labels.
    features = [_gold_feature(tokenizer, task, ex, config) for ex in gold]
    if cache is not None:
        features += _cache_features(cache, tokenizer, task, config, kd)
    console.print(f"student: {len(features)} training rows ({len(gold)} gold, "
                  f"{cache.num_rows if cache else 0} from the cache); {_describe(kd, config)}")

    # 4. Train, evaluating with the task metric and keeping the best model.
    config.out.mkdir(parents=True, exist_ok=True)
    settings = config.loop_settings(eval_every=config.eval_every, save_every=config.save_every, resume=config.resume)
    if settings.eval_every is None:  # default: once per epoch
        settings = replace(settings, eval_every=steps_per_epoch(len(features), settings))
    evaluate = None
    if evals:
        def evaluate(m: Any) -> dict[str, float]:
            preds = predict(m, tokenizer, "seq2seq", task, [e.source for e in evals],
                            batch_size=config.eval_batch_size, max_source_length=config.max_source_length,
                            max_new_tokens=config.max_new_tokens)
            return score(task, preds, [e.target or "" for e in evals], sources=[e.source for e in evals],
                         encoder=config.encoder)

    result = train_loop(
        model=model, features=features, collate=lambda f: collate_kd(f, tokenizer.pad_token_id),
        loss_fn=lambda m, b: student_loss(m, b, temperature=config.temperature, alpha=config.alpha),
        settings=settings, out_dir=config.out, save_model=lambda m, p: save_hf(m, tokenizer, p),
        evaluate=evaluate, primary=task.primary, description="train student",
    )

    # 5. The best model (or the last, without an eval file) becomes the output directory.
    best = config.out / "best"
    if not best.is_dir():
        save_hf(model, tokenizer, best)
    for item in best.iterdir():
        target = config.out / item.name
        if target.is_dir():
            shutil.rmtree(target)
        shutil.move(str(item), str(target))
    best.rmdir()
    shutil.rmtree(config.out / "checkpoints", ignore_errors=True)  # finished: resume state no longer needed

    cost = watch.cost("student_train", examples=result.examples_seen, tokens=result.tokens_seen)
    metrics = {"task": task.name, "metric": task.metric, "primary": task.primary, "eval": result.best,
               "best_step": result.best_step, "steps": result.steps, "history": result.history}
    record = {
        "dora_version": __version__, "stage": "train-student", "strategy": _strategy(gold, cache), "kd": kd,
        "student": config.student, "cache": str(config.cache) if config.cache else None,
        "cache_teacher": asdict(cache.manifest.teacher) if cache else None,
        "gold_examples": len(gold), "cache_rows": cache.num_rows if cache else 0,
        "steps": result.steps, "epochs": round(result.epochs, 4), "examples_seen": result.examples_seen,
        "tokens_seen": result.tokens_seen, "train_seconds": round(result.seconds, 3),
        "steps_per_second": round(result.steps / max(result.seconds, 1e-9), 4),
        "cost": cost.to_dict(), "upstream_costs": cache.manifest.costs if cache else {},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
    }
    (config.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (config.out / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"student: saved to {config.out}" + (f"; {task.primary} = {result.best[task.primary]:.4f}"
                                                      if result.best else ""))
    return TrainStudentResult(out=config.out, kd=kd, metrics=metrics, record=record)


def _strategy(gold: list[Example], cache: LabelCache | None) -> str:
    return "mixed" if gold and cache else ("distill" if cache else "annotate")


def _describe(kd: str, config: TrainStudentConfig) -> str:
    if kd == "topk":
        return f"loss: top-k KL at T={config.temperature} (alpha={config.alpha} on the pseudo-label)"
    return "loss: cross-entropy on the pseudo-label text (sequence-level KD)"


def _check_cache_task(cache: LabelCache, task: Task, path: Path) -> None:
    made_for = cache.manifest.task.get("name")
    if made_for != task.name:
        raise CacheError(f"{path}: the cache was labeled for task {made_for!r}, not {task.name!r}; "
                         f"pass --task {made_for} or a cache made for {task.name}")
    if cache.manifest.task.get("source_prefix") != task.source_prefix:
        raise CacheError(f"{path}: the cache used source prefix {cache.manifest.task.get('source_prefix')!r}, "
                         f"this run {task.source_prefix!r}; pass --prefix to match")


def _choose_kd(config: TrainStudentConfig, cache: LabelCache | None, tokenizer: Any, model: Any) -> str:
    if cache is None:
        return "none"
    teacher = cache.manifest.teacher
    same = teacher.tokenizer_fingerprint == tokenizer_fingerprint(tokenizer) and teacher.vocab_size <= vocab_size(model)
    if config.kd == "topk" and not same:
        raise CacheError(
            f"{config.cache}: --kd topk needs the teacher's tokenizer, but the cache's tokenizer fingerprint "
            f"{teacher.tokenizer_fingerprint[:12]}... differs from the student's {tokenizer_fingerprint(tokenizer)[:12]}... "
            "(or its vocabulary is larger); use a student with the teacher's tokenizer, or --kd sequence"
        )
    if config.kd == "auto" and not same:
        console.print(
            "[yellow]note:[/] the cache's teacher tokenizer differs from the student's, so the stored top-k "
            "cannot be used; training on the pseudo-label text (sequence-level KD). Cross-tokenizer "
            "losses come in a later dora release."
        )
        return "sequence"
    return "topk" if config.kd == "auto" else config.kd


def _gold_feature(tokenizer: Any, task: Task, ex: Example, config: TrainStudentConfig) -> dict[str, Any]:
    labels = target_ids(tokenizer, ex.target or "", config.max_target_length)
    return encode_pair(tokenizer, "seq2seq", task.source_prefix + ex.source, labels, config.max_source_length)


def _cache_features(cache: LabelCache, tokenizer: Any, task: Task, config: TrainStudentConfig, kd: str) -> list[dict[str, Any]]:
    k = cache.manifest.generation.k
    columns = ["source", "target"] + (["target_ids", "topk_ids", "topk_logprobs"] if kd == "topk" else [])
    features = []
    for table in cache.iter_tables(columns):
        cols = {c: table.column(c) for c in columns}
        sources, targets = cols["source"].to_pylist(), cols["target"].to_pylist()
        if kd == "topk":
            # flatten() honours slicing offsets; cumulative lengths index every row's tokens.
            ids_col = cols["target_ids"].combine_chunks()
            lengths = ids_col.value_lengths().to_numpy()
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            flat_ids = ids_col.flatten().to_numpy()
            topk_ids = cols["topk_ids"].combine_chunks().flatten().flatten().to_numpy().reshape(-1, k)
            topk_lp = cols["topk_logprobs"].combine_chunks().flatten().flatten().to_numpy(zero_copy_only=False).reshape(-1, k)
        for i, (source, target) in enumerate(zip(sources, targets)):
            if kd == "topk":
                lo = int(starts[i])
                n = min(int(lengths[i]), config.max_target_length)
                labels = flat_ids[lo : lo + n].tolist()
                feat = encode_pair(tokenizer, "seq2seq", task.source_prefix + source, labels, config.max_source_length)
                feat["topk_ids"] = topk_ids[lo : lo + n]
                feat["topk_logprobs"] = topk_lp[lo : lo + n]
            else:
                labels = target_ids(tokenizer, target, config.max_target_length)
                feat = encode_pair(tokenizer, "seq2seq", task.source_prefix + source, labels, config.max_source_length)
            features.append(feat)
    return features


def collate_kd(features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Batch gold and cache rows together; ``kd_mask`` marks positions with a stored top-k."""
    batch = collate(features, pad_id)
    width = batch["labels"].shape[1]
    k = next((f["topk_ids"].shape[1] for f in features if "topk_ids" in f), 1)
    topk_ids = np.zeros((len(features), width, k), dtype=np.int64)
    topk_lp = np.zeros((len(features), width, k), dtype=np.float32)
    kd_mask = torch.zeros((len(features), width), dtype=torch.bool)
    for i, f in enumerate(features):
        if "topk_ids" in f:
            n = len(f["topk_ids"])
            topk_ids[i, :n] = f["topk_ids"]
            topk_lp[i, :n] = f["topk_logprobs"]
            kd_mask[i, :n] = True
    batch["topk_ids"] = torch.from_numpy(topk_ids)
    batch["topk_logprobs"] = torch.from_numpy(topk_lp)
    batch["kd_mask"] = kd_mask
    return batch


def student_loss(model: Any, batch: dict[str, torch.Tensor], *, temperature: float, alpha: float) -> torch.Tensor:
    """Per label token: (1 - alpha) * top-k KL + alpha * CE where a top-k is stored, CE elsewhere;
    averaged over all label tokens of the batch."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).logits
    ce = token_cross_entropy(logits, batch["labels"])
    kd_mask = batch["kd_mask"]
    per_token = ce
    if kd_mask.any():
        kl = topk_kl_per_token(logits, batch["topk_ids"], batch["topk_logprobs"], temperature)
        per_token = torch.where(kd_mask, (1 - alpha) * kl + alpha * ce, ce)
    return per_token.sum() / (batch["labels"] != IGNORE).sum().clamp(min=1)
