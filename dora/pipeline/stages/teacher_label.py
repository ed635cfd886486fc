"""Stage 1, ``dora teacher-label``: fine-tune the teacher, then label the pool into a cache.

Reads top to bottom: validate the inputs, fine-tune (or reuse) the teacher, open the cache
(continuing a matching one), label every missing shard, mark the cache complete.

Example (tiny local models, CPU)::

    from dora.pipeline.stages.teacher_label import TeacherLabelConfig, teacher_label
    teacher_label(TeacherLabelConfig(task="fever", teacher="models/t5-base-dir", train="gold.jsonl",
                                     pool="pool.jsonl", out="cache/fever", epochs=3))
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dora import __version__
from dora.cache import CacheWriter, GenerationInfo, Manifest, PoolInfo, TeacherInfo, shard_rows, tokenizer_fingerprint
from dora.cache.info import OFF_LABEL_WARNING, off_labels
from dora.cache.manifest import MANIFEST, write_manifest
from dora.cache.reader import LabelCache
from dora.cache.schema import id_type_for
from dora.cache.writer import cache_lock
from dora.errors import ConfigError, Interrupted
from dora.lock import DirectoryLock
from dora.pipeline.costs.ledger import Devices, Ledger
from dora.pipeline.data.inputs import Example, fingerprint, read_examples
from dora.pipeline.data.pool import Pool
from dora.pipeline.engines.labeling import LabelSpec, ShardLabeler, pool_prompts
from dora.pipeline.engines.ray_label import RayLabeling, require_ray
from dora.pipeline.engines.registry import kd_temperatures_for, resolve_engine, settle_engine
from dora.pipeline.engines.settings import PRECISION_ROWS, Engine, EngineSettings, PrecisionCheck
from dora.pipeline.models.gguf import lineage as gguf_lineage
from dora.pipeline.models.kinds import ModelKind, architecture_of, kind_of
from dora.pipeline.models.loading import (
    check_dtype,
    check_top_k,
    free_accelerator_memory,
    load_config,
    load_tokenizer,
    weights_sha256,
)
from dora.pipeline.stages.config import TeacherLabelConfig
from dora.pipeline.tasks.catalog import Task, get_task
from dora.pipeline.train.distributed import end_distributed, process_rank
from dora.pipeline.train.finetune import finetune_teacher
from dora.pipeline.train.loop import EVALUATIONS_PER_RUN, steps_per_epoch, total_steps
from dora.progress import console, progress_bar
from dora.progress import note as note_


@dataclass(frozen=True, kw_only=True)
class TeacherLabelResult:
    cache: Path
    teacher: str
    manifest: Manifest
    costs: dict[str, Any]


def teacher_label(config: TeacherLabelConfig) -> TeacherLabelResult | None:
    """Run stage 1. Safe to rerun: a fine-tuned teacher and complete shards are reused.

    Under ``torchrun``/``accelerate launch`` with ``fsdp``, every rank fine-tunes its shard of
    the teacher; rank 0 then labels alone and the other ranks return None.
    """
    task = get_task(config.task, metric=config.metric, prefix=config.prefix)
    # 1. Read every input before any expensive work, so a bad row fails in seconds. The pool is
    #    scanned (validated, fingerprinted), never held whole.
    train = read_examples(config.train, fields=config.fields, require_target=True) if config.finetune else []
    dev = read_examples(config.dev, fields=config.fields, require_target=True) if config.dev else []
    pool = Pool.scan(config.pool, fields=config.fields)
    CacheWriter.preflight(config.out, pool.fingerprint)
    base = load_config(config.teacher, revision=config.revision, trust_remote_code=config.trust_remote_code)
    check_top_k(config.top_k, getattr(base, "vocab_size", config.top_k), config.teacher)
    check_dtype(config.dtype, base, config.teacher)
    kind = kind_of(base)  # fine-tuning changes weights, not the architecture or vocabulary
    engine_name, why = resolve_engine(config.engine, kind, architecture_of(base))  # fails now, not after fine-tuning
    settings, precision = settle_engine(engine_name, config.engine, EngineSettings.of(config))
    temperatures, note = kd_temperatures_for(engine_name, config.kd_temperatures)
    if config.ray is not None:
        require_ray()
    rank, world = process_rank()
    plan = _Plan(task=task, train=train, dev=dev, pool=pool, base=base, kind=kind, engine=engine_name, why=why,
                 settings=dataclasses.replace(settings, kd_temperatures=temperatures), precision=precision,
                 note=note, rank=rank, world=world)
    created = not config.out.exists()
    try:
        return _label(config, plan)
    except BaseException:
        if rank == 0 and created and config.out.is_dir() and not (config.out / MANIFEST).exists():
            shutil.rmtree(config.out, ignore_errors=True)  # made by this run, and nothing was labeled into it
        raise


@dataclass(frozen=True, kw_only=True)
class _Plan:
    """What step 1 read and decided, before any expensive work."""

    task: Task
    train: list[Example]
    dev: list[Example]
    pool: Pool
    base: Any
    """The teacher's model config (architecture, vocabulary)."""
    kind: ModelKind
    engine: str
    why: str
    """Why this engine (printed)."""
    settings: EngineSettings
    """What the engine generates with, its precision settled (``settle_engine``)."""
    precision: str
    """What the teacher computes in while labeling, as the engine settled it (the manifest's dtype)."""
    note: str | None
    rank: int
    world: int


