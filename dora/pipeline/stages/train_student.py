"""Stage 2, ``dora train-student``: train a compact student from a label cache and/or gold: a
seq2seq or decoder-only model that generates its outputs, or, for closed-label tasks, an encoder
classifier (BERT, MiniLM, ...) with a head over the task's labels (``dora.pipeline.kd.classifier``).

Reads top to bottom: validate inputs, open the cache (cheap checks), load the student, choose
the distillation loss from the tokenizer fingerprints, build features, train with the explicit
loop (selecting the checkpoint on ``dev``), score the selected model once on ``test``, save it
as a plain Hugging Face checkpoint with metrics, predictions and a run record.

Gold only (``train`` without ``cache``) is the *annotate* baseline; cache only is *distill*;
both mixes them (gold rows get cross-entropy, cache rows the KD loss).

Example::

    from dora.pipeline.stages.train_student import TrainStudentConfig, train_student
    train_student(TrainStudentConfig(task="fever", student="models/t5-small-dir", cache="cache/fever",
                                     dev="dev.jsonl", test="test.jsonl", out="runs/distill"))
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from dora import __version__
from dora.cache import LabelCache, ShardEntry
from dora.errors import CacheError, ConfigError, DoraError
from dora.files import file_sha256, write_atomic
from dora.lock import Guarded
from dora.pipeline.costs.ledger import Devices, Ledger
from dora.pipeline.data.encoding import encode_pair, target_ids
from dora.pipeline.data.inputs import Example, read_examples
from dora.pipeline.engines.inference import dev_scores, predict
from dora.pipeline.kd.classifier import LabelHead, LabelObjective, collate_classifier, gold_features, scored_labels
from dora.pipeline.kd.objectives import OBJECTIVES, GoldOnly, Objective, choose, collate_kd, training_loss
from dora.pipeline.models.gguf import lineage as gguf_lineage
from dora.pipeline.models.kinds import ModelKind, kind_of
from dora.pipeline.models.loading import (
    classifier_labels,
    load_config,
    load_model,
    load_tokenizer,
    local,
    require_tokenizer_files,
    save_hf,
    vocab_size,
)
from dora.pipeline.stages.config import TrainStudentConfig
from dora.pipeline.tasks.catalog import Task, get_task
from dora.pipeline.tasks.metrics import TaskScorer, require_encoder
from dora.pipeline.train.batches import Blocks
from dora.pipeline.train.checkpoint import WRITE_ERRORS, failed_path, write_failure
from dora.pipeline.train.distributed import process_rank
from dora.pipeline.train.loop import steps_per_epoch, train_loop
from dora.pipeline.train.tracking import Tracker
from dora.progress import console, note, warn
from dora.rundir import RUN_RECORD, RunDir, RunWords, read_run

TEST_PREDICTIONS = "test_predictions.jsonl"


@dataclass(frozen=True, kw_only=True)
class TrainStudentResult:
    out: Path
    kd: str
    metrics: dict[str, Any]
    record: dict[str, Any]


def train_student(config: TrainStudentConfig) -> TrainStudentResult | None:
    """Run stage 2 and return the scores of the saved (selected) student (None on ranks other than
    0 of a multi-process launch). A rerun of a finished run with the same settings does nothing."""
    task = get_task(config.task, metric=config.metric, prefix=config.prefix)
    rank, world = process_rank()
    # 1. Inputs first: bad rows and unfit caches fail before any model loads.
    gold = read_examples(config.train, fields=config.fields, require_target=True) if config.train else []
    dev = read_examples(config.dev, fields=config.fields, require_target=True) if config.dev else []
    test = read_examples(config.test, fields=config.fields, require_target=True) if config.test else []
    _warn_about_splits(config)
    cache = LabelCache.open(config.cache, verify=config.verify) if config.cache else None
    if cache is not None:
        _check_cache_task(cache, task, config.cache)
    if (dev or test) and task.metric == "bert_ibleu":
        require_encoder(config.encoder)  # fail now, not at the first evaluation
    # The student's kind from its config alone; a classifier's labels and data are checked now.
    head = _label_head(config, task, cache, gold)

    run = RunDir(config.out, identity=_identity(config), markers=(RUN_MARKER, RUN_RECORD), field="identity",
                 words=STUDENT_WORDS, guarded=STUDENT_DIR)
    failed = True
    try:
        result = _claimed(config, task, gold, dev, test, cache, head, run, rank, world)
        failed = False
        return result
    finally:  # after a failure, what this run made and is worth nothing goes (rank 0 claimed it)
        run.release(failed=failed, keep=lambda out: (out / "checkpoints").exists() or (out / RUN_RECORD).exists())


def _claimed(config: TrainStudentConfig, task: Task, gold: list[Example], dev: list[Example], test: list[Example],
             cache: LabelCache | None, head: LabelHead | None, out: RunDir, rank: int,
             world: int) -> TrainStudentResult | None:
    # One writer per run directory, and only into a directory that is new or this run's; a
    # finished run with these settings is not trained again.
    if rank == 0:
        out.claim()
        out.write_marker({"stage": "train-student", "identity": out.identity})
    ledger = Ledger(config.out, "student_train")
    finished = _finished(out)
    if finished is not None and not config.resume:
        finished = None  # --no-resume: the same run, trained again from the start
    if finished is not None:
        if rank == 0:
            ledger.record_noop(Devices.here(processes=world), "already trained with these settings")
            finished.record["cost"] = ledger.summary()
            out.write_record(finished.record)
            shutil.rmtree(config.out / "checkpoints", ignore_errors=True)  # a crash may have left them
            console.print(f"student: already trained with these settings in {config.out}; nothing to do")
        return finished if rank == 0 else None
    if rank == 0:
        ledger.compact()
    with ledger.invocation(Devices.here(processes=world)) if rank == 0 else contextlib.nullcontext() as run:
        return _train(config, task, gold, dev, test, cache, head, out, ledger, run, rank, world)


def _train(config: TrainStudentConfig, task: Task, gold: list[Example], dev: list[Example], test: list[Example],
           cache: LabelCache | None, head: LabelHead | None, out: RunDir, ledger: Ledger, run: Any, rank: int,
           world: int) -> TrainStudentResult | None:
    # 2. The student, and which loss the cache allows.
    tokenizer = load_tokenizer(config.student, revision=config.revision, trust_remote_code=config.trust_remote_code)
    model, kind = load_model(config.student, revision=config.revision, trust_remote_code=config.trust_remote_code,
                             labels=head.labels if head else None)
    objective = _objective(config, cache, tokenizer, model, head)

    # 3. Features: gold rows in memory, cache rows featurised a shard at a time as training reaches them.
    data = _training_data(config, task, tokenizer, gold, cache, objective, head)
    console.print(f"student: {len(data)} training rows ({len(gold)} gold, "
                  f"{cache.num_rows if cache else 0} from the cache) for a {kind} student; {objective.describe()}")

    # 4. Train, scoring dev with the task metric (both definitions) and keeping the best model.
    settings = config.loop_settings(eval_every=config.eval_every, save_every=config.save_every, resume=config.resume,
                                    patience=config.patience)
    if settings.eval_every is None:  # default: once per epoch
        settings = replace(settings, eval_every=steps_per_epoch(len(data), settings, world))
    dev_scorer = TaskScorer(task, [e.target or "" for e in dev], sources=[e.source for e in dev],
                            encoder=config.encoder) if dev and rank == 0 else None
    evaluate = _evaluator(config, task, tokenizer, kind, dev, dev_scorer) if dev_scorer is not None else None
    primary = f"{config.metric_mode}_{task.primary}"
    pad_id = tokenizer.pad_token_id
    if isinstance(objective, LabelObjective):
        collate, loss_fn = (lambda f: collate_classifier(f, pad_id)), objective.loss
    else:
        collate, loss_fn = (lambda f: collate_kd(f, pad_id)), (lambda m, b: training_loss(objective, m, b, kind))
    result = train_loop(
        model=model, features=data, collate=collate, loss_fn=loss_fn,
        settings=settings, out_dir=config.out, save_model=lambda m, p, _: save_hf(m, tokenizer, p),
        evaluate=evaluate if rank == 0 else (lambda m: {}) if dev else None, primary=primary,
        description="train student", ledger=run,
        tracker=Tracker(config.report_to, config.out, f"student-{config.out.name}") if rank == 0 else None,
    )
    if rank != 0:  # data-parallel: rank 0 saves, tests and records
        return None
    described = objective.record()
    if described["alignment"]:
        console.print(f"student: alignment {described['alignment']}")

    # 5. The selected model (the best on dev; the last without dev) becomes the output directory,
    #    and is scored once on test.
    _select(config.out, model, tokenizer)
    tested = _score_test(config, task, tokenizer, kind, test) if test else None

    metrics = _metrics(config, task, result, dev_scorer, tested)
    record = _record(config, out.identity, described, gold, cache, result)
    out.write_metrics(metrics)
    run.close("done")  # the record's cost includes this invocation's final entry
    record["cost"] = ledger.summary()
    out.write_record(record)  # marks the run finished
    shutil.rmtree(config.out / "checkpoints", ignore_errors=True)  # finished: resume state no longer needed
    reported = metrics["eval"]
    console.print(f"student: saved to {config.out}" + (f"; {metrics['reported_on']['split']} {task.primary} "
                                                      f"({config.metric_mode}) = {reported[task.primary]:.4f}"
                                                      if reported else ""))
    return TrainStudentResult(out=config.out, kd=objective.name, metrics=metrics, record=record)


def _record(config: TrainStudentConfig, identity: str, described: dict[str, Any], gold: list[Example],
            cache: LabelCache | None, result: Any) -> dict[str, Any]:
    """run.json: what was trained, on what, with which loss and settings (the cost is added last)."""
    return {
        "dora_version": __version__, "stage": "train-student", "identity": identity,
        "strategy": _strategy(gold, cache), **described,
        "student": config.student, **gguf_lineage(config.student, role="student"),
        "cache": str(config.cache) if config.cache else None,
        "cache_format": cache.manifest.format_version if cache else None,
        "cache_verified": bool(cache and config.verify),
        "cache_teacher": asdict(cache.manifest.teacher) if cache else None,
        "gold_examples": len(gold), "cache_rows": cache.num_rows if cache else 0,
        "steps": result.steps, "epochs": round(result.epochs, 4), "stopped_early": result.stopped_early,
        "examples_seen": result.examples_seen, "tokens_seen": result.tokens_seen,
        "train_seconds": round(result.seconds, 3),
        "steps_per_second": round(result.steps / max(result.seconds, 1e-9), 4),
        "upstream_costs": cache.manifest.costs if cache else {},
        "preset": config.preset, "preset_values": config.preset_values,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
    }


def _training_data(config: TrainStudentConfig, task: Task, tokenizer: Any, gold: list[Example],
                   cache: LabelCache | None, objective: Objective | LabelObjective, head: LabelHead | None) -> Blocks:
    """Gold rows carry labels (in memory: a labeled set is small); cache rows the teacher's signal
    for the objective, featurised a shard at a time as training reaches them, so memory does not
    grow with the cache."""
    gold_rows = (gold_features(tokenizer, gold, head, prefix=task.source_prefix,
                               max_source_length=config.max_source_length, path=config.train) if head is not None
                 else [_gold_feature(tokenizer, task, ex, config) for ex in gold])
    block = cache.manifest.shard_size if cache else 4096
    sizes = [min(block, len(gold_rows) - i) for i in range(0, len(gold_rows), block)]
    loaders = [lambda i=i: gold_rows[i : i + block] for i in range(0, len(gold_rows), block)]
    if cache is not None:
        def load_shard(entry: ShardEntry) -> list[dict[str, Any]]:
            return objective.featurise(cache.read_shard(entry, objective.columns()), tokenizer,
                                       prefix=task.source_prefix, max_source_length=config.max_source_length,
                                       max_target_length=config.max_target_length)

        sizes += [entry.rows for entry in cache.manifest.shards]
        loaders += [lambda e=entry: load_shard(e) for entry in cache.manifest.shards]
    return Blocks(sizes, lambda b: loaders[b](), window=config.shuffle_window)


def _evaluator(config: TrainStudentConfig, task: Task, tokenizer: Any, kind: ModelKind, dev: list[Example],
               scorer: TaskScorer) -> Any:
    """Scores of a model on dev, both metric definitions, flat (what the loop logs and selects on)."""
    sources = [e.source for e in dev]

    def evaluate(m: Any) -> dict[str, float]:
        return dev_scores(m, tokenizer, kind, task, sources, scorer, batch_size=config.eval_batch_size,
                          max_source_length=config.max_source_length, max_new_tokens=config.max_new_tokens)

    return evaluate


def _select(out: Path, model: Any, tokenizer: Any) -> None:
    """Move the selected checkpoint (``out/best``; the final model when there is none) to ``out``."""
    best = out / "best"
    if not best.is_dir():
        try:
            save_hf(model, tokenizer, best)
        except WRITE_ERRORS as e:  # a full disk, most often: one line, the checkpoint stays
            raise write_failure(failed_path(e, best), e, "the model", None) from None
    for item in best.iterdir():
        target = out / item.name
        if target.is_dir():
            shutil.rmtree(target)
        shutil.move(str(item), str(target))
    best.rmdir()


def _unflat(flat: dict[str, float] | None) -> dict[str, dict[str, float]] | None:
    if flat is None:
        return None
    out: dict[str, dict[str, float]] = {}
    for key, value in flat.items():
        mode, _, name = key.partition("_")
        out.setdefault(mode, {})[name] = value
    return out


def _score_test(config: TrainStudentConfig, task: Task, tokenizer: Any, kind: ModelKind,
                test: list[Example]) -> dict[str, Any]:
    """Score the saved (selected) model once on the test file; keep its predictions beside it."""
    model, _ = load_model(str(config.out))
    from dora.pipeline.engines.generation import pick_device

    model.to(pick_device())
    preds = predict(model, tokenizer, kind, task, [e.source for e in test], batch_size=config.eval_batch_size,
                    max_source_length=config.max_source_length, max_new_tokens=config.max_new_tokens)
    scorer = TaskScorer(task, [e.target or "" for e in test], sources=[e.source for e in test], encoder=config.encoder)
    rows = [{"id": e.id, "source": e.source, "prediction": p, "target": e.target} for e, p in zip(test, preds)]
    write_atomic(config.out / TEST_PREDICTIONS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    return {"scores": scorer(preds), "scorer": scorer.describe()}


def _metrics(config: TrainStudentConfig, task: Task, result: Any, dev_scorer: TaskScorer | None,
             tested: dict[str, Any] | None) -> dict[str, Any]:
    dev_scores = _unflat(result.best)
    test_scores = tested["scores"] if tested else None
    reported, split = (test_scores, "test") if test_scores else (dev_scores, "dev") if dev_scores else (None, None)
    return {
        "task": task.name, "metric": task.metric, "primary": task.primary, "metric_mode": config.metric_mode,
        "selected_on": {"file": str(config.dev), "mode": config.metric_mode, "key": task.primary,
                        "step": result.best_step} if config.dev else None,
        "reported_on": {"file": str(config.test if split == "test" else config.dev), "split": split,
                        "model": "the checkpoint selected on dev" if config.dev else "the final model"}
        if split else None,
        "dev": dev_scores, "test": test_scores,
        # The reported scores in the selecting mode (test when given): what `dora report` plots.
        "eval": reported[config.metric_mode] if reported else None,
        "scorer": (tested or {}).get("scorer") or (dev_scorer.describe() if dev_scorer else {}),
        "best_step": result.best_step, "steps": result.steps, "stopped_early": result.stopped_early,
        "history": result.history,
        "test_predictions": TEST_PREDICTIONS if tested else None,
    }


def _warn_about_splits(config: TrainStudentConfig) -> None:
    if config.eval is not None:
        note("--eval is deprecated: it selects the checkpoint, so it is now --dev; pass "
                      "--test FILE for the score you report")
    if config.dev is not None and config.test is not None:
        same = config.dev.resolve() == config.test.resolve() or file_sha256(config.dev) == file_sha256(config.test)
        if same:
            warn(f"--dev and --test are the same data ({config.test}): the checkpoint is "
                          "picked on the file it is scored on, so the reported score is optimistic")
    elif config.dev is not None:
        note("no --test: the reported score is the --dev score that picked the checkpoint "
                      "(optimistic); pass --test FILE for an unbiased one")


def _identity(config: TrainStudentConfig) -> str:
    """What makes a finished run the same run (everything but resume and reporting settings)."""
    skip = {"resume", "report_to", "eval", "verify"}
    fields = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items() if k not in skip}
    if fields.get("labels") is None:  # absent, not null: runs from before --labels keep their identity
        fields.pop("labels", None)
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


RUN_MARKER = ".dora-run.json"  # written first: this directory is a dora student run, and which one
STUDENT_DIR = Guarded(directory="the run directory", create_fix="choose a writable --out",
                      busy="is using this run directory", wait="wait for it to finish, or choose another --out")
STUDENT_WORDS = RunWords(
    not_dir="{dir}: is not a directory; choose a new or empty --out",
    foreign="{dir}: is not empty and is not a dora student run ({name} is there); choose a new or empty --out",
    other="{dir}: holds {state} student run with other settings or data; use another --out, or delete it to train "
          "again",
    damaged="not a run this dora can continue: choose a new --out")
"""A student run's directory is its own when its marker, or the run.json of a finished run, names
the same identity; anything else is the user's."""


