"""Data-parallel labeling on Ray: one engine per Ray actor, whole shards per task.

The driver (``dora teacher-label --ray ...``) holds the cache's lock and its manifest. It
streams the pool a shard at a time, hands each missing shard to the least busy actor (at most
two in flight per actor, so memory stays flat), and lists each shard the actor wrote once it
comes back. Which shards exist is dora's manifest's business, not Ray's: after any failure a
rerun labels exactly the shards that are not listed. Every actor writes its shards itself, so
the cache directory must be on a filesystem every node sees.

Each actor holds one engine: vLLM with its own tensor-parallel group (a placement group of
``tensor_parallel_size`` GPUs), or transformers or CTranslate2 on one GPU, or on CPU where the
cluster has no GPU. Example on a running cluster::

    dora teacher-label --task fever --teacher t5-xxl/ --train gold.jsonl --pool pool.jsonl \
        --out /shared/cache/fever --ray auto --ray-workers 8
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from dora.cache import ShardEntry
from dora.cache.writer import CacheWriter, write_shard_file
from dora.errors import CacheError, ConfigError, DoraError
from dora.pipeline.costs.ledger import Devices
from dora.pipeline.data.inputs import Example
from dora.pipeline.engines.labeling import LabelSpec
from dora.pipeline.engines.settings import PrecisionCheck

IN_FLIGHT_PER_WORKER = 2


def require_ray() -> None:
    if importlib.util.find_spec("ray") is None:
        raise ConfigError("--ray needs Ray, which is not installed; `pip install 'dora-distill[ray]'` "
                          "(on every node of the cluster), or label without --ray")


class LabelWorker:
    """A Ray actor: one labeling engine; labels a shard's rows and writes the shard file."""

    def __init__(self, spec: LabelSpec, threads: int | None) -> None:
        import torch

        from dora.pipeline.costs.ledger import Devices

        if threads:
            torch.set_num_threads(threads)
        self.labeler = spec.labeler()
        self.device = Devices.here().name

    def describe(self) -> tuple[str, str, dict[str, Any], str]:
        engine = self.labeler.engine
        return engine.name, engine.version, engine.settings(), self.device

    def check_precision(self, prompts: list[list[int]]) -> PrecisionCheck | None:
        return self.labeler.engine.check_precision(lambda: prompts)

    def label(self, index: int, rows: list[tuple[str, int, str]], target: dict[str, Any]) -> tuple[dict[str, Any], int]:
        examples = [Example(id=i, row=r, source=s, target=None) for i, r, s in rows]
        table, tokens = self.labeler.label(examples)
        entry = write_shard_file(Path(target["root"]), index, table, schema=target["schema"],
                                 shard_size=target["shard_size"], pool_rows=target["pool_rows"])
        return dataclasses.asdict(entry), tokens


