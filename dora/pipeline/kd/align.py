"""Cross-tokenizer alignment: which student positions see the same text as which teacher tokens,
and which teacher token ids denote the same text as a student token id.

Both sides of a pseudo-label are turned into *surfaces*: the bytes each token stands for
(byte-level BPE's ``Ġ`` and SentencePiece's ``▁`` both become a space). Token boundaries are
compared on the text with all whitespace removed (tokenizers disagree about spaces, not about
letters), through a character alignment when normalisers changed the text (NFKC, ``<unk>``).
A student token whose span equals one teacher token's span is a 1:1 position; every other
position belongs to a span where the two tokenizers split or merge differently.

>>> canon("  Hello\\n wörld ")
'Hellowörld'
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np


def canon(text: str) -> str:
    """Text with all whitespace removed: the coordinates token boundaries are compared in."""
    return "".join(text.split())


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    # GPT-2's reversible byte <-> printable-unicode table, as byte-level BPE uses it.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _decoder_types(tokenizer: Any) -> set[str]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    dec = json.loads(backend.to_str()).get("decoder") or {}
    found: set[str] = set()

    def walk(d: Any) -> None:
        if isinstance(d, dict):
            if "type" in d:
                found.add(d["type"])
            for v in d.values():
                walk(v)
        elif isinstance(d, list):
            for v in d:
                walk(v)

    walk(dec)
    return found


def surfaces(tokenizer: Any, size: int | None = None) -> list[bytes | None]:
    """Bytes each token id stands for; None for special tokens and ids with no text.

    Handles byte-level BPE (``Ġ``, byte fallback characters), SentencePiece/Metaspace (``▁``),
    ``<0xNN>`` byte tokens and WordPiece (``##``: no leading space); other tokens are taken
    as written.
    """
    types = _decoder_types(tokenizer)
    size = size or len(tokenizer)
    vocab = tokenizer.convert_ids_to_tokens(list(range(min(size, len(tokenizer)))))
    special = set(tokenizer.all_special_ids)
    byte_level = "ByteLevel" in types
    wordpiece = "WordPiece" in types
    table = _byte_decoder()
    out: list[bytes | None] = []
    for i, tok in enumerate(vocab):
        if tok is None or i in special:
            out.append(None)
        elif byte_level:
            try:
                out.append(bytes(table[c] for c in tok))
            except KeyError:
                out.append(tok.encode())
        elif len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
            out.append(bytes([int(tok[3:5], 16)]))
        elif wordpiece:
            out.append(tok[2:].encode() if tok.startswith("##") else b" " + tok.encode())
        else:
            out.append(tok.replace("▁", " ").encode())
    out += [None] * (size - len(out))
    return out


def _boundaries(ids: Sequence[int], surf: Sequence[bytes | None], eos: int | None) -> tuple[str, list[int | None]]:
    """(canonical text, end key of each token or None where the prefix is not clean text)."""
    buf = b""
    ends: list[int | None] = []
    for t in ids:
        piece = surf[t] if 0 <= t < len(surf) else None
        buf += piece or b""
        try:
            ends.append(len(canon(buf.decode("utf-8"))))
        except UnicodeDecodeError:  # inside a multi-byte character split over tokens
            ends.append(None)
    text = canon(buf.decode("utf-8", errors="replace"))
    return text, ends


def _spans(ends: list[int | None]) -> list[tuple[int, int] | None]:
    spans: list[tuple[int, int] | None] = []
    prev: int | None = 0
    for e in ends:
        spans.append((prev, e) if prev is not None and e is not None and e > prev else None)
        if e is not None:
            prev = e
        elif prev is not None:
            prev = None  # the next clean boundary does not start a clean span
    return spans


def _blocks(student: str, teacher: str) -> list[tuple[int, int, int]]:
    """Runs of text both sides agree on: (teacher offset, student offset, length)."""
    if student == teacher:
        return [(0, 0, len(student))]
    return [tuple(m) for m in difflib.SequenceMatcher(None, teacher, student, autojunk=False).get_matching_blocks()
            if m[2] > 0]


def _to_teacher(span: tuple[int, int], blocks: list[tuple[int, int, int]]) -> tuple[int, int] | None:
    """A student span in teacher coordinates, if it lies inside one run both sides agree on."""
    for a, b, size in blocks:
        if b <= span[0] and span[1] <= b + size:
            return (a + span[0] - b, a + span[1] - b)
    return None


def align(teacher_ids: Sequence[int], student_ids: Sequence[int], teacher_surf: Sequence[bytes | None],
          student_surf: Sequence[bytes | None], teacher_eos: int | None, student_eos: int | None,
          student_complete: bool = True) -> list[int]:
    """For each student position, the teacher position with exactly the same text, else -1.

    EOS aligns with EOS when both sequences end with it. A student label cut by
    ``--max-target-length`` (``student_complete`` False) ends with an EOS after part of the text:
    that EOS aligns with nothing (the teacher's final step says where the *whole* text ends).
    """
    t_text, t_ends = _boundaries(teacher_ids, teacher_surf, teacher_eos)
    s_text, s_ends = _boundaries(student_ids, student_surf, student_eos)
    by_span = {span: i for i, span in enumerate(_spans(t_ends)) if span is not None}
    blocks = _blocks(s_text, t_text)
    out = [-1] * len(student_ids)
    for j, span in enumerate(_spans(s_ends)):
        mapped = _to_teacher(span, blocks) if span is not None else None
        i = by_span.get(mapped) if mapped is not None else None
        if i is not None:
            out[j] = i
    if (student_complete and teacher_ids and student_ids and teacher_ids[-1] == teacher_eos
            and student_ids[-1] == student_eos):
        out[-1] = len(teacher_ids) - 1
    return out


@dataclass(frozen=True)
class VocabMap:
    """Teacher id -> student id with the same surface (``exact``), or the same surface with its
    leading space added or removed (``toggled``: tokenizers disagree about a text's first space).
    -1 where no student token matches."""

    exact: np.ndarray
    toggled: np.ndarray

    def coverage(self) -> float:
        """Fraction of teacher ids that map to a student id."""
        return float(((self.exact >= 0) | (self.toggled >= 0)).mean()) if len(self.exact) else 0.0

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, exact=self.exact, toggled=self.toggled)  # plain int arrays: loads without pickle
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> VocabMap:
        with np.load(path, allow_pickle=False) as data:
            return cls(exact=data["exact"], toggled=data["toggled"])


def build_vocab_map(teacher_surf: Sequence[bytes | None], student_surf: Sequence[bytes | None],
                    teacher_eos: int | None, student_eos: int | None) -> VocabMap:
    index: dict[bytes, int] = {}
    for i, s in enumerate(student_surf):
        if s:
            index.setdefault(s, i)
    exact = np.full(len(teacher_surf), -1, np.int64)
    toggled = np.full(len(teacher_surf), -1, np.int64)
    for t, s in enumerate(teacher_surf):
        if not s:
            continue
        exact[t] = index.get(s, -1)
        flip = s[1:] if s.startswith(b" ") else b" " + s
        toggled[t] = index.get(flip, -1) if flip else -1
    if teacher_eos is not None and student_eos is not None and teacher_eos < len(exact):
        exact[teacher_eos] = toggled[teacher_eos] = student_eos
    return VocabMap(exact=exact, toggled=toggled)


def cached_vocab_map(directory: Path, teacher_fp: str, student_fp: str, teacher_surf: Sequence[bytes | None],
                     student_surf: Sequence[bytes | None], teacher_eos: int | None,
                     student_eos: int | None) -> tuple[VocabMap, Path]:
    """Build the map once per (teacher tokenizer, student tokenizer) pair and keep it in ``directory``."""
    key = hashlib.sha256(f"{teacher_fp}:{student_fp}".encode()).hexdigest()[:16]
    path = directory / f"vocab-map-{key}.npz"
    if path.is_file():
        return VocabMap.load(path), path
    if teacher_fp == student_fp:  # one tokenizer: every id is itself, specials included
        same = np.arange(len(teacher_surf), dtype=np.int64)
        vmap = VocabMap(exact=same, toggled=same.copy())
    else:
        vmap = build_vocab_map(teacher_surf, student_surf, teacher_eos, student_eos)
    directory.mkdir(parents=True, exist_ok=True)
    vmap.save(path)
    return vmap, path


def map_topk(vmap: VocabMap, teacher_token: int, student_token: int, topk: np.ndarray) -> np.ndarray | None:
    """Student ids for a 1:1 position's teacher top-k (-1 where unmapped), using the map under which
    the teacher's own token becomes the student's; None when neither map does."""
    for table in (vmap.exact, vmap.toggled):
        if 0 <= teacher_token < len(table) and table[teacher_token] == student_token:
            ids = np.where((topk >= 0) & (topk < len(table)), table[np.clip(topk, 0, len(table) - 1)], -1)
            # Two teacher ids mapping to one student id: keep the first, drop the rest (its mass
            # goes to the tail bucket).
            _, first = np.unique(ids, return_index=True)
            keep = np.zeros(len(ids), bool)
            keep[first] = True
            return np.where(keep, ids, -1)
    return None


# --- one cached row on the student's positions -----------------------------------------------

@dataclass(kw_only=True)
class AlignStats:
    """How much of the teacher's signal crossed the tokenizer boundary."""

    student_positions: int = 0
    aligned_positions: int = 0
    teacher_mass: float = 0.0
    mapped_mass: float = 0.0
    vocab_coverage: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "vocab_coverage": None if self.vocab_coverage is None else round(self.vocab_coverage, 4),
            "aligned_positions": round(self.aligned_positions / max(self.student_positions, 1), 4),
            "mapped_topk_mass": round(self.mapped_mass / self.teacher_mass, 4) if self.teacher_mass else None,
            **self.extra,
        }


@dataclass(frozen=True)
class TokenizerPair:
    """The teacher's (from the cache) and the student's tokenizers, as token surfaces."""

    teacher_surfaces: list[bytes | None]
    student_surfaces: list[bytes | None]
    teacher_eos: int | None
    student_eos: int | None

    @classmethod
    def of(cls, teacher: Any, teacher_vocab_size: int, student: Any) -> TokenizerPair:
        """From the teacher's tokenizer (a cache's: ``LabelCache.tokenizer()``, checked and loaded
        without any code from the cache) and the student's."""
        return cls(surfaces(teacher, teacher_vocab_size), surfaces(student), teacher.eos_token_id,
                   student.eos_token_id)


def aligned_arrays(t_ids: list[int], s_ids: list[int], top_ids: np.ndarray, top_lp: np.ndarray,
                    tails: np.ndarray | None, t_surf: Any, s_surf: Any, t_eos: int | None, s_eos: int | None,
                    vmap: VocabMap | None, mode: str, stats: AlignStats, complete: bool = True) -> dict[str, np.ndarray]:
    """One cached row's teacher signal on the student's positions: the teacher's top-k (ids mapped
    through ``vmap`` for ``aligned``; as stored for ``uld``, which needs no ids) on each 1:1
    position, ``kd_mask`` False elsewhere; ``stats`` counts what crossed."""
    k = top_ids.shape[1]
    n = len(s_ids)
    ids = np.full((n, k), -1, np.int64)
    lp = np.zeros((n, k), np.float32)
    tail = np.full(n, -np.inf, np.float32)
    mask = np.zeros(n, bool)
    pairs = align(t_ids, s_ids, t_surf, s_surf, t_eos, s_eos, student_complete=complete)
    stats.student_positions += n
    for j, i in enumerate(pairs):
        if i < 0:
            continue
        if mode == "uld":
            ids[j], lp[j], mask[j] = top_ids[i], top_lp[i], True
            stats.aligned_positions += 1
            continue
        mapped = map_topk(vmap, t_ids[i], s_ids[j], top_ids[i]) if vmap is not None else None
        if mapped is None:
            continue
        ids[j], lp[j], mask[j] = mapped, top_lp[i], True
        if tails is not None:
            tail[j] = tails[i]
        stats.aligned_positions += 1
        probs = np.exp(top_lp[i].astype(np.float64))
        stats.teacher_mass += float(probs.sum())
        stats.mapped_mass += float(probs[mapped >= 0].sum())
    out = {"topk_ids": ids, "topk_logprobs": lp, "kd_mask": mask}
    if tails is not None:
        out["teacher_tail"] = tail
    return out