def _finished(out: RunDir) -> TrainStudentResult | None:
    """The finished run in ``out`` when it was made with the same settings (refuse one made with others);
    None when there is none, or its records are damaged (it is trained again)."""
    if not (out.path / RUN_RECORD).is_file():
        return None
    fix = "dora writes this file"
    try:
        record, metrics = read_run(out.path, fix=fix)
    except DoraError:
        return None
    if record.get("identity") != out.identity:
        raise out.refusal()
    return TrainStudentResult(out=out.path, kd=record.get("kd_loss", "?"), metrics=metrics, record=record)


def _strategy(gold: list[Example], cache: LabelCache | None) -> str:
    return "mixed" if gold and cache else ("distill" if cache else "annotate")


def _check_cache_task(cache: LabelCache, task: Task, path: Path) -> None:
    made_for = cache.manifest.task.get("name")
    if made_for != task.name:
        raise CacheError(f"{path}: the cache was labeled for task {made_for!r}, not {task.name!r}; "
                         f"pass --task {made_for} or a cache made for {task.name}")
    if cache.manifest.task.get("source_prefix") != task.source_prefix:
        raise CacheError(f"{path}: the cache used source prefix {cache.manifest.task.get('source_prefix')!r}, "
                         f"this run {task.source_prefix!r}; pass --prefix to match")