def _label(config: TeacherLabelConfig, plan: _Plan) -> TeacherLabelResult | None:
    with contextlib.ExitStack() as held:
        # One writer per cache: a second run on the same --out stops here, before any training.
        lock = held.enter_context(cache_lock(config.out)) if plan.rank == 0 else None

        # 2. Fine-tune the teacher (or reuse one fine-tuned with the same data and settings).
        model, teacher_path, revision, costs = _finetune(config, plan)
        if plan.world > 1:  # the sharded fine-tune is over: rank 0 labels, spreading the teacher over the GPUs
            model = None
            end_distributed()
            if plan.rank != 0:
                return None

        # 3. A cache that is already complete costs nothing more: no engine starts, the ledger gets
        #    an entry of zero work.
        tokenizer = load_tokenizer(teacher_path, revision=revision, trust_remote_code=config.trust_remote_code)
        label_set = list(config.labels or plan.task.labels or []) if config.score_labels else []
        manifest = _new_manifest(config, plan, teacher_path, tokenizer, label_set or None)
        ledger = Ledger(config.out, "labeling")
        done = CacheWriter.complete(config.out, manifest)
        if done is not None:
            if plan.dev:
                note_(f"the cache is complete: --dev is not scored again (see `dora cache info {config.out}`)")
            return _already_complete(config, done, ledger, costs, teacher_path)

        # 4. Start the labeling engine (here, or one per Ray worker) and open (or continue) the cache.
        #    Labeling time starts now: starting an engine is part of what labeling costs.
        ledger.compact()
        with ledger.invocation(Devices.here()) as run:
            spec = LabelSpec(teacher_path=teacher_path, revision=revision, trust_remote_code=config.trust_remote_code,
                             kind=plan.kind, engine=plan.engine, settings=plan.settings,
                             source_prefix=plan.task.source_prefix, max_target_length=config.max_target_length,
                             id_type=manifest.generation.id_type, label_set=tuple(label_set))  # type: ignore[arg-type]
            console.print(f"labeling engine: {plan.engine} ({plan.why})" + (f" on Ray ({config.ray})" if config.ray else ""))
            if plan.note:
                note_(plan.note)
            cluster = None
            if config.ray is not None:
                model = None  # the workers load the saved teacher; free this process's memory for them
                free_accelerator_memory()
                cluster = RayLabeling.start(config.ray, spec, workers=config.ray_workers)
            try:
                labeler = None if cluster is not None else spec.labeler(tokenizer, model=model)
                if model is not None:  # the engine holds what it labels with; a copy of its own leaves this one unused
                    model = None
                    free_accelerator_memory()
                manifest = _described(config, plan, manifest, run, tokenizer, cluster, labeler)
                teacher_dev = _score_on_dev(config, plan, labeler)
                writer = _open_cache(config, ledger, run, manifest, costs, tokenizer, lock)
                # 5. Label shard by shard: each shard is written and listed before it counts.
                _label_shards(config, plan.pool, writer, run, cluster, labeler)
            finally:
                if cluster is not None:
                    cluster.shutdown()

        # 6. Mark the cache complete, with what every stage cost (all invocations, from the ledgers).
        labeling = ledger.summary((writer.manifest.costs.get("labeling") or {}).get("entries"))
        stats = {"tokens": sum(e.tokens for e in writer.manifest.shards), "seconds": labeling["wall_seconds"],
                 "device": labeling["device"], "device_count": labeling["device_count"],
                 "device_hours": labeling["device_hours"]}
        off = off_labels(LabelCache.open(config.out, require_complete=False, verify=False))  # this run's own shards
        if off is not None:
            stats["off_label"] = {k: off[k] for k in ("rows", "of", "share", "most_common")}
        if teacher_dev is not None:
            stats["teacher_dev"] = teacher_dev
        final = writer.finish(stats=stats)
        console.print(f"cache: {final.rows} rows, {stats['tokens']} tokens in {len(final.shards)} shard(s) -> {config.out}")
        if off is not None and off["share"] > OFF_LABEL_WARNING:
            seen = ", ".join(repr(x["label"]) for x in off["most_common"])
            note_(f"{off['share']:.1%} of the pseudo-labels ({off['rows']} of {off['of']}) are none of the task's labels "
                  f"({', '.join(off['labels'])}), most often {seen}: a student learns them too. Fine-tune the teacher "
                  "longer, or drop them with `dora cache filter`")
        return TeacherLabelResult(cache=config.out, teacher=teacher_path, manifest=final, costs=final.costs)


