"""Stage 1, ``dora teacher-label``: fine-tune the teacher, then label the pool into a cache.

Reads top to bottom: validate the inputs, fine-tune (or reuse) the teacher, open the cache
(continuing a matching one), label every missing shard, mark the cache complete.

Example (tiny local models, CPU)::

    from dora.pipeline.teacher import TeacherLabelConfig, teacher_label
    teacher_label(TeacherLabelConfig(task="fever", teacher="models/t5-base-dir", train="gold.jsonl",
                                     pool="pool.jsonl", out="cache/fever", epochs=3))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dora import __version__
from dora.cache import CacheWriter, GenerationInfo, Manifest, PoolInfo, TeacherInfo, shard_rows, tokenizer_fingerprint
from dora.errors import ConfigError
from dora.pipeline.config import Optimisation, TaskInputs, as_paths, positive_ints
from dora.pipeline.costs import Stopwatch
from dora.pipeline.data import Example, fingerprint, read_examples
from dora.pipeline.encoding import encode_prompts, target_ids
from dora.pipeline.engines import Engine, EngineName, EngineSettings, TransformersEngine, resolve_engine
from dora.pipeline.finetune import LoraSettings, finetune_teacher
from dora.pipeline.generation import Generated, decode
from dora.pipeline.models import (
    architecture_of,
    check_top_k,
    free_accelerator_memory,
    kind_of,
    load_config,
    load_model,
    load_tokenizer,
    vocab_size,
    weights_sha256,
)
from dora.pipeline.progress import console, progress_bar
from dora.pipeline.tasks import Task, get_task

Dtype = Literal["float32", "bfloat16", "float16"]


@dataclass(frozen=True, kw_only=True)
class TeacherLabelConfig(TaskInputs, Optimisation):
    """Everything ``teacher_label`` needs (task and training fields: ``dora.pipeline.config``)."""

    teacher: str
    """Base teacher: a local Hugging Face directory or a hub id (seq2seq such as T5, or decoder-only)."""
    pool: Path
    """Unlabeled inputs (JSON Lines, CSV or Parquet); a target column, if any, is ignored."""
    out: Path
    """Cache directory to create, or to continue when it holds a cache of the same run."""
    train: Path | None = None
    """Labeled examples to fine-tune the teacher on; required unless ``finetune`` is False."""
    finetune: bool = True
    """Fine-tune first; False labels with ``teacher`` as it is (already fine-tuned)."""
    teacher_out: Path | None = None
    """Where the fine-tuned teacher is saved; default ``<out>.teacher`` beside the cache."""
    engine: EngineName = "transformers"
    """Labeling engine: transformers, vllm (decoder-only teachers), or auto (vLLM when it serves the teacher)."""
    top_k: int = 20
    """Top-k token log-probabilities stored per generated token."""
    batch_size: int = 8
    """Fine-tuning micro-batch size."""
    lora: bool = False
    """Fine-tune LoRA adapters (peft) instead of all weights; merged before labeling."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator."""
    label_batch_size: int = 32
    """Pool rows per generation batch."""
    shard_size: int = 4096
    """Pool rows per cache shard (shard i holds rows [i*size, (i+1)*size))."""
    dtype: Dtype = "float32"
    """Weights dtype while labeling (bfloat16/float16 halve memory on a GPU)."""
    temperature: float = 0.0
    """Sampling temperature for pseudo-labels; 0 is greedy (the paper's setting)."""
    top_p: float = 1.0
    """Nucleus sampling mass when ``temperature`` > 0."""
    tensor_parallel_size: int = 1
    """vLLM: GPUs each teacher replica is split over (tensor parallelism)."""
    pipeline_parallel_size: int = 1
    """vLLM: pipeline stages each replica is split over."""
    max_model_len: int | None = None
    """vLLM: longest prompt plus output it plans for (default: the model's)."""
    gpu_memory_utilization: float = 0.9
    """vLLM: fraction of each GPU's memory it may take."""
    engine_args: dict[str, Any] = field(default_factory=dict)
    """Further engine keyword arguments, passed through unchanged (they win over dora's)."""
    labels: tuple[str, ...] | None = None
    """Label verbalisers of your own closed-label task (the paper's tasks know theirs)."""
    score_labels: bool = True
    """Store the teacher's log-probability of every label (``label_logprobs``) for label-set KD."""

    def __post_init__(self) -> None:
        TaskInputs.__post_init__(self)
        Optimisation.__post_init__(self)
        as_paths(self, "pool", "out", "train", "teacher_out")
        if self.finetune and self.train is None:
            raise ConfigError("fine-tuning needs --train LABELED_FILE; or pass --no-finetune to label with "
                              "a teacher that is already fine-tuned")
        positive_ints(self, "top_k", "label_batch_size", "shard_size", "lora_r", "lora_alpha")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"--dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.engine not in ("transformers", "vllm", "auto"):
            raise ConfigError(f"--engine must be transformers, vllm or auto, got {self.engine!r}")
        positive_ints(self, "tensor_parallel_size", "pipeline_parallel_size")
        if self.max_model_len is not None:
            positive_ints(self, "max_model_len")
        if self.temperature < 0:
            raise ConfigError(f"--temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"--gpu-memory-utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(self.labels))
            if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels) or not all(x.strip() for x in self.labels):
                raise ConfigError(f"--labels needs two or more distinct, non-empty labels, got {list(self.labels)}")
        if self.engine == "transformers" and (self.tensor_parallel_size > 1 or self.pipeline_parallel_size > 1):
            raise ConfigError("--tensor-parallel-size and --pipeline-parallel-size need --engine vllm "
                              "(the transformers engine runs on one device)")

    @property
    def teacher_dir(self) -> Path:
        return self.teacher_out or self.out.with_name(self.out.name + ".teacher")


