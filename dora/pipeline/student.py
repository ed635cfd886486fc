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
from typing import Any

from dora import __version__
from dora.cache import LabelCache, ShardEntry, tokenizer_fingerprint
from dora.errors import CacheError, ConfigError, ModelError
from dora.pipeline.align import cached_vocab_map
from dora.pipeline.batches import Blocks
from dora.pipeline.config import Optimisation, TaskInputs, as_paths, positive_ints
from dora.pipeline.costs import Stopwatch
from dora.pipeline.data import Example, read_examples
from dora.pipeline.distill import (
    AlignStats,
    KdLoss,
    TokenizerPair,
    cache_columns,
    collate_kd,
    student_loss,
    table_features,
)
from dora.pipeline.distributed import process_rank
from dora.pipeline.encoding import encode_pair, target_ids
from dora.pipeline.evaluation import predict
from dora.pipeline.metrics import require_encoder, score
from dora.pipeline.models import load_model, load_tokenizer, save_hf, vocab_size
from dora.pipeline.progress import console
from dora.pipeline.tasks import Task, get_task
from dora.pipeline.tracking import Tracker
from dora.pipeline.training import steps_per_epoch, train_loop


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
    kd_loss: KdLoss = "auto"
    """Distillation loss: topk (same tokenizer), aligned or uld (another tokenizer), labels
    (closed-label tasks), sequence (pseudo-label text only), or auto (topk when the tokenizer
    fingerprints match, else aligned). See ``dora.pipeline.distill``."""
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
    shuffle_window: int = 4
    """Cache shards held (and shuffled together) at a time: memory is this many shards, not the cache."""

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
        if self.kd_loss not in ("auto", "topk", "aligned", "uld", "labels", "sequence"):
            raise ConfigError(f"--kd-loss must be auto, topk, aligned, uld, labels or sequence, got {self.kd_loss!r}")
        positive_ints(self, "eval_batch_size", "save_every", "shuffle_window")
        if self.eval_every is not None:
            positive_ints(self, "eval_every")


@dataclass(frozen=True, kw_only=True)
class TrainStudentResult:
    out: Path
    kd: str
    metrics: dict[str, Any]
    record: dict[str, Any]


def train_student(config: TrainStudentConfig) -> TrainStudentResult | None:
    """Run stage 2 and return the scores of the saved (best) student (None on ranks other than 0
    of a multi-process launch)."""
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
    kd = _choose_loss(config, cache, tokenizer, model)

    # 3. Features: gold rows carry labels (in memory: a labeled set is small); cache rows the
    #    teacher's signal for the chosen loss, featurised a shard at a time as training reaches
    #    them, so memory does not grow with the cache.
    gold_features = [_gold_feature(tokenizer, task, ex, config) for ex in gold]
    stats = AlignStats()
    verbalisers = None
    block = cache.manifest.shard_size if cache else 4096
    sizes = [min(block, len(gold_features) - i) for i in range(0, len(gold_features), block)]
    loaders = [lambda i=i: gold_features[i : i + block] for i in range(0, len(gold_features), block)]
    if cache is not None:
        vmap = None
        pair = TokenizerPair.of(cache, tokenizer) if kd in ("aligned", "uld") else None
        if kd == "aligned" and pair is not None:
            vmap, map_path = cached_vocab_map(
                config.out, cache.manifest.teacher.tokenizer_fingerprint, tokenizer_fingerprint(tokenizer),
                pair.teacher_surfaces, pair.student_surfaces, pair.teacher_eos, pair.student_eos)
            stats.vocab_coverage = vmap.coverage()
            stats.extra["vocab_map"] = map_path.name
        if kd == "labels":
            verbalisers = [target_ids(tokenizer, label, config.max_target_length)
                           for label in cache.manifest.generation.label_set or []]

        def load_shard(entry: ShardEntry) -> list[dict[str, Any]]:
            return table_features(cache.read_shard(entry, cache_columns(kd)), cache.manifest.generation.k, tokenizer,
                                  task.source_prefix, kd, max_source_length=config.max_source_length,
                                  max_target_length=config.max_target_length, vmap=vmap, pair=pair, stats=stats)

        sizes += [entry.rows for entry in cache.manifest.shards]
        loaders += [lambda e=entry: load_shard(e) for entry in cache.manifest.shards]
    data = Blocks(sizes, lambda b: loaders[b](), window=config.shuffle_window)
    console.print(f"student: {len(data)} training rows ({len(gold)} gold, "
                  f"{cache.num_rows if cache else 0} from the cache); {_describe(kd, config)}")

    # 4. Train, evaluating with the task metric and keeping the best model.
    config.out.mkdir(parents=True, exist_ok=True)
    settings = config.loop_settings(eval_every=config.eval_every, save_every=config.save_every, resume=config.resume)
    rank, world = process_rank()
    if settings.eval_every is None:  # default: once per epoch
        settings = replace(settings, eval_every=steps_per_epoch(len(data), settings, world))
    evaluate = None
    if evals:
        def evaluate(m: Any) -> dict[str, float]:
            preds = predict(m, tokenizer, "seq2seq", task, [e.source for e in evals],
                            batch_size=config.eval_batch_size, max_source_length=config.max_source_length,
                            max_new_tokens=config.max_new_tokens)
            return score(task, preds, [e.target or "" for e in evals], sources=[e.source for e in evals],
                         encoder=config.encoder)

    result = train_loop(
        model=model, features=data, collate=lambda f: collate_kd(f, tokenizer.pad_token_id),
        loss_fn=lambda m, b: student_loss(m, b, mode=kd, temperature=config.temperature, alpha=config.alpha,
                                          verbalisers=verbalisers),
        settings=settings, out_dir=config.out, save_model=lambda m, p, _: save_hf(m, tokenizer, p),
        evaluate=evaluate, primary=task.primary, description="train student",
        tracker=Tracker(config.report_to, config.out, f"student-{config.out.name}") if rank == 0 else None,
    )
    if rank != 0:  # data-parallel: rank 0 saves and records
        return None
    alignment = stats.to_dict() if kd in ("aligned", "uld") else None
    if alignment:
        console.print(f"student: alignment {alignment}")

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
        "dora_version": __version__, "stage": "train-student", "strategy": _strategy(gold, cache), "kd_loss": kd,
        "alignment": alignment,
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
    t, a = config.temperature, config.alpha
    return {
        "topk": f"loss: top-k KL at T={t} (alpha={a} on the pseudo-label)",
        "aligned": f"loss: aligned top-k KL at T={t} across tokenizers (alpha={a})",
        "uld": f"loss: ULD on aligned positions at T={t} (alpha={a})",
        "labels": f"loss: label-set KL at T={t} over the cache's labels (alpha={a} on the pseudo-label)",
        "sequence": "loss: cross-entropy on the pseudo-label text (sequence-level KD)",
        "none": "loss: cross-entropy on gold labels",
    }[kd]


