"""``dora cache filter`` and ``dora cache merge``: new caches derived from existing ones.

Both write a complete cache of the same format (manifest last, atomically) whose manifest
records its lineage: where its rows came from and what was done to them. Neither changes its
inputs.

    dora cache filter caches/fever caches/fever-confident --min-seq-logprob -2.0 --max-entropy 1.5
    dora cache merge caches/fever-a caches/fever-b --out caches/fever-all
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dora.cache.manifest import TOKENIZER_DIR, Manifest, PoolInfo, ShardEntry, write_manifest
from dora.cache.reader import LabelCache
from dora.cache.shard import DecodedShard, parquet_options
from dora.cache.trust import check_tokenizer_files
from dora.cache.writer import shard_name
from dora.errors import CacheError
from dora.files import file_sha256


def mean_entropy(shard: DecodedShard, tail_column: int | None = None) -> np.ndarray:
    """Per row: mean over generated tokens of the entropy (nats) of the stored top-k plus its tail
    bucket (``DecodedShard.token_tails``)."""
    lp, tail = shard.token_tails(tail_column)
    p = np.exp(lp)
    ent = -(p * lp).sum(-1) - np.where(tail > 0, tail * np.log(np.where(tail > 0, tail, 1.0)), 0.0)
    return shard.row_mean(ent)


def _check_out(out: Path) -> None:
    """A derived cache goes into a new or empty directory, never over anything."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise CacheError(f"{out}: exists and is not a directory; choose a new --out for the derived cache")
    if out.exists() and any(out.iterdir()):
        raise CacheError(f"{out}: exists and is not empty; choose a new --out for the derived cache")


class _Output:
    """The derived cache's directory while it is written: on any failure, what this run wrote is
    removed (the directory too, when this run created it), so no half-written cache is left."""

    def __init__(self, out: Path) -> None:
        _check_out(out)
        self.out, self.created = out, not out.exists()

    def __enter__(self) -> Path:
        try:
            (self.out / "shards").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(f"{e.filename or self.out}: cannot create the derived cache ({e.strerror}); "
                             "choose a writable --out") from None
        return self.out

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if value is None:
            return
        if self.created:
            shutil.rmtree(self.out, ignore_errors=True)
        else:  # it was empty before this run: everything in it is ours
            for child in self.out.iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() and not child.is_symlink() else child.unlink()
        if isinstance(value, OSError):
            where = value.filename or self.out
            raise CacheError(f"{where}: could not write the derived cache ({value.strerror or value}); free space "
                             "or fix permissions, then rerun; nothing was kept") from None


