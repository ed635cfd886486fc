"""Reading a cache: open (manifest and cheap checks), then iterate shards as Arrow tables."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dora.cache.manifest import TOKENIZER_DIR, Manifest, ShardEntry, file_sha256, read_manifest
from dora.cache.schema import check_schema
from dora.errors import CacheError


@dataclass(frozen=True)
class LabelCache:
    """An opened cache. ``open`` checks the manifest, every shard's presence, size and schema;
    ``verify_checksums`` additionally hashes every shard."""

    root: Path
    manifest: Manifest

    @classmethod
    def open(cls, root: str | Path, *, require_complete: bool = True) -> LabelCache:
        root = Path(root)
        if not root.is_dir():
            raise CacheError(f"{root}: no such cache directory; run `dora teacher-label --out {root}` first")
        manifest = read_manifest(root)
        if require_complete and not manifest.complete:
            raise CacheError(
                f"{root}: the cache is incomplete ({len(manifest.shards)} of {manifest.num_shards} shards); "
                "rerun the same `dora teacher-label` command to finish it"
            )
        cache = cls(root, manifest)
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
        path = (self.root / rel).resolve()
        if path.parent != (self.root / "shards").resolve():  # symlinks out of the cache
            raise CacheError(f"{self.root / rel}: resolves outside the cache; refusing to read it")
        return path

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / TOKENIZER_DIR

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

    def read_shard(self, entry: ShardEntry, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self._shard_path(entry.file), columns=columns)

    def iter_tables(self, columns: list[str] | None = None) -> Iterator[pa.Table]:
        for entry in self.manifest.shards:
            yield self.read_shard(entry, columns)

    def read(self, columns: list[str] | None = None) -> pa.Table:
        tables = list(self.iter_tables(columns))
        return pa.concat_tables(tables) if tables else pa.table({})