class RayLabeling:
    """The actors of one labeling run. ``start`` -> ``describe`` -> ``check_precision`` -> ``label`` -> ``shutdown``."""

    def __init__(self, actors: list[Any], owns_ray: bool, per_worker_gpus: int, groups: list[Any]) -> None:
        self.actors = actors
        self.owns_ray = owns_ray
        self.per_worker_gpus = per_worker_gpus
        self.groups = groups
        self.device_name: str | None = None

    @classmethod
    def start(cls, address: str, spec: LabelSpec, *, workers: int | None) -> RayLabeling:
        import ray

        owns = not ray.is_initialized()
        if owns:
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR,
                                      "log_to_driver": False}
            if address == "local":
                # Enough CPU slots for the workers even on a 2-core machine (they share the cores).
                kwargs["num_cpus"] = max(os.cpu_count() or 1, workers or 2)
            try:
                ray.init(address=None if address == "local" else address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ConfigError(f"--ray {address}: cannot connect to a Ray cluster ({str(e).splitlines()[0]}); "
                                  "start one with `ray start --head`, or pass --ray local") from None
        gpus = int(ray.cluster_resources().get("GPU", 0))
        per = spec.settings.tensor_parallel_size * spec.settings.pipeline_parallel_size if spec.engine == "vllm" else 1
        if gpus and workers is None:
            workers = max(1, gpus // per)
        workers = workers or 2
        if gpus and workers * per > gpus:
            raise ConfigError(f"--ray-workers {workers} x {per} GPU(s) each needs {workers * per} GPUs; the cluster "
                              f"has {gpus}. Use --ray-workers {max(1, gpus // per)}")
        if gpus and per > 1:  # vLLM's tensor-parallel workers go in the actor's placement group
            spec = dataclasses.replace(spec, settings=dataclasses.replace(
                spec.settings, engine_args={"distributed_executor_backend": "ray", **spec.settings.engine_args}))
        remote = ray.remote(LabelWorker)
        actors, groups = [], []
        cpus = ray.cluster_resources().get("CPU", 1)
        threads = None if gpus else max(1, int(cpus // workers))
        for _ in range(workers):
            options: dict[str, Any] = {"max_restarts": 1, "max_task_retries": 1}
            if gpus and per > 1:
                from ray.util.placement_group import placement_group
                from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

                group = placement_group([{"GPU": 1, "CPU": 1}] * per, strategy="STRICT_PACK")
                groups.append(group)
                options |= {"num_gpus": 0, "num_cpus": 0, "scheduling_strategy": PlacementGroupSchedulingStrategy(
                    group, placement_group_capture_child_tasks=True)}
            else:
                options |= {"num_gpus": 1 if gpus else 0, "num_cpus": 1}
            actors.append(remote.options(**options).remote(spec, threads))
        return cls(actors, owns, per if gpus else 0, groups)

    def describe(self) -> tuple[str, str, dict[str, Any]]:
        """(engine name, version, settings) of the workers, once every one has started."""
        import ray

        try:
            answers = ray.get([a.describe.remote() for a in self.actors])
        except Exception as e:
            raise _unwrap(e, "a Ray worker could not start its engine") from None
        name, version, settings, device = answers[0]
        self.device_name = device
        return name, version, settings | {"ray_workers": len(self.actors)}

    def check_precision(self, sample: Callable[[], Sequence[list[int]]]) -> PrecisionCheck | None:
        """The engines' precision check (``Engine.check_precision``), run by the first worker on
        ``sample()``'s prompts (taken here: a worker cannot ask the driver for them)."""
        import ray

        try:
            return ray.get(self.actors[0].check_precision.remote(list(sample())))
        except Exception as e:
            raise _unwrap(e, "a Ray worker could not check its engine's precision") from None

    def label(self, shards: Iterable[tuple[int, list[Example]]], writer: CacheWriter) -> Iterator[tuple[ShardEntry, int]]:
        """Label ``shards`` on the workers; list each finished shard in ``writer``; yield (entry, tokens)."""
        import ray

        m = writer.manifest
        target = {"root": str(writer.root.resolve()), "schema": m.schema(), "shard_size": m.shard_size,
                  "pool_rows": m.pool.rows}
        busy = dict.fromkeys(range(len(self.actors)), 0)
        inflight: dict[Any, tuple[int, int]] = {}
        failure: DoraError | None = None

        def collect() -> Iterator[tuple[ShardEntry, int]]:
            nonlocal failure
            (ref,), _ = ray.wait(list(inflight), num_returns=1)
            index, worker = inflight.pop(ref)
            busy[worker] -= 1
            try:
                entry, tokens = ray.get(ref)
            except Exception as e:  # keep collecting the others: their shards are good
                failure = failure or _unwrap(e, f"a Ray worker failed on shard {index}")
                return
            yield writer.add_shard(ShardEntry(**entry)), tokens

        for index, rows in shards:
            if failure is not None:
                break
            while len(inflight) >= IN_FLIGHT_PER_WORKER * len(self.actors):
                yield from collect()
            worker = min(busy, key=busy.__getitem__)
            ref = self.actors[worker].label.remote(index, [(ex.id, ex.row, ex.source) for ex in rows], target)
            inflight[ref] = (index, worker)
            busy[worker] += 1
        while inflight:
            yield from collect()
        if failure is not None:
            raise failure

    def devices(self) -> Devices:
        """Every worker's devices (not the driver's): what the labeling time is multiplied by."""
        name = self.device_name or "unknown"
        return Devices(name=name, processes=len(self.actors), per_process=max(self.per_worker_gpus, 1))

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        for group in self.groups:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(group)
        if self.owns_ray:
            ray.shutdown()


def _unwrap(error: Exception, what: str) -> DoraError:
    """dora's own error from inside a worker, or a CacheError saying the rerun continues."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, DoraError):
        return cause
    if isinstance(error, DoraError):
        return error
    text = str(cause or error).strip().splitlines()
    return CacheError(f"{what} ({text[-1][:300] if text else type(error).__name__}); rerun the same command: "
                      "complete shards are kept and only the missing ones are labeled")
