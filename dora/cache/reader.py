"""Reading a cache: open (manifest and cheap checks), then iterate shards as Arrow tables.

Every cache is treated as crafted (see ``dora.cache.trust``): paths are confined to the cache,
the tokenizer is checked before it loads, each shard's sha256 is checked as it is read (one read
of the file: the bytes hashed are the bytes parsed; ``verify=False`` skips it), and the values a
consumer indexes with (token ids, log-probabilities, row numbers) are range-checked on every read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dora.cache.manifest import Manifest, ShardEntry, read_manifest
from dora.cache.schema import check_schema
from dora.cache.shard import DecodedShard
from dora.cache.trust import check_tokenizer_files, contained, load_cache_tokenizer
from dora.errors import CacheError
from dora.files import file_sha256


@dataclass(frozen=True)
class LabelCache:
    """An opened cache. ``open`` checks the manifest, the tokenizer files (names, sizes, hashes,
    no custom code), every shard's presence, size and schema; reading a shard checks its sha256
    (unless ``verify=False``) and the ranges of its values. ``verify_checksums`` hashes every shard."""

    root: Path
    manifest: Manifest
    verify: bool = True

    @classmethod
    def open(cls, root: str | Path, *, require_complete: bool = True, verify: bool = True,
             tokenizer: bool = True) -> LabelCache:
        root = Path(root)
        if not root.is_dir():
            raise CacheError(f"{root}: no such cache directory; run `dora teacher-label --out {root}` first")
        manifest = read_manifest(root)
        if require_complete and not manifest.complete:
            raise CacheError(
                f"{root}: the cache is incomplete ({len(manifest.shards)} of {manifest.num_shards} shards); "
                "rerun the same `dora teacher-label` command to finish it"
            )
        cache = cls(root, manifest, verify)
        if tokenizer:  # ``dora cache verify`` checks it itself, to report it beside the shards' problems
            check_tokenizer_files(root, manifest.tokenizer_listing(), hash_files=verify)
        shards = contained(root, "shards")
        for path in shards.iterdir() if shards.is_dir() else ():
            if path.is_symlink():
                raise CacheError(f"{path}: is a symbolic link; a cache's files must lie inside it, refusing it")
        for entry in manifest.shards:
            path = cache._shard_path(entry.file)
            if not path.is_file():
                raise CacheError(f"{path}: listed in the manifest but missing; pull or relabel the cache")
            if path.stat().st_size != entry.bytes:
                raise CacheError(f"{path}: {path.stat().st_size} bytes, the manifest says {entry.bytes}; "
                                 "the shard is truncated or replaced")
            try:
                meta = pq.read_metadata(path)
                schema = pq.read_schema(path)
            except Exception as e:  # pyarrow raises several types for damaged files
                raise CacheError(f"{path}: not a readable Parquet file ({e})") from None
            if meta.num_rows != entry.rows:
                raise CacheError(f"{path}: {meta.num_rows} rows, the manifest says {entry.rows}")
            check_schema(schema, manifest.schema(), str(path))
        return cache

    def _shard_path(self, rel: str) -> Path:
        return contained(self.root, rel)

    def tokenizer(self) -> Any:
        """The teacher's tokenizer as the cache stores it, checked and loaded without remote code."""
        return load_cache_tokenizer(self.root, self.manifest.tokenizer_listing())

    @property
    def num_rows(self) -> int:
        return self.manifest.rows

    def verify_checksums(self) -> list[str]:
        """Hash every shard; return one line per mismatch (empty when all match)."""
        problems = []
        for entry in self.manifest.shards:
            digest = file_sha256(self._shard_path(entry.file))
            if digest != entry.sha256:
                problems.append(f"{self.root / entry.file}: sha256 {digest[:12]}... does not match the manifest")
        return problems

    def read_shard(self, entry: ShardEntry, columns: list[str] | None = None, *, check: bool = True) -> pa.Table:
        """One shard as a table. ``check=False`` skips the value ranges (``dora cache verify``
        reports them itself, one line per problem)."""
        path = self._shard_path(entry.file)
        source: Any = path  # unverified: pyarrow reads only the columns asked for
        if self.verify:  # one read of the file: the bytes hashed are the bytes parsed
            data = path.read_bytes()
            if len(data) != entry.bytes or hashlib.sha256(data).hexdigest() != entry.sha256:
                raise CacheError(f"{path}: sha256 does not match the manifest; the shard was changed or damaged "
                                 "(pull the cache again, or run `dora cache verify`); nothing was read from it")
            source = pa.BufferReader(data)
        try:
            table = pq.read_table(source, columns=columns)
        except Exception as e:  # pyarrow raises several types for damaged files
            raise CacheError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0][:200]})") from None
        if table.num_rows != entry.rows:
            raise CacheError(f"{path}: {table.num_rows} rows, the manifest says {entry.rows}")
        if check:
            self._check_values(table, entry, path)
        return table

    def _check_values(self, table: pa.Table, entry: ShardEntry, path: Path) -> None:
        """Values a consumer indexes or exponentiates, checked so that a crafted shard with a valid
        sha256 is one line, not an IndexError or a NaN loss."""
        vocab = self.manifest.teacher.vocab_size
        names = set(table.column_names)
        shard = DecodedShard(table)
        for name in ("target_ids", "topk_ids"):
            if name in names:
                flat = shard.values(name).reshape(-1)
                bad = (flat < 0) | (flat >= vocab)
                if bad.any():
                    row = shard.row_of(name, int(bad.argmax()))
                    raise CacheError(f"{path}: row {entry.first_row + row}: {name} outside the teacher vocabulary "
                                     f"[0, {vocab}); the cache is damaged or crafted (run `dora cache verify`)")
        for name, limit in (("topk_logprobs", 0.0), ("tail_logprobs", 1e-5)):
            if name in names:
                values = shard.values(name).reshape(-1)
                bad = np.isnan(values) | (values > limit)
                if bad.any():
                    row = shard.row_of(name, int(bad.argmax()))
                    raise CacheError(f"{path}: row {entry.first_row + row}: {name} holds values above 0 or NaN, "
                                     "which no log-probability is; the cache is damaged or crafted (run `dora cache verify`)")
        if "row" in names and table.num_rows:
            rows = shard.rows
            end = entry.first_row + self.manifest.shard_size
            if rows[0] < entry.first_row or rows[-1] >= end or (np.diff(rows) <= 0).any():
                raise CacheError(f"{path}: row numbers are not increasing within {entry.first_row}..{end - 1}; "
                                 "the cache is damaged or crafted (run `dora cache verify`)")

    def iter_tables(self, columns: list[str] | None = None) -> Iterator[pa.Table]:
        for entry in self.manifest.shards:
            yield self.read_shard(entry, columns)

    def read(self, columns: list[str] | None = None) -> pa.Table:
        tables = list(self.iter_tables(columns))
        return pa.concat_tables(tables) if tables else pa.table({})