def _score_on_dev(config: TeacherLabelConfig, plan: _Plan, labeler: Any) -> dict[str, Any] | None:
    """The teacher's scores on --dev (both metric definitions), generated by the engine that labels
    the pool, with its settings (greedy unless --temperature): the score of the pseudo-labels' maker
    as it makes them, at no second copy of the model. Under Ray the engines live in the workers: not scored."""
    if not plan.dev:
        return None
    if labeler is None:
        note_(f"--dev is not scored under --ray (the teacher runs in the workers); score it with "
              f"`dora evaluate --model {config.teacher_out or str(config.out) + '.teacher'} --data {config.dev}`")
        return None
    from dora.pipeline.engines.generation import decode
    from dora.pipeline.engines.labeling import pool_prompts
    from dora.pipeline.tasks.metrics import TaskScorer

    start = time.perf_counter()
    with progress_bar() as bar:
        job = bar.add_task("score teacher on dev", total=len(plan.dev), info="", unit="row")
        prompts = pool_prompts(labeler.tokenizer, plan.dev, plan.task.source_prefix, config.max_source_length)
        generated = labeler.engine.label(prompts, on_batch=lambda n: bar.advance(job, n))
    preds = [decode(labeler.tokenizer, g.ids).strip() for g in generated]
    scores = TaskScorer(plan.task, [e.target or "" for e in plan.dev], sources=[e.source for e in plan.dev])(preds)
    primary = plan.task.primary
    console.print(f"teacher: dev {primary} (strict) = {scores['strict'][primary]:.4f} on {len(plan.dev)} rows "
                  f"of {config.dev}")
    return {"file": str(config.dev), "rows": len(plan.dev), "primary": primary, "scores": scores,
            "engine": plan.engine, "seconds": round(time.perf_counter() - start, 3)}