def _write(out: Path, manifest: Manifest, tables: Iterable[tuple[int, pa.Table]], source: LabelCache) -> Manifest:
    """Write shards, copy the tokenizer's listed files (checked, never through a link), then the
    manifest (last)."""
    schema = manifest.schema()
    entries = []
    for index, table in tables:
        if table.num_rows == 0:
            continue
        path = out / shard_name(index)
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(table.select(schema.names).cast(schema), tmp, **parquet_options(schema))
        tmp.replace(path)
        tokens = DecodedShard(table).tokens
        entries.append(ShardEntry(index=index, file=shard_name(index), rows=table.num_rows,
                                  first_row=index * manifest.shard_size, bytes=path.stat().st_size,
                                  sha256=file_sha256(path), tokens=tokens if manifest.format_version >= 2 else 0))
    tokenizer = check_tokenizer_files(source.root, source.manifest.tokenizer_listing())
    (out / TOKENIZER_DIR).mkdir()
    for entry in source.manifest.tokenizer_files:
        name = entry.file.removeprefix(f"{TOKENIZER_DIR}/")
        data = (tokenizer / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != entry.sha256:  # changed since it was checked
            raise CacheError(f"{tokenizer / name}: sha256 does not match the manifest; the file was changed")
        (out / TOKENIZER_DIR / name).write_bytes(data)
    result = dataclasses.replace(manifest, shards=tuple(entries), complete=True)
    write_manifest(out, result)
    return result


def filter_cache(
    src: str | Path,
    out: str | Path,
    *,
    min_seq_logprob: float | None = None,
    max_entropy: float | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    gold: dict[str, str] | None = None,
    exclude: set[str] | None = None,
    verify: bool = True,
) -> Manifest:
    """Keep the rows that pass every given criterion; shards keep their row ranges (with gaps).

    gold: {id: gold target}; a row is kept when its pseudo-label equals its gold label (rows
    without gold are kept), as distil-whisper keeps pseudo-labels that agree with references.
    exclude: ids to drop (say, an annotation queue's rows, which gold labels replace).
    verify: check each shard's sha256 as it is read (``--no-verify`` skips it).
    """
    cache = LabelCache.open(src, verify=verify)
    out = Path(out)
    temps = [float(t) for t in cache.manifest.generation.kd_temperatures]
    at_one = temps.index(1.0) if 1.0 in temps else None
    kept = total = 0

    def tables() -> Iterable[tuple[int, pa.Table]]:
        nonlocal kept, total
        for entry in cache.manifest.shards:
            table = cache.read_shard(entry)
            shard = DecodedShard(table)
            keep = np.ones(table.num_rows, bool)
            if min_seq_logprob is not None:
                keep &= shard.seq_logprob >= min_seq_logprob
            if max_entropy is not None:
                keep &= mean_entropy(shard, at_one) <= max_entropy
            if min_length is not None:
                keep &= shard.lengths >= min_length
            if max_length is not None:
                keep &= shard.lengths <= max_length
            if gold is not None:
                agrees = [i not in gold or gold[i].strip() == t.strip() for i, t in zip(shard.ids, shard.targets)]
                keep &= np.array(agrees)
            if exclude is not None:
                keep &= np.array([i not in exclude for i in shard.ids], bool)
            total += table.num_rows
            kept += int(keep.sum())
            yield entry.index, table.filter(pa.array(keep))

    criteria = {k2: v for k2, v in {"min_seq_logprob": min_seq_logprob, "max_entropy": max_entropy,
                                    "min_length": min_length, "max_length": max_length,
                                    "gold_agreement": gold is not None,
                                    "excluded_ids": len(exclude) if exclude is not None else None}.items()
                if v is not None and v is not False}  # 0 excluded ids is still a criterion
    if not criteria:
        raise CacheError("give at least one criterion: --min-seq-logprob, --max-entropy, --min-length, "
                         "--max-length, --gold or --exclude")
    with _Output(out):
        manifest = _write(out, cache.manifest, tables(), cache)
        lineage = {"filter": {"source": str(cache.root), "criteria": criteria, "kept": kept, "of": total},
                   "parents": [cache.manifest.lineage] if cache.manifest.lineage else []}
        manifest = dataclasses.replace(manifest, lineage=lineage)
        write_manifest(out, manifest)
    return manifest


def merge_caches(sources: Sequence[str | Path], out: str | Path, *, shard_size: int | None = None,
                 verify: bool = True) -> Manifest:
    """One cache from several made with the same teacher and settings; rows deduplicated by id
    (first occurrence wins) and renumbered in order. ``verify``: check each shard's sha256 as it
    is read."""
    if len(sources) < 2:
        raise CacheError("give two or more caches to merge")
    if shard_size is not None and shard_size < 1:
        raise CacheError(f"--shard-size must be at least 1, got {shard_size}")
    caches = [LabelCache.open(s, verify=verify) for s in sources]
    first = caches[0]
    for other in caches[1:]:
        a, b = first.manifest.identity(), other.manifest.identity()
        diff = [key for key in a if a[key] != b[key]]
        if diff:
            raise CacheError(f"{other.root}: made with a different {', '.join(diff)} than {first.root}; only caches "
                             "of one teacher, tokenizer and generation settings merge")
    out = Path(out)
    _check_out(out)
    size = shard_size or first.manifest.shard_size
    seen: set[str] = set()
    parts: list[pa.Table] = []
    dropped = 0
    for cache in caches:
        for table in cache.iter_tables():
            mask = []
            for ident in DecodedShard(table).ids:
                mask.append(ident not in seen)
                seen.add(ident)
            dropped += mask.count(False)
            parts.append(table.filter(pa.array(mask)))
    merged = pa.concat_tables(parts) if parts else pa.table({})
    merged = merged.set_column(merged.schema.get_field_index("row"), "row",
                               pa.array(np.arange(merged.num_rows, dtype=np.int64)))
    h = hashlib.sha256()
    whole = DecodedShard(merged)
    for ident, source in zip(whole.ids, whole.sources):
        h.update(json.dumps([ident, source], ensure_ascii=False).encode() + b"\n")
    base = dataclasses.replace(first.manifest, shard_size=size, pool=PoolInfo(fingerprint=h.hexdigest(),
                               rows=merged.num_rows, path="(merged)"),
                               stats={"tokens": whole.tokens},
                               costs={"merged": [c.manifest.costs for c in caches]}, lineage={})
    tables = ((i, merged.slice(i * size, size)) for i in range(-(-merged.num_rows // size)))
    with _Output(out):
        manifest = _write(out, base, tables, first)
        lineage = {"merge": [{"cache": str(c.root), "pool": c.manifest.pool.fingerprint, "rows": c.num_rows}
                             for c in caches], "duplicates_dropped": dropped}
        manifest = dataclasses.replace(manifest, lineage=lineage)
        write_manifest(out, manifest)
    return manifest
