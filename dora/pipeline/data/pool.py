"""The unlabeled pool, streamed: one validating pass to fingerprint it, then shard by shard.

A pool of millions of rows is never held whole. ``Pool.scan`` reads the file once and keeps
its row count, its fingerprint (the same sha256 as ``dora.pipeline.data.inputs.fingerprint``) and an
8-byte hash per id to find duplicates; ``Pool.shards`` then yields the rows of the wanted
shards in one more pass, so memory is one shard's rows whatever the pool's size.

>>> import json, tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "pool.jsonl"
>>> _ = p.write_text("".join(json.dumps({"source": f"claim {i}"}) + "\\n" for i in range(5)))
>>> pool = Pool.scan(p)
>>> pool.rows, [(i, [ex.row for ex in rows]) for i, rows in pool.shards(2, wanted=[0, 2])]
(5, [(0, [0, 1]), (2, [4])])
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dora.pipeline.data.inputs import (
    Example,
    Fields,
    duplicate_id_error,
    fingerprint_update,
    iter_examples,
    no_examples_error,
)


def _id_hash(ident: str) -> int:
    return int.from_bytes(hashlib.blake2b(ident.encode(), digest_size=8).digest(), "little", signed=True)


@dataclass(frozen=True, kw_only=True)
class Pool:
    """A validated pool file: where it is, how many rows, and its fingerprint."""

    path: Path
    fields: Fields
    rows: int
    fingerprint: str

    @classmethod
    def scan(cls, path: str | Path, *, fields: Fields = Fields()) -> Pool:
        """Validate every row (errors name the file and line) without keeping the rows."""
        path = Path(path)
        h = hashlib.sha256()
        hashes = np.empty(1 << 16, np.int64)
        n = 0
        for _, ex in iter_examples(path, fields=fields, require_target=False):
            fingerprint_update(h, ex)
            if n == len(hashes):
                hashes = np.resize(hashes, 2 * n)
            hashes[n] = _id_hash(ex.id)
            n += 1
        if n == 0:
            raise no_examples_error(path, fields)
        hashes = np.sort(hashes[:n])
        if (hashes[1:] == hashes[:-1]).any():  # rare: find the rows in a second pass
            _raise_duplicate(path, fields)
        return cls(path=path, fields=fields, rows=n, fingerprint=h.hexdigest())

    def shards(self, shard_size: int, wanted: Iterable[int]) -> Iterator[tuple[int, list[Example]]]:
        """Yield (shard index, its rows) for each wanted shard, in ascending order, in one pass."""
        todo = sorted(set(wanted))
        if not todo:
            return
        current: list[Example] = []
        position = 0
        for _, ex in iter_examples(self.path, fields=self.fields, require_target=False):
            index = ex.row // shard_size
            while position < len(todo) and todo[position] < index:
                if current:
                    yield todo[position], current
                    current = []
                position += 1
            if position == len(todo):
                return
            if index == todo[position]:
                current.append(ex)
        if current:
            yield todo[position], current


def _raise_duplicate(path: Path, fields: Fields) -> None:
    seen: dict[str, int] = {}
    for line, ex in iter_examples(path, fields=fields, require_target=False):
        if ex.id in seen:
            raise duplicate_id_error(path, fields, ex.id, seen[ex.id], line)
        seen[ex.id] = ex.row