def _finetune(config: TeacherLabelConfig, plan: _Plan) -> tuple[Any, str, str | None, dict[str, Any]]:
    """(the fine-tuned model or None, the teacher to label with, its revision, the fine-tuning cost)."""
    if not config.finetune:
        return None, config.teacher, config.revision, {}
    tokenizer = load_tokenizer(config.teacher, revision=config.revision, trust_remote_code=config.trust_remote_code)
    settings = config.loop_settings(eval_every=None, save_every=config.save_every)
    selecting = _selecting(config, plan)
    if selecting:
        settings = dataclasses.replace(settings, eval_every=config.eval_every or _default_eval_every(plan, settings),
                                       patience=config.patience)
    primary = f"strict_{plan.task.primary}"
    model, record = finetune_teacher(
        base=config.teacher, revision=config.revision, trust_remote_code=config.trust_remote_code,
        tokenizer=tokenizer, examples=plan.train, prefix=plan.task.source_prefix,
        max_source_length=config.max_source_length, max_target_length=config.max_target_length,
        settings=settings, lora=config.lora_settings(),
        out_dir=config.teacher_dir, fsdp=config.fsdp, report_to=config.report_to,
        **({"evaluate": _dev_evaluator(config, plan, tokenizer), "primary": primary,
            "selection": _selection(config, plan)} if selecting else {}),
    )
    if record.get("best_step") is not None and record.get("dev"):
        planned = total_steps(len(plan.train), settings, plan.world)
        early = f" (stopped early at step {record['steps']})" if record.get("stopped_early") else ""
        console.print(f"teacher: best dev {plan.task.primary} {record['dev'].get(primary, float('nan')):.4f} at step "
                      f"{record['best_step']} of {planned}{early}")
    return model, str(config.teacher_dir), None, {"teacher_finetune": record.get("cost")}


def _selecting(config: TeacherLabelConfig, plan: _Plan) -> bool:
    """Whether fine-tuning selects its checkpoint on --dev: whenever --dev is given, except under
    FSDP over several processes (the loop cannot evaluate a sharded model; said once)."""
    if not plan.dev:
        return False
    if config.fsdp and plan.world > 1:
        if config.eval_every is not None or config.patience is not None:
            raise ConfigError("--eval-every and --patience: the teacher cannot be evaluated while it is sharded "
                              "by --fsdp; drop them (the last model is kept), or fine-tune without --fsdp")
        note_("--dev does not select the teacher's checkpoint under --fsdp (the last model is kept); it is "
              "scored before labeling")
        return False
    return True