def _objective(config: TrainStudentConfig, cache: LabelCache | None, tokenizer: Any, model: Any,
               head: LabelHead | None) -> Objective | LabelObjective:
    """The distillation objective the cache allows (``--kd-loss``; auto from the tokenizers; a
    classifier student learns the teacher's label distribution)."""
    if head is not None:
        return LabelObjective.build(head, cache, temperature=config.temperature, alpha=config.alpha)
    if cache is None:
        return GoldOnly(temperature=config.temperature, alpha=config.alpha)
    chosen = OBJECTIVES[choose(config.kd_loss, cache, tokenizer, vocab_size(model))]
    teacher_tokenizer = cache.tokenizer() if chosen.cross_tokenizer else None  # checked, loaded without code
    return chosen.build(cache=cache, student_tokenizer=tokenizer, teacher_tokenizer=teacher_tokenizer,
                        temperature=config.temperature, alpha=config.alpha, out_dir=config.out,
                        max_target_length=config.max_target_length)


def _label_head(config: TrainStudentConfig, task: Task, cache: LabelCache | None,
                gold: list[Example]) -> LabelHead | None:
    """For a classifier student (an encoder, from its config alone): the labels of its head
    (``--labels``, else the task's, else those the cache scored), with the settings and the gold
    file checked against them; None for a student that generates."""
    student_config = load_config(config.student, revision=config.revision, trust_remote_code=config.trust_remote_code)
    require_tokenizer_files(local(config.student))  # before anything is written
    if kind_of(student_config) != "classifier":
        if config.labels is not None:
            warn(f"--labels: {config.student} generates its outputs, so --labels does not change what it learns; "
                 "it names the head of an encoder (classifier) student")
        return None
    scored = scored_labels(cache) if cache is not None else ()
    labels = config.labels or task.labels or classifier_labels(student_config) or scored or None
    if labels is None:
        raise ConfigError(f"{config.student}: an encoder student is a classifier over a closed label set, and task "
                          f"{task.name!r} has none; pass --labels A,B,... (every label your data uses), or train a "
                          "seq2seq or decoder-only student for free-form outputs")
    if config.kd_loss not in ("auto", "labels"):
        raise ConfigError(f"--kd-loss {config.kd_loss}: an encoder student has no tokens to distil; it learns the "
                          "teacher's distribution over the labels: use --kd-loss labels (or auto)")
    head = LabelHead(tuple(labels))
    if cache is not None:
        head.order_of(scored, str(config.cache))  # the same labels, or a message that says how to match them
    for ex in gold:  # before any model loads
        head.require(ex, config.train)
    return head


def _gold_feature(tokenizer: Any, task: Task, ex: Example, config: TrainStudentConfig) -> dict[str, Any]:
    labels = target_ids(tokenizer, ex.target or "", config.max_target_length)
    return encode_pair(tokenizer, "seq2seq", task.source_prefix + ex.source, labels, config.max_source_length)
