"""``dora cache verify``: every check a cache can pass, one line per problem.

Cheap checks (``LabelCache.open``): the manifest's schema, every listed shard present with its
size, row count and column types, no symbolic links. Deep checks (here): the tokenizer files
(only tokenizer data files, each present with its listed size and sha256, no custom code, and
the tokenizer's fingerprint equal to the manifest's), every shard's sha256, the listed rows
against the pool's (all of them in a complete, unfiltered cache; the kept count of a filtered
one), ids unique across the cache, rows where the manifest says, top-k log-probabilities sorted
and <= 0, token ids inside the teacher's vocabulary, tail masses (format 2) that are
log-probabilities and at T = 1 add up with the top-k to one, ``target_ids`` decoding to
``target`` with the cached tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dora.cache.manifest import tokenizer_fingerprint
from dora.cache.reader import LabelCache
from dora.cache.shard import DecodedShard
from dora.cache.trust import check_tokenizer_files
from dora.errors import CacheError

MAX_PROBLEMS_PER_CHECK = 5


def verify(root: str | Path, *, decode: bool = True) -> list[str]:
    """Return one line per problem (empty when the cache is sound)."""
    try:
        cache = LabelCache.open(root, require_complete=False, tokenizer=False)
    except CacheError as e:
        return [str(e)]
    m = cache.manifest
    problems = cache.verify_checksums()
    if not m.complete:
        problems.append(f"{cache.root}: incomplete ({len(m.shards)} of {m.num_shards} shards listed)")
    problems += _rows_problems(cache)
    tokenizer = None
    try:
        if decode:
            tokenizer = cache.tokenizer()  # checks the files first
        else:
            check_tokenizer_files(cache.root, m.tokenizer_listing())
        if tokenizer is not None:
            if tokenizer_fingerprint(tokenizer) != m.teacher.tokenizer_fingerprint:
                problems.append(f"{cache.root / 'tokenizer'}: its fingerprint differs from the manifest's "
                                "teacher.tokenizer_fingerprint; the tokenizer was replaced")
    except CacheError as e:
        problems.append(str(e))
    seen: dict[str, str] = {}
    vocab = m.teacher.vocab_size
    for entry in m.shards:
        path = cache.root / entry.file
        if any(path.name in p and "sha256" in p for p in problems):
            continue  # its bytes are wrong: reading further says nothing new
        try:
            table = cache.read_shard(entry, check=False)  # the checks below report each problem
        except Exception as e:
            problems.append(f"{path}: unreadable ({str(e).splitlines()[0][:200]})")
            continue
        where = str(path)
        shard = DecodedShard(table)
        rows = shard.rows
        end = entry.first_row + m.shard_size
        # Increasing and inside the shard's range (a filtered cache may have gaps).
        if len(rows) and (rows[0] < entry.first_row or rows[-1] >= end or (np.diff(rows) <= 0).any()):
            problems.append(f"{where}: rows are not increasing within {entry.first_row}..{end - 1}")
        dupes = 0
        for ident in shard.ids:
            if ident in seen and dupes < MAX_PROBLEMS_PER_CHECK:
                problems.append(f"{where}: id {ident!r} also in {seen[ident]}")
                dupes += 1
            seen.setdefault(ident, path.name)
        lp = shard.topk_logprobs.astype(np.float32)
        if len(lp) and (np.isnan(lp).any() or (lp > 0).any()):
            problems.append(f"{where}: top-k log-probabilities above 0 or NaN")
        if len(lp) and (np.diff(lp, axis=1) > 0).any():
            problems.append(f"{where}: top-k log-probabilities not sorted in decreasing order")
        temps = [float(t) for t in m.generation.kd_temperatures]
        if temps:
            tail = shard.tail_logprobs.astype(np.float64)
            if len(tail) and (np.isnan(tail).any() or (tail > 1e-5).any()):
                problems.append(f"{where}: tail log-probabilities above 0 or NaN")
            elif len(tail) and 1.0 in temps:  # the top-k and the tail at T = 1 hold all the mass
                total = np.exp(lp.astype(np.float64)).sum(-1) + np.exp(tail[:, temps.index(1.0)])
                if (np.abs(total - 1.0) > 0.02).any():
                    problems.append(f"{where}: top-k and tail probabilities at T = 1 do not sum to 1")
        for column in ("target_ids", "topk_ids"):
            ids = shard.values(column)
            if len(ids) and (ids.min() < 0 or ids.max() >= vocab):
                problems.append(f"{where}: {column} outside the teacher vocabulary [0, {vocab})")
        if tokenizer is not None:
            bad = 0
            for r, (lo, n, text) in enumerate(zip(shard.starts, shard.lengths, shard.targets)):
                token_ids = shard.target_ids[lo : lo + n].tolist()
                if tokenizer.decode(token_ids, skip_special_tokens=True) != text and bad < MAX_PROBLEMS_PER_CHECK:
                    problems.append(f"{where}: row {entry.first_row + r}: target_ids do not decode to target")
                    bad += 1
    return problems


def _rows_problems(cache: LabelCache) -> list[str]:
    """The listed rows against the pool: a complete cache lists every pool row, unless it was
    filtered (then the kept count) or pulled in part (then the subset's shards)."""
    m = cache.manifest
    listed = sum(s.rows for s in m.shards)
    where = f"{cache.root / 'manifest.json'}"
    if "filter" in m.lineage:
        kept = m.lineage["filter"].get("kept") if isinstance(m.lineage["filter"], dict) else None
        if kept != listed:
            return [f"{where}: lists {listed} rows, its filter lineage says {kept} were kept"]
        return []
    if m.complete and "subset" not in m.lineage and listed != m.pool.rows:
        return [f"{where}: lists {listed} rows, the pool has {m.pool.rows}; rows are missing or invented"]
    return []