def _default_eval_every(plan: _Plan, settings: Any) -> int:
    """Once per epoch, but at least ``EVALUATIONS_PER_RUN`` evaluations per run (the last step is always evaluated)."""
    return max(1, min(steps_per_epoch(len(plan.train), settings, plan.world),
                      total_steps(len(plan.train), settings, plan.world) // EVALUATIONS_PER_RUN))


def _selection(config: TeacherLabelConfig, plan: _Plan) -> dict[str, Any]:
    """What the dev evaluation scores: part of the fine-tuned teacher's identity (a teacher selected
    on other dev data, or by another metric, is another teacher)."""
    targets = hashlib.sha256("\n".join(e.target or "" for e in plan.dev).encode()).hexdigest()
    return {"dev": fingerprint(plan.dev), "dev_targets": targets, "task": plan.task.name,
            "metric": plan.task.metric, "max_new_tokens": config.max_new_tokens}


def _dev_evaluator(config: TeacherLabelConfig, plan: _Plan, tokenizer: Any) -> Any:
    """The model's scores on --dev (greedy generation, the task metric, both definitions), flat
    (``strict_accuracy``, ``paper_accuracy``...): what the fine-tuning loop logs and selects on.
    Rank 0 scores; the other ranks of a data-parallel run only take part in the vote to stop."""
    if plan.rank != 0:
        return lambda m: {}
    from dora.pipeline.engines.inference import dev_scores
    from dora.pipeline.tasks.metrics import TaskScorer

    sources = [e.source for e in plan.dev]
    scorer = TaskScorer(plan.task, [e.target or "" for e in plan.dev], sources=sources)

    def evaluate(model: Any) -> dict[str, float]:
        return dev_scores(model, tokenizer, plan.kind, plan.task, sources, scorer, batch_size=config.label_batch_size,
                          max_source_length=config.max_source_length, max_new_tokens=config.max_new_tokens)

    return evaluate


def _already_complete(config: TeacherLabelConfig, done: Manifest, ledger: Ledger, costs: dict[str, Any],
                      teacher_path: str) -> TeacherLabelResult:
    ledger.record_noop(Devices.here(), "the cache was already complete")
    costs = {**costs, "labeling": ledger.summary(done.costs.get("labeling", {}).get("entries"))}
    final = dataclasses.replace(done, costs={**done.costs, **{k: v for k, v in costs.items() if v}})
    write_manifest(config.out, final)
    console.print(f"cache: complete in {config.out} ({final.rows} rows); nothing to label")
    return TeacherLabelResult(cache=config.out, teacher=teacher_path, manifest=final, costs=final.costs)


def _check_precision(config: TeacherLabelConfig, plan: _Plan, tokenizer: Any, cluster: RayLabeling | None,
                     labeler: ShardLabeler | None) -> PrecisionCheck | None:
    """The started engine's precision check (the first worker's under Ray) on the pool's first
    rows, read only when the engine asks for them (always under Ray: a worker cannot ask); what it
    found is printed, as a note when it is worth acting on."""
    engine: Engine | RayLabeling = cluster if cluster is not None else labeler.engine  # type: ignore[union-attr]

    def sample() -> list[list[int]]:
        shards = range(-(-plan.pool.rows // config.shard_size))
        rows = itertools.islice((ex for _, shard in plan.pool.shards(config.shard_size, shards) for ex in shard),
                                PRECISION_ROWS)
        return pool_prompts(tokenizer, list(rows), plan.task.source_prefix, config.max_source_length)

    check = engine.check_precision(sample)
    if check is not None:
        (note_ if check.warning else console.print)(check.message)
    return check


def _described(config: TeacherLabelConfig, plan: _Plan, manifest: Manifest, run: Any, tokenizer: Any,
               cluster: RayLabeling | None, labeler: ShardLabeler | None) -> Manifest:
    """The run's manifest with the started engine's version and settings, and what its precision
    check found as ``agreement``; what the engine computes on is what the ledger counts."""
    if cluster is not None:
        _, version, settings = cluster.describe()  # waits for every worker's engine
        run.set_devices(cluster.devices())
    else:
        engine = labeler.engine  # type: ignore[union-attr]
        version, settings = engine.version, engine.settings()
        run.set_devices(Devices.here(per_process=engine.device_count()))
    check = _check_precision(config, plan, tokenizer, cluster, labeler)
    if check is not None:
        settings = {**settings, "agreement": check.record}
    return dataclasses.replace(manifest, generation=dataclasses.replace(manifest.generation, backend_version=version,
                                                                          engine=settings))


def _open_cache(config: TeacherLabelConfig, ledger: Ledger, run: Any, manifest: Manifest, costs: dict[str, Any],
                tokenizer: Any, lock: DirectoryLock | None) -> CacheWriter:
    """Open (or continue) the cache with the run's manifest; count earlier invocations' shards once
    in the ledger."""

    def ledgers(current: Manifest) -> dict[str, Any]:  # written with every manifest update
        labeling = ledger.summary((current.costs.get("labeling") or {}).get("entries"))
        return {k: v for k, v in {**costs, "labeling": labeling}.items() if v}

    writer = CacheWriter.open(config.out, manifest, tokenizer, lock=lock, costs=ledgers)
    kept = writer.manifest.shards  # earlier invocations' work is what the manifest lists
    ledger.reconcile({"examples": sum(e.rows for e in kept), "tokens": sum(e.tokens for e in kept),
                      "steps": len(kept)}, current=run.run_id,
                     extra=(writer.manifest.costs.get("labeling") or {}).get("entries"))
    missing = len(writer.missing_shards())
    if missing < manifest.num_shards:
        console.print(f"cache: {manifest.num_shards - missing} of {manifest.num_shards} shards already "
                      f"complete in {config.out}; labeling the rest")
    return writer


def _label_shards(config: TeacherLabelConfig, pool: Pool, writer: CacheWriter, run: Any, cluster: Any,
                  labeler: Any) -> None:
    """Label the missing shards: the pool is read a shard at a time, and each shard is written and
    listed before it counts, so a crash loses at most the shards in flight."""
    missing = writer.missing_shards()
    tokens = rows_done = listed = 0
    todo = sum(len(shard_rows(i, config.shard_size, pool.rows)) for i in missing)
    with progress_bar() as bar:
        job = bar.add_task("label pool", total=todo, info="", unit="row")
        shards = pool.shards(config.shard_size, missing)
        if cluster is not None:
            finished = ((entry, n_tokens, entry.rows) for entry, n_tokens in cluster.label(shards, writer))
        else:
            finished = _label_here(labeler, shards, writer, lambda n: bar.advance(job, n))
        try:
            for entry, n_tokens, advance in finished:
                tokens, rows_done, listed = tokens + n_tokens, rows_done + entry.rows, listed + 1
                run.progress(examples=rows_done, tokens=tokens, steps=listed)
                bar.update(job, advance=advance, info=f"{tokens / max(run.seconds, 1e-9):.0f} tok/s")
        except KeyboardInterrupt:
            kept = writer.manifest.num_shards - len(writer.missing_shards())
            raise Interrupted(f"labeling stopped: {kept} of {writer.manifest.num_shards} shards are complete in "
                              f"{config.out} ({listed} labeled by this run); the shard under way is discarded. Rerun "
                              "the same command to label the rest") from None


def _label_here(labeler: Any, shards: Any, writer: CacheWriter, advance: Any) -> Any:
    """Label and list each shard in this process; yield (entry, generated tokens, rows left to advance)."""
    for index, rows in shards:
        table, n_tokens = labeler.label(rows, on_batch=advance)
        yield writer.write_shard(index, table), n_tokens, 0


def _new_manifest(config: TeacherLabelConfig, plan: _Plan, teacher_path: str, tokenizer: Any,
                  label_set: list[str] | None) -> Manifest:
    """The run's manifest, built once, before any engine starts: what a rerun must match to continue
    the cache (``_described`` adds the started engine's version and settings, which it need not)."""
    task, pool, model_config, kind = plan.task, plan.pool, plan.base, plan.kind
    temperatures = plan.settings.kd_temperatures
    return Manifest(
        task={"name": task.name, "metric": task.metric, "source_prefix": task.source_prefix,
              "labels": list(task.labels) if task.labels else None},
        teacher=TeacherInfo(
            name_or_path=teacher_path, base=config.teacher if config.finetune else None,
            architecture=architecture_of(model_config), kind=kind,  # type: ignore[arg-type]
            vocab_size=int(model_config.vocab_size), tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
            weights_sha256=weights_sha256(teacher_path), revision=None if config.finetune else config.revision,
            finetuned=config.finetune,
        ),
        generation=GenerationInfo(
            backend=plan.engine, backend_version="", k=config.top_k,
            max_source_length=config.max_source_length, max_new_tokens=config.max_new_tokens,
            do_sample=config.temperature > 0, temperature=config.temperature,
            top_p=config.top_p if config.temperature > 0 else 1.0,
            seed=config.seed if config.temperature > 0 else None, dtype=plan.precision,
            label_set=label_set, kd_temperatures=list(temperatures),
            id_type=id_type_for(int(model_config.vocab_size)),
        ),
        pool=PoolInfo(fingerprint=pool.fingerprint, rows=pool.rows, path=str(config.pool)),
        shard_size=config.shard_size,
        lineage=gguf_lineage(config.teacher, role="base" if config.finetune else "teacher"),
        dora_version=__version__,
    )