@dataclass(frozen=True, kw_only=True)
class TeacherLabelResult:
    cache: Path
    teacher: str
    manifest: Manifest
    costs: dict[str, Any]


def teacher_label(config: TeacherLabelConfig) -> TeacherLabelResult:
    """Run stage 1. Safe to rerun: a fine-tuned teacher and complete shards are reused."""
    task = get_task(config.task, metric=config.metric, prefix=config.prefix)
    # 1. Read every input before any expensive work, so a bad row fails in seconds.
    train = read_examples(config.train, fields=config.fields, require_target=True) if config.finetune else []
    pool = read_examples(config.pool, fields=config.fields, require_target=False)
    CacheWriter.preflight(config.out, fingerprint(pool))
    base = load_config(config.teacher, revision=config.revision, trust_remote_code=config.trust_remote_code)
    check_top_k(config.top_k, getattr(base, "vocab_size", config.top_k), config.teacher)
    kind = kind_of(base)  # fine-tuning changes weights, not the architecture or vocabulary
    engine_name, why = resolve_engine(config.engine, kind, architecture_of(base))  # fails now, not after fine-tuning

    # 2. Fine-tune the teacher (or reuse one fine-tuned with the same data and settings).
    costs: dict[str, Any] = {}
    model = None
    teacher_path, revision = config.teacher, config.revision
    if config.finetune:
        tokenizer = load_tokenizer(config.teacher, revision=revision, trust_remote_code=config.trust_remote_code)
        settings = config.loop_settings(eval_every=None, save_every=200)
        lora = LoraSettings(r=config.lora_r, alpha=config.lora_alpha) if config.lora else None
        model, record = finetune_teacher(
            base=config.teacher, revision=revision, trust_remote_code=config.trust_remote_code,
            tokenizer=tokenizer, examples=train, prefix=task.source_prefix,
            max_source_length=config.max_source_length, max_target_length=config.max_target_length,
            settings=settings, lora=lora, out_dir=config.teacher_dir,
        )
        costs["teacher_finetune"] = record["cost"]
        teacher_path, revision = str(config.teacher_dir), None

    # 3. Start the labeling engine on the teacher, and open (or continue) the cache.
    tokenizer = load_tokenizer(teacher_path, revision=revision, trust_remote_code=config.trust_remote_code)
    settings = EngineSettings.from_config(config)
    console.print(f"labeling engine: {engine_name} ({why})")
    engine: Engine
    if engine_name == "vllm":
        from dora.pipeline.vllm_engine import VllmEngine

        del model  # the training copy: vLLM loads its own from the saved directory
        free_accelerator_memory()
        engine = VllmEngine(teacher_path, tokenizer, settings, trust_remote_code=config.trust_remote_code,
                            revision=revision)
    else:
        if model is None:
            model, _ = load_model(teacher_path, revision=revision, trust_remote_code=config.trust_remote_code)
        check_top_k(config.top_k, vocab_size(model), teacher_path)
        engine = TransformersEngine(model, tokenizer, kind, settings)
    label_set = list(config.labels or task.labels or []) if config.score_labels else []
    verbalisers = [target_ids(tokenizer, label, config.max_target_length) for label in label_set]
    manifest = _new_manifest(config, task, pool, teacher_path, base, kind, tokenizer, engine, label_set or None)
    writer = CacheWriter.open(config.out, manifest, tokenizer)
    missing = writer.missing_shards()
    if len(missing) < manifest.num_shards:
        console.print(f"cache: {manifest.num_shards - len(missing)} of {manifest.num_shards} shards already "
                      f"complete in {config.out}; labeling the rest")

    # 4. Label shard by shard (prompts go in a shard at a time, so memory stays flat); each shard
    #    is written and listed before the next starts.
    watch = Stopwatch()
    tokens = rows_done = 0
    todo = sum(len(shard_rows(i, config.shard_size, len(pool))) for i in missing)
    with progress_bar() as bar:
        job = bar.add_task("label pool", total=todo, info="")
        for index in missing:
            rows = [pool[r] for r in shard_rows(index, config.shard_size, len(pool))]
            prompts = encode_prompts(tokenizer, [task.source_prefix + ex.source for ex in rows],
                                     config.max_source_length)
            generated = engine.label(prompts, on_batch=lambda n: bar.advance(job, n))
            scores = engine.score(prompts, verbalisers) if verbalisers else None
            writer.write_shard(index, shard_table(rows, generated, tokenizer, config.top_k, scores))
            tokens += sum(len(g.ids) for g in generated)
            rows_done += len(rows)
            bar.update(job, info=f"{tokens / max(watch.seconds, 1e-9):.0f} tok/s")

    # 5. Record what labeling cost and mark the cache complete.
    previous = writer.manifest.costs.get("labeling", {})
    label_cost = watch.cost("labeling", examples=rows_done, tokens=tokens)
    costs["labeling"] = label_cost.to_dict() | {
        "runs": previous.get("runs", 0) + 1,
        "wall_seconds_total": round(previous.get("wall_seconds_total", 0.0) + label_cost.wall_seconds, 3),
    }
    total = costs["labeling"]["wall_seconds_total"]
    stats = {"tokens": _count_tokens(writer), "seconds": total, "device": label_cost.device,
             "device_count": label_cost.device_count,
             "device_hours": round(total * label_cost.device_count / 3600, 6)}
    final = writer.finish(stats=stats, costs=costs)
    console.print(f"cache: {final.rows} rows, {stats['tokens']} tokens in {len(final.shards)} shard(s) -> {config.out}")
    return TeacherLabelResult(cache=config.out, teacher=teacher_path, manifest=final, costs=costs)


