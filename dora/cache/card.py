"""The dataset card pushed with a cache, so hub viewers and ``datasets.load_dataset`` read it."""

from __future__ import annotations

from dora.cache.manifest import Manifest


def dataset_card(manifest: Manifest, *, license: str = "other") -> str:
    """README.md with YAML front matter (``configs`` -> ``data_files``) and how to train from it."""
    t, g = manifest.teacher, manifest.generation
    task = manifest.task.get("name", "")
    return f"""---
license: {license}
tags:
- dora
- knowledge-distillation
- pseudo-labels
configs:
- config_name: default
  data_files:
  - split: train
    path: shards/*.parquet
---

# dora label cache: {task}, labeled by {t.name_or_path}

Pseudo-labels with top-{g.k} token log-probabilities, made by
[dora](https://pypi.org/project/dora-distill/) (`dora teacher-label`), label-cache format
version {manifest.format_version}.

| | |
|---|---|
| task | `{task}` (source prefix `{manifest.task.get("source_prefix", "")}`) |
| teacher | `{t.name_or_path}` ({t.architecture}, {t.kind}, vocabulary {t.vocab_size}); fine-tuned from `{t.base}` |
| tokenizer fingerprint | `{t.tokenizer_fingerprint}` |
| engine | {g.backend} {g.backend_version}; {"sampling, T=" + str(g.temperature) if g.do_sample else "greedy"}; raw log-probabilities |
| rows | {manifest.rows} of a pool of {manifest.pool.rows} (fingerprint `{manifest.pool.fingerprint[:16]}...`) |
| shards | {len(manifest.shards)} Parquet files, sha256 of each in `manifest.json` |
| license | {license} |

## Train a student from it

```bash
pip install dora-distill
dora cache pull <this location> caches/{task or "cache"}
dora train-student --task {task} --student google/t5-v1_1-small --cache caches/{task or "cache"} --dev dev.jsonl --test test.jsonl --out runs/distill
```

Or read the rows directly: `datasets.load_dataset("<this repo>")`, pandas, polars or duckdb on
`shards/*.parquet`.
"""