def _check_cache_task(cache: LabelCache, task: Task, path: Path) -> None:
    made_for = cache.manifest.task.get("name")
    if made_for != task.name:
        raise CacheError(f"{path}: the cache was labeled for task {made_for!r}, not {task.name!r}; "
                         f"pass --task {made_for} or a cache made for {task.name}")
    if cache.manifest.task.get("source_prefix") != task.source_prefix:
        raise CacheError(f"{path}: the cache used source prefix {cache.manifest.task.get('source_prefix')!r}, "
                         f"this run {task.source_prefix!r}; pass --prefix to match")


def _choose_loss(config: TrainStudentConfig, cache: LabelCache | None, tokenizer: Any, model: Any) -> str:
    if cache is None:
        return "none"
    teacher = cache.manifest.teacher
    same = teacher.tokenizer_fingerprint == tokenizer_fingerprint(tokenizer) and teacher.vocab_size <= vocab_size(model)
    if config.kd_loss == "topk" and not same:
        raise CacheError(
            f"{config.cache}: --kd-loss topk needs the teacher's tokenizer, but the cache's tokenizer fingerprint "
            f"{teacher.tokenizer_fingerprint[:12]}... differs from the student's {tokenizer_fingerprint(tokenizer)[:12]}... "
            "(or its vocabulary is larger); use --kd-loss aligned, uld, labels or sequence"
        )
    if config.kd_loss == "labels" and not cache.manifest.generation.label_set:
        raise CacheError(f"{config.cache}: --kd-loss labels needs the teacher's label_logprobs, which this cache "
                         "lacks; relabel with a closed-label task or --labels A,B,...")
    if config.kd_loss != "auto":
        return "topk" if config.kd_loss == "aligned" and same else config.kd_loss
    if same:
        return "topk"
    console.print("[yellow]note:[/] the cache's teacher tokenizer differs from the student's: distilling through "
                  "the aligned top-k KL (--kd-loss aligned); --kd-loss uld, labels or sequence are the alternatives")
    return "aligned"


def _gold_feature(tokenizer: Any, task: Task, ex: Example, config: TrainStudentConfig) -> dict[str, Any]:
    labels = target_ids(tokenizer, ex.target or "", config.max_target_length)
    return encode_pair(tokenizer, "seq2seq", task.source_prefix + ex.source, labels, config.max_source_length)
