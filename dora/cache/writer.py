"""Writing a cache: shards atomically, the manifest last, complete shards skipped on a rerun.

Shard ``i`` holds pool rows ``[i * shard_size, (i + 1) * shard_size)``: boundaries depend only
on row numbers, so independent workers can fill disjoint shards of the same cache. Workers
write shard files (``write_shard_file``); only the process holding the cache's lock
(``CacheWriter``) lists them in the manifest. A shard is therefore complete and listed, or
absent: a crash at any moment leaves at most an unlisted file, which the next writer removes.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dora.cache.manifest import MANIFEST, TOKENIZER_DIR, FileEntry, Manifest, ShardEntry, read_manifest, write_manifest
from dora.cache.shard import DecodedShard, parquet_options
from dora.cache.trust import check_tokenizer_files, check_tokenizer_name, contained
from dora.errors import CacheError
from dora.files import file_sha256, parse_json
from dora.lock import LOCK_FILE, DirectoryLock, Guarded

CACHE = Guarded(directory="the cache directory", create_fix="choose a writable --out", busy="is writing this cache",
                wait="wait for it to finish, or stop it: its complete shards are kept and a rerun continues",
                error=CacheError)
"""How the cache's lock names what it guards."""


def cache_lock(root: str | Path) -> DirectoryLock:
    """The lock of the cache in ``root`` (one writer per cache), not yet acquired."""
    return DirectoryLock(root, CACHE)



def shard_name(index: int) -> str:
    return f"shards/part-{index:05d}.parquet"


def shard_rows(index: int, shard_size: int, total: int) -> range:
    """Pool rows that shard ``index`` holds."""
    return range(index * shard_size, min((index + 1) * shard_size, total))


LEDGER = "dora-ledger.jsonl"  # the labeling stage's cost ledger (dora.pipeline.costs.ledger); the manifest mirrors it


def _is_leftover(name: str) -> bool:
    """Files a crashed writer may leave at the top of a cache (removed or reused by the next one)."""
    return name == LOCK_FILE or name.startswith((f".{TOKENIZER_DIR}.tmp-", f".{MANIFEST}.tmp-", f".{LEDGER}.tmp-"))


_SHARD_NAME = re.compile(r"^(part-\d{5}\.parquet|\.part-\d{5}\.parquet\.tmp-\d+)$")  # dora's shards and their temporaries


def _check_unstarted(root: Path) -> None:
    """A directory without a manifest is dora's only if it holds nothing but what a writer that
    died before its first manifest leaves (its lock, temporaries, an empty ``shards/``, its ledger):
    anything else is the user's, and a cache is never written over it."""
    for path in root.iterdir():
        if path.name == LEDGER and path.is_file() and not path.is_symlink():
            continue
        if _is_leftover(path.name) and not path.is_symlink():
            continue
        if path.name == "shards" and path.is_dir() and not path.is_symlink() and \
                all(_SHARD_NAME.match(p.name) and p.name.startswith(".") for p in path.iterdir()):
            continue
        raise CacheError(f"{root}: is not empty and is not a dora cache ({path.name} is there); choose an empty "
                         "or new --out")


def write_shard_file(root: Path, index: int, table: pa.Table, *, schema: pa.Schema, shard_size: int,
                     pool_rows: int) -> ShardEntry:
    """Write shard ``index`` to ``root`` atomically (temporary file, fsync, rename); list nothing.

    Safe to call from any worker process: the returned entry is listed by the cache's writer.
    """
    expected = shard_rows(index, shard_size, pool_rows)
    if table.num_rows != len(expected):
        raise CacheError(f"shard {index}: {table.num_rows} rows, expected {len(expected)}")
    table = table.cast(schema)
    rel = shard_name(index)
    final = root / rel
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp, write_statistics=["row"], **parquet_options(schema))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CacheError(f"{final}: could not write the shard ({e.strerror}); free space or fix "
                         "permissions, then rerun: complete shards are kept") from None
    return ShardEntry(index=index, file=rel, rows=table.num_rows, first_row=expected.start,
                      bytes=final.stat().st_size, sha256=file_sha256(final), tokens=DecodedShard(table).tokens)


