"""``manifest.json``: what a cache holds, how it was made, and a sha256 for every shard.

The manifest is the cache's table of contents: a shard is part of the cache only once it is
listed here, and the manifest is replaced atomically after each shard, so a crash leaves a
cache that is complete up to its last listed shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from dora.cache.schema import ID_TYPES, shard_schema
from dora.cache.trust import check_tokenizer_name, contained
from dora.errors import CacheError
from dora.files import parse_json, write_atomic

FORMAT_NAME = "dora-label-cache"
FORMAT_VERSION = 2  # what this dora writes
READABLE_VERSIONS = (1, 2)  # 1: no tail_logprobs, int32 ids
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
_SHARD_FILE = re.compile(r"^shards/part-\d{5}\.parquet$")
_TOKENIZER_FILE = re.compile(r"^tokenizer/[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_VOCAB = 1 << 24  # 64x the largest real vocabulary: tables sized by it stay bounded


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the canonical ``tokenizer.json`` (keys sorted, run-time padding/truncation dropped).

    Two tokenizers with the same fingerprint map text to the same ids, so a student with the
    teacher's fingerprint can be trained on the stored top-k ids directly.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        data = json.loads(backend.to_str())
        data.pop("truncation", None)
        data.pop("padding", None)
    else:  # a slow tokenizer: its vocabulary and special tokens define it
        data = {"vocab": sorted(tokenizer.get_vocab().items()), "special": tokenizer.all_special_tokens}
    canon = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class TeacherInfo:
    """The model that labeled the pool. ``base`` is what it was fine-tuned from (None if not)."""

    name_or_path: str
    architecture: str
    kind: Literal["seq2seq", "causal"]
    vocab_size: int
    tokenizer_fingerprint: str
    weights_sha256: str | None = None
    revision: str | None = None
    finetuned: bool = False
    base: str | None = None


@dataclass(frozen=True, kw_only=True)
class GenerationInfo:
    """How the pool was labeled. ``engine`` holds the engine's own settings (parallelism,
    memory, pass-through arguments); they do not change what a cache means."""

    backend: str
    backend_version: str
    k: int
    max_source_length: int
    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: Literal["raw", "processed"] = "raw"
    dtype: str = "float32"
    engine: dict[str, Any] = field(default_factory=dict)
    label_set: list[str] | None = None
    """Label verbalisers scored into ``label_logprobs`` (closed-label tasks), in column order."""
    kd_temperatures: list[float] = field(default_factory=list)
    """Temperatures of the ``tail_logprobs`` columns, ascending (format 2; empty in format 1)."""
    id_type: str = "int32"
    """Type of the stored token ids: uint16 when the vocabulary fits, else int32 (always int32 in format 1)."""


@dataclass(frozen=True, kw_only=True)
class PoolInfo:
    fingerprint: str
    rows: int
    path: str = ""


@dataclass(frozen=True, kw_only=True)
class ShardEntry:
    index: int
    file: str
    rows: int
    first_row: int
    bytes: int
    sha256: str
    tokens: int = 0
    """Generated tokens in the shard (format 2; 0 where a format 1 manifest did not say)."""


@dataclass(frozen=True, kw_only=True)
class FileEntry:
    """A file of the cache's tokenizer copy, so that a pulled cache can be checked whole."""

    file: str
    bytes: int
    sha256: str


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """The whole manifest. ``stats`` and ``costs`` are free-form dicts of numbers and strings."""

    task: dict[str, Any]
    teacher: TeacherInfo
    generation: GenerationInfo
    pool: PoolInfo
    shard_size: int
    shards: tuple[ShardEntry, ...] = ()
    tokenizer_files: tuple[FileEntry, ...] = ()
    complete: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    costs: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    dora_version: str = ""
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def schema(self) -> pa.Schema:
        """The Arrow schema every shard of this cache has."""
        g = self.generation
        return shard_schema(g.k, g.label_set is not None, id_type=g.id_type,  # type: ignore[arg-type]
                            temperatures=len(g.kd_temperatures))

    @property
    def num_shards(self) -> int:
        """How many shards the whole pool needs (listed or not)."""
        return max(1, -(-self.pool.rows // self.shard_size))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST) -> Manifest:
        """Validate and build; every malformed field is a CacheError naming it."""
        if not isinstance(data, dict):
            raise CacheError(f"{where}: expected a JSON object")
        if data.get("format") != FORMAT_NAME:
            raise CacheError(f"{where}: format is {data.get('format')!r}, not {FORMAT_NAME!r}; not a dora label cache")
        version = data.get("format_version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise CacheError(
                f"{where}: format version {version!r} is not supported by this dora (reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}); upgrade dora-distill"
            )
        try:
            shards = tuple(_build(ShardEntry, s, f"{where}: shards[{i}]") for i, s in enumerate(data["shards"]))
            manifest = cls(
                task=_typed(data, "task", dict, where),
                teacher=_build(TeacherInfo, data["teacher"], f"{where}: teacher"),
                generation=_build(GenerationInfo, data["generation"], f"{where}: generation"),
                pool=_build(PoolInfo, data["pool"], f"{where}: pool"),
                shard_size=_typed(data, "shard_size", int, where),
                shards=shards,
                tokenizer_files=tuple(_build(FileEntry, f, f"{where}: tokenizer_files[{i}]")
                                      for i, f in enumerate(data.get("tokenizer_files", []))),
                complete=_typed(data, "complete", bool, where),
                stats=_typed(data, "stats", dict, where),
                costs=_typed(data, "costs", dict, where) if "costs" in data else {},
                lineage=_typed(data, "lineage", dict, where) if "lineage" in data else {},
                dora_version=_typed(data, "dora_version", str, where),
                format_version=version,
            )
        except KeyError as e:
            raise CacheError(f"{where}: required field {e.args[0]!r} is missing") from None
        manifest._check(where)
        return manifest

    def _check(self, where: str) -> None:
        g = self.generation
        if g.k < 1 or self.shard_size < 1 or self.pool.rows < 0:
            raise CacheError(f"{where}: k, shard_size and pool rows must be positive")
        temps = g.kd_temperatures
        if not isinstance(temps, list) or not all(
                isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0 for t in temps):
            raise CacheError(f"{where}: generation.kd_temperatures must be a list of positive numbers")
        if sorted(set(temps)) != temps:
            raise CacheError(f"{where}: generation.kd_temperatures must be ascending without repeats, got {temps}")
        if g.label_set is not None and (not isinstance(g.label_set, list) or
                                        not all(isinstance(x, str) for x in g.label_set)):
            raise CacheError(f"{where}: generation.label_set must be a list of strings or null")
        if g.logprobs not in ("raw", "processed"):
            raise CacheError(f"{where}: generation.logprobs must be raw or processed, got {g.logprobs!r}")
        if g.id_type not in ID_TYPES:
            raise CacheError(f"{where}: generation.id_type must be one of {sorted(ID_TYPES)}, got {g.id_type!r}")
        if self.format_version == 1 and (temps or g.id_type != "int32"):
            raise CacheError(f"{where}: a format 1 manifest has no kd_temperatures and int32 ids")
        if self.format_version >= 2 and not temps:
            raise CacheError(f"{where}: a format 2 manifest lists the temperatures of tail_logprobs (kd_temperatures)")
        if not 1 <= self.teacher.vocab_size <= MAX_VOCAB:
            raise CacheError(f"{where}: teacher.vocab_size {self.teacher.vocab_size} is not between 1 and {MAX_VOCAB}")
        if g.id_type == "uint16" and self.teacher.vocab_size > 1 << 16:
            raise CacheError(f"{where}: uint16 ids cannot hold a vocabulary of {self.teacher.vocab_size}")
        seen: set[int] = set()
        for s in self.shards:
            # Names are fixed by the format: nothing in a manifest can point outside the cache.
            if not _SHARD_FILE.match(s.file) or s.file != f"shards/part-{s.index:05d}.parquet":
                raise CacheError(f"{where}: shard file name {s.file!r} is not shards/part-NNNNN.parquet for index {s.index}")
            if s.index in seen:
                raise CacheError(f"{where}: shard {s.index} is listed twice")
            seen.add(s.index)
            if s.first_row != s.index * self.shard_size or s.rows < 1 or s.rows > self.shard_size:
                raise CacheError(f"{where}: shard {s.file} has first_row {s.first_row} and {s.rows} rows, "
                                 f"which does not fit shard_size {self.shard_size}")
            if s.index >= self.num_shards or s.first_row + s.rows > self.pool.rows:
                raise CacheError(f"{where}: shard {s.file} holds rows {s.first_row}..{s.first_row + s.rows - 1}, "
                                 f"beyond the pool's {self.pool.rows} rows")
            if not re.fullmatch(r"[0-9a-f]{64}", s.sha256) or s.bytes < 0:
                raise CacheError(f"{where}: shard {s.file} has a malformed sha256 or size")
        for f in self.tokenizer_files:
            if not _TOKENIZER_FILE.match(f.file) or not re.fullmatch(r"[0-9a-f]{64}", f.sha256) or f.bytes < 0:
                raise CacheError(f"{where}: tokenizer file entry {f.file!r} is not tokenizer/NAME with a sha256 and size")
            check_tokenizer_name(f.file, where)
        if len({f.file for f in self.tokenizer_files}) != len(self.tokenizer_files):
            raise CacheError(f"{where}: a tokenizer file is listed twice")

    def identity(self) -> dict[str, Any]:
        """What two caches must share to hold the same kind of labels (where the teacher was on
        disk, the engine's own settings and the rows aside): merge and push compare it."""
        return {"task": self.task, "teacher": dataclasses.asdict(self.teacher) | {"name_or_path": None},
                "generation": dataclasses.asdict(self.generation) | {"engine": None, "backend_version": None},
                "tokenizer": [(f.file, f.sha256) for f in self.tokenizer_files], "format version": self.format_version}

    def tokenizer_listing(self) -> list[tuple[str, int, str]]:
        """``(tokenizer/NAME, bytes, sha256)`` for each listed tokenizer file."""
        return [(f.file, f.bytes, f.sha256) for f in self.tokenizer_files]


def _typed(data: dict, key: str, kind: type, where: str) -> Any:
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CacheError(f"{where}: field {key!r} should be {kind.__name__}, got {type(value).__name__}")
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise CacheError(f"{where}: expected an object")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise CacheError(f"{where}: unknown field(s) {sorted(unknown)}")
    try:
        obj = cls(**data)
    except TypeError as e:
        raise CacheError(f"{where}: {e}") from None
    for name, f in names.items():
        value = getattr(obj, name)
        expected = {"int": int, "str": str, "bool": bool, "float": (int, float), "dict": dict}.get(
            str(f.type).split(" ")[0].split("[")[0])
        if expected and value is not None and (not isinstance(value, expected) or
                                               (expected is int and isinstance(value, bool))):
            raise CacheError(f"{where}: field {name!r} should be {f.type}, got {type(value).__name__}")
    return obj


def read_manifest(root: Path) -> Manifest:
    path = root / MANIFEST
    if not path.is_file() and not path.is_symlink():
        raise CacheError(f"{root}: no {MANIFEST}; not a dora label cache (run `dora teacher-label --out {root}`)")
    path = contained(root, MANIFEST)
    if not path.is_file():
        raise CacheError(f"{path}: not a regular file; the manifest is damaged")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise CacheError(f"{path}: {path.stat().st_size} bytes is too large for a manifest")
    return Manifest.from_dict(parse_json(path.read_bytes(), str(path)), str(path))


def write_manifest(root: Path, manifest: Manifest) -> None:
    write_atomic(root / MANIFEST, manifest.to_json().encode())
