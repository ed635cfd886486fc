"""``dora cache info``: what a cache holds, what it cost, and how confident its teacher was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dora.cache.reader import LabelCache
from dora.cache.shard import DecodedShard

OFF_LABEL_WARNING = 0.05
"""Above this share of pseudo-labels outside a closed task's label set, teacher-label warns."""


def off_labels(cache: LabelCache) -> dict[str, Any] | None:
    """For a closed-label task: how many pseudo-labels are none of its labels (stripped, exact), and
    the most common of them; None when the task has no label set."""
    m = cache.manifest
    labels = m.task.get("labels") or m.generation.label_set
    if not labels:
        return None
    allowed = {str(x).strip() for x in labels}
    counts: dict[str, int] = {}
    rows = 0
    for table in cache.iter_tables(["target"]):
        for target in DecodedShard(table).targets:
            rows += 1
            if target.strip() not in allowed:
                counts[target] = counts.get(target, 0) + 1
    off = sum(counts.values())
    common = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    return {"rows": off, "of": rows, "share": off / rows if rows else 0.0, "labels": sorted(allowed),
            "most_common": [{"label": label[:80], "rows": n} for label, n in common]}


def info(root: str | Path) -> dict[str, Any]:
    cache = LabelCache.open(root, require_complete=False)
    m = cache.manifest
    tokens = 0
    seq: list[np.ndarray] = []
    for table in cache.iter_tables(["target_ids", "seq_logprob"]):
        shard = DecodedShard(table)
        tokens += shard.tokens
        seq.append(shard.seq_logprob)
    lp = np.concatenate(seq) if seq else np.zeros(0, np.float32)
    on_disk = sum(s.bytes for s in m.shards) + sum(f.bytes for f in m.tokenizer_files)
    shard_bytes = sum(s.bytes for s in m.shards)
    return {
        "cache": str(cache.root), "format_version": m.format_version, "complete": m.complete, "task": m.task,
        "teacher": {"name_or_path": m.teacher.name_or_path, "base": m.teacher.base,
                    "architecture": m.teacher.architecture, "kind": m.teacher.kind, "vocab_size": m.teacher.vocab_size},
        "engine": {"backend": m.generation.backend, "version": m.generation.backend_version, "k": m.generation.k,
                   "do_sample": m.generation.do_sample, "temperature": m.generation.temperature,
                   "max_new_tokens": m.generation.max_new_tokens, "dtype": m.generation.dtype,
                   "label_set": m.generation.label_set, "kd_temperatures": m.generation.kd_temperatures,
                   "id_type": m.generation.id_type, "settings": m.generation.engine},
        "rows": m.rows, "pool_rows": m.pool.rows, "tokens": tokens, "shards": len(m.shards),
        "bytes_on_disk": on_disk,
        "bytes_per_token": round(shard_bytes / tokens, 2) if tokens else None,
        "seq_logprob": {"mean": float(lp.mean()) if len(lp) else None, "std": float(lp.std()) if len(lp) else None,
                        "min": float(lp.min()) if len(lp) else None, "max": float(lp.max()) if len(lp) else None},
        "off_label": off_labels(cache),
        "costs": m.costs, "stats": m.stats, "lineage": m.lineage,
        "fingerprints": {"pool": m.pool.fingerprint, "teacher_tokenizer": m.teacher.tokenizer_fingerprint,
                         "teacher_weights": m.teacher.weights_sha256},
        "dora_version": m.dora_version,
    }