def _without_call_state(tokenizer: Any) -> Any:
    """A copy without the truncation/padding that encoding calls leave on a fast tokenizer, so the
    saved files depend on the tokenizer, not on what it encoded before (as the fingerprint does)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or (backend.truncation is None and backend.padding is None):
        return tokenizer
    clean = copy.deepcopy(tokenizer)
    clean.backend_tokenizer.no_truncation()
    clean.backend_tokenizer.no_padding()
    return clean


def _identity(m: Manifest) -> dict[str, Any]:
    """The fields that must agree for a rerun to continue an existing cache."""
    return {
        # The teacher by content (weights and tokenizer hashes), not by where it was on disk.
        "task": m.task, "teacher": dataclasses.asdict(m.teacher) | {"name_or_path": None},
        # Engine settings and versions may differ between workers and reruns; what is generated may not.
        "generation": dataclasses.asdict(m.generation) | {"engine": None, "backend_version": None},
        "pool": m.pool.fingerprint,
        "rows": m.pool.rows, "shard_size": m.shard_size, "format version": m.format_version,
    }


def _check_identity(root: Path, old: Manifest, new: Manifest) -> None:
    if _identity(old) != _identity(new):
        diff = [k for k, v in _identity(old).items() if v != _identity(new)[k]]
        raise CacheError(f"{root}: holds a cache made with a different {', '.join(diff)}; "
                         "use a new --out directory, or delete this one to relabel")


class CacheWriter:
    """Creates or continues the cache at ``root``::

        writer = CacheWriter.open(root, manifest, tokenizer)
        for index in writer.missing_shards():
            writer.write_shard(index, table_for(index))
        writer.finish(stats={"tokens": n})
    """

    def __init__(self, root: Path, manifest: Manifest, lock: DirectoryLock | None = None,
                 costs: Callable[[Manifest], dict[str, Any]] | None = None) -> None:
        self.root = root
        self.manifest = manifest
        self._lock = lock
        self._costs = costs

    @staticmethod
    def complete(root: str | Path, manifest: Manifest) -> Manifest | None:
        """The existing cache at ``root`` when it is complete and made with the same teacher,
        settings and pool as ``manifest`` (engine details aside); None when there is work to do.
        A cache of another run is refused here, before any engine starts."""
        root = Path(root)
        if not (root / MANIFEST).exists():
            return None
        old = read_manifest(root)
        _check_identity(root, old, manifest)
        whole = old.complete and not [i for i in range(old.num_shards) if i not in {s.index for s in old.shards}]
        present = all((root / s.file).is_file() and (root / s.file).stat().st_size == s.bytes for s in old.shards)
        return old if whole and present else None

    @staticmethod
    def preflight(root: str | Path, pool_fingerprint: str) -> None:
        """Cheap checks before any expensive work: ``root`` is absent, empty, or a cache of this pool."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise CacheError(f"{root}: exists and is not a directory; choose another --out")
        if (root / MANIFEST).exists():
            old = read_manifest(root)
            if old.pool.fingerprint != pool_fingerprint:
                raise CacheError(f"{root}: holds a cache made with a different pool; use a new --out directory, "
                                 "or delete this one to relabel")
        elif root.exists():
            _check_unstarted(root)
        parent = root if root.exists() else next((p for p in root.absolute().parents if p.exists()), Path("/"))
        if not os.access(parent, os.W_OK):
            raise CacheError(f"{parent}: not writable; choose an --out you can write to")

    @classmethod
    def open(cls, root: str | Path, manifest: Manifest, tokenizer: Any, *, lock: DirectoryLock | None = None,
             costs: Callable[[Manifest], dict[str, Any]] | None = None) -> CacheWriter:
        """Start a new cache, or continue one made with the same teacher, settings and pool.

        Refuses a directory that holds something else, so a typo in ``--out`` cannot mix two
        caches or overwrite unrelated files, and one that another live process is writing. The
        writer holds the cache's lock until ``close`` (or ``finish``); pass ``lock`` when the
        caller took it earlier (it then stays the caller's to release). ``costs(manifest)`` gives
        the cost records to write with every manifest update (the stage's ledgers).
        """
        root = Path(root)
        cls.preflight(root, manifest.pool.fingerprint)
        if lock is not None:
            return cls._open_locked(root, manifest, tokenizer, lock, owns_lock=False, costs=costs)
        lock = cache_lock(root).acquire()
        try:
            return cls._open_locked(root, manifest, tokenizer, lock, owns_lock=True, costs=costs)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _open_locked(cls, root: Path, manifest: Manifest, tokenizer: Any, lock: DirectoryLock,
                     owns_lock: bool, costs: Callable[[Manifest], dict[str, Any]] | None) -> CacheWriter:
        if (root / MANIFEST).exists():
            old = read_manifest(root)
            _check_identity(root, old, manifest)
            manifest = dataclasses.replace(manifest, shards=old.shards, stats=old.stats, costs=old.costs,
                                           tokenizer_files=old.tokenizer_files)
        try:
            (root / "shards").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(f"{root}: cannot create the cache directory ({e.strerror}); choose a writable --out") from None
        writer = cls(root, manifest, lock if owns_lock else None, costs)
        writer._drop_unlisted()
        writer._save_tokenizer(tokenizer)
        writer._save_manifest()
        return writer

    def close(self) -> None:
        """Release the cache's lock (the cache stays as it is: complete shards listed)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _save_manifest(self) -> None:
        if self._costs is not None:
            self.manifest = dataclasses.replace(self.manifest, costs={**self.manifest.costs, **self._costs(self.manifest)})
        try:
            write_manifest(self.root, self.manifest)
        except OSError as e:
            (self.root / f".{MANIFEST}.tmp-{os.getpid()}").unlink(missing_ok=True)
            raise CacheError(f"{self.root / MANIFEST}: could not update the manifest ({e.strerror}); free space "
                             "or fix permissions, then rerun: the previous manifest and its shards are intact") from None

    def _drop_unlisted(self) -> None:
        """Remove temporary files and shards a crash left unlisted, and listed shards that were damaged."""
        listed = {s.file: s for s in self.manifest.shards}
        keep = []
        for entry in self.manifest.shards:
            path = self.root / entry.file
            if path.is_file() and path.stat().st_size == entry.bytes:
                keep.append(entry)
        for path in self.root.iterdir():
            if _is_leftover(path.name) and path.name != LOCK_FILE:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        for path in contained(self.root, "shards").iterdir():
            rel = f"shards/{path.name}"
            if _SHARD_NAME.match(path.name) and not path.is_dir() and (rel not in listed or listed[rel] not in keep):
                path.unlink()  # only dora's own shard names: anything else is left as it is
        if len(keep) != len(self.manifest.shards):
            self.manifest = dataclasses.replace(self.manifest, shards=tuple(keep), complete=False)

    def _save_tokenizer(self, tokenizer: Any) -> None:
        """Save the teacher's tokenizer once (a rerun keeps the files its manifest lists); a
        tokenizer that needs code, or saves files other than tokenizer data, is refused: every
        reader of the cache would refuse it."""
        target = contained(self.root, TOKENIZER_DIR)
        if self.manifest.tokenizer_files and target.is_dir():
            check_tokenizer_files(self.root, self.manifest.tokenizer_listing())
            return
        if target.exists():  # saved by this run's writer before it died, not yet listed
            shutil.rmtree(target)
        tmp = self.root / f".{TOKENIZER_DIR}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        _without_call_state(tokenizer).save_pretrained(str(tmp))
        files = tuple(FileEntry(file=f"{TOKENIZER_DIR}/{p.name}", bytes=p.stat().st_size, sha256=file_sha256(p))
                      for p in sorted(tmp.iterdir()))
        try:
            for f in files:
                check_tokenizer_name(f.file, f"the teacher's tokenizer ({tmp})")
            if "auto_map" in parse_json((tmp / "tokenizer_config.json").read_bytes(), str(tmp)) \
                    if (tmp / "tokenizer_config.json").is_file() else False:
                raise CacheError("the teacher's tokenizer needs custom code (auto_map); a cache must load without "
                                 "code, so use a tokenizer transformers loads by itself")
        except CacheError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.manifest = dataclasses.replace(self.manifest, tokenizer_files=files)
        self._save_manifest()  # first: a crash before the rename leaves a manifest that says whose files these are
        os.replace(tmp, target)

    def missing_shards(self) -> list[int]:
        done = {s.index for s in self.manifest.shards}
        return [i for i in range(self.manifest.num_shards) if i not in done]

    def write_shard(self, index: int, table: pa.Table) -> ShardEntry:
        """Write shard ``index`` atomically and list it in the manifest."""
        entry = write_shard_file(self.root, index, table, schema=self.manifest.schema(),
                                 shard_size=self.manifest.shard_size, pool_rows=self.manifest.pool.rows)
        return self.add_shard(entry)

    def add_shard(self, entry: ShardEntry) -> ShardEntry:
        """List a shard another worker wrote with ``write_shard_file`` (its size is checked)."""
        path = self.root / entry.file
        if entry.file != shard_name(entry.index) or not path.is_file() or path.stat().st_size != entry.bytes:
            raise CacheError(f"{path}: the worker's shard {entry.index} is missing or changed size; rerun to relabel it")
        shards = tuple(sorted([*(s for s in self.manifest.shards if s.index != entry.index), entry],
                              key=lambda s: s.index))
        self.manifest = dataclasses.replace(self.manifest, shards=shards)
        self._save_manifest()
        return entry

    def finish(self, *, stats: dict[str, Any], costs: dict[str, Any] | None = None) -> Manifest:
        """Mark the cache complete once every shard is listed."""
        missing = self.missing_shards()
        if missing:
            raise CacheError(f"{self.root}: shards {missing[:5]} are still missing; rerun to finish them")
        self.manifest = dataclasses.replace(
            self.manifest, complete=True, stats={**self.manifest.stats, **stats},
            costs={**self.manifest.costs, **(costs or {})},
        )
        self._save_manifest()
        self.close()
        return self.manifest