def _count_tokens(writer: CacheWriter) -> int:
    from dora.cache import LabelCache

    cache = LabelCache(writer.root, writer.manifest)
    return sum(int(pc.sum(pc.list_value_length(t["target_ids"])).as_py() or 0)
               for t in cache.iter_tables(["target_ids"]))


def _new_manifest(config: TeacherLabelConfig, task: Task, pool: list[Example], teacher_path: str,
                  model_config: Any, kind: str, tokenizer: Any, engine: Engine,
                  label_set: list[str] | None) -> Manifest:
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
            backend=engine.name, backend_version=engine.version, k=config.top_k,
            max_source_length=config.max_source_length, max_new_tokens=config.max_new_tokens,
            do_sample=config.temperature > 0, temperature=config.temperature,
            top_p=config.top_p if config.temperature > 0 else 1.0,
            seed=config.seed if config.temperature > 0 else None, dtype=config.dtype, engine=engine.settings(),
            label_set=label_set,
        ),
        pool=PoolInfo(fingerprint=fingerprint(pool), rows=len(pool), path=str(config.pool)),
        shard_size=config.shard_size,
        dora_version=__version__,
    )


def shard_table(rows: list[Example], generated: list[Generated], tokenizer: Any, k: int,
                label_scores: np.ndarray | None = None) -> pa.Table:
    """Build one shard's Arrow table from generation results (schema: ``dora.cache.shard_schema``)."""
    from dora.cache import shard_schema

    lengths = np.array([len(g.ids) for g in generated], dtype=np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    flat_ids = np.concatenate([g.topk_ids for g in generated]).reshape(-1) if lengths.sum() else np.zeros(0, np.int32)
    flat_lp = (np.concatenate([g.topk_logprobs for g in generated]).reshape(-1).astype(np.float16)
               if lengths.sum() else np.zeros(0, np.float16))
    nested = lambda values, kind: pa.ListArray.from_arrays(  # noqa: E731
        offsets, pa.FixedSizeListArray.from_arrays(pa.array(values, type=kind), k))
    target_ids = pa.ListArray.from_arrays(offsets, pa.array(
        np.concatenate([g.ids for g in generated]) if lengths.sum() else np.zeros(0, np.int32), type=pa.int32()))
    return pa.Table.from_arrays(
        [
            pa.array([r.id for r in rows], pa.string()),
            pa.array([r.row for r in rows], pa.int64()),
            pa.array([r.source for r in rows], pa.string()),
            pa.array([decode(tokenizer, g.ids) for g in generated], pa.string()),
            target_ids,
            nested(flat_ids, pa.int32()),
            nested(flat_lp, pa.float16()),
            pa.array([g.seq_logprob for g in generated], pa.float32()),
            *([pa.array(label_scores.astype(np.float32).tolist(), pa.list_(pa.float32()))]
              if label_scores is not None else []),
        ],
        schema=shard_schema(k, label_scores is not None),
    )
