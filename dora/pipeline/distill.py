"""What the student learns from each cached row, per distillation loss (``--kd-loss``).

* ``topk``: same tokenizer as the teacher. Labels are the teacher's ``target_ids``; every
  position carries the teacher's stored top-k (exact top-k KL with a tail bucket).
* ``aligned``: another tokenizer. Labels are the student's tokens of the pseudo-label text;
  1:1 positions (same text span, see ``dora.pipeline.align``) carry the teacher's top-k mapped
  into the student vocabulary (unmapped ids' mass goes to the tail bucket); other positions
  get cross-entropy. With identical tokenizers it is exactly ``topk``.
* ``uld``: cross-entropy on the student's tokens plus, on the 1:1 positions, the vocabulary-free
  ULD loss (L1 between sorted probability vectors) weighted by 1 - alpha. ULD says how peaked
  the teacher is, not which token it prefers, so it complements the text loss (as in Boizard
  et al.) rather than replacing it.
* ``labels``: closed-label tasks. The student's normalised distribution over the label
  verbalisers (each scored as a sequence) matches the teacher's stored ``label_logprobs``.
* ``sequence``: the pseudo-label text only (cross-entropy, sequence-level KD).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from dora.cache import LabelCache
from dora.pipeline.align import VocabMap, align, map_topk, surfaces
from dora.pipeline.encoding import IGNORE, collate, decoder_inputs, encode_pair, target_ids
from dora.pipeline.losses import (
    label_set_kl,
    token_cross_entropy,
    topk_kl_per_token,
    topk_kl_per_token_v1,
    uld_per_token,
)

KdLoss = Literal["auto", "topk", "aligned", "uld", "labels", "sequence"]


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
    def of(cls, cache: LabelCache, student_tokenizer: Any) -> TokenizerPair:
        teacher = cache.tokenizer()  # checked, and loaded without any code from the cache
        return cls(surfaces(teacher, cache.manifest.teacher.vocab_size), surfaces(student_tokenizer),
                   teacher.eos_token_id, student_tokenizer.eos_token_id)


def _flat(column: Any, k: int | None = None) -> np.ndarray:
    values = column.combine_chunks().flatten()
    if k is not None:
        values = values.flatten()
    out = values.to_numpy(zero_copy_only=False)
    return out.reshape(-1, k) if k is not None else out


def cache_columns(mode: str, tail: bool = False) -> list[str]:
    """The shard columns loss ``mode`` reads (``tail``: the stored tail masses, format 2)."""
    need_topk = mode in ("topk", "aligned", "uld")
    return (["source", "target"] + (["target_ids", "topk_ids", "topk_logprobs"] if need_topk else [])
            + (["tail_logprobs"] if tail and mode in ("topk", "aligned") else [])
            + (["label_logprobs"] if mode == "labels" else []))


def tail_column(cache: LabelCache, mode: str, temperature: float) -> int | None:
    """Which ``tail_logprobs`` column holds the teacher's tail at ``temperature`` (None: a format 1
    cache, which has none). Raises when the cache stores tails but not at this temperature."""
    from dora.errors import CacheError

    stored = cache.manifest.generation.kd_temperatures
    if mode not in ("topk", "aligned") or not stored:
        return None
    for i, t in enumerate(stored):
        if abs(float(t) - temperature) < 1e-9:
            return i
    shown = ", ".join(f"{float(t):g}" for t in stored)
    how = ("relabel with --engine transformers (vLLM gives the tail at T = 1 only)"
           if cache.manifest.generation.backend == "vllm" else
           f"relabel with --kd-temperatures {','.join(f'{float(t):g}' for t in sorted({*stored, temperature}))}")
    raise CacheError(f"{cache.root}: the cache stores the teacher's tail mass at T = {shown}, not at --temperature "
                     f"{temperature:g}; train with --temperature {float(stored[0]):g}, or {how}")


def cache_features(cache: LabelCache, tokenizer: Any, prefix: str, mode: str, **options: Any) -> list[dict[str, Any]]:
    """One training feature per cached row for loss ``mode``, all shards at once (benchmarks and
    tools; training streams them a shard at a time). ``options``: those of ``table_features``."""
    if mode in ("aligned", "uld") and options.get("pair") is None:
        options["pair"] = TokenizerPair.of(cache, tokenizer)
    features: list[dict[str, Any]] = []
    for table in cache.iter_tables(cache_columns(mode, options.get("tail_index") is not None)):
        features += table_features(table, cache.manifest.generation.k, tokenizer, prefix, mode, **options)
    return features


def table_features(
    table: Any,
    k: int,
    tokenizer: Any,
    prefix: str,
    mode: str,
    *,
    max_source_length: int,
    max_target_length: int,
    vmap: VocabMap | None = None,
    pair: TokenizerPair | None = None,
    stats: AlignStats | None = None,
    tail_index: int | None = None,
) -> list[dict[str, Any]]:
    """Features of one shard's table (columns: ``cache_columns(mode, tail_index is not None)``);
    ``aligned`` and ``uld`` need the tokenizer ``pair`` (and ``aligned`` the ``vmap``);
    ``tail_index`` picks the stored tail at the training temperature (see ``tail_column``)."""
    need_topk = mode in ("topk", "aligned", "uld")
    stats = stats if stats is not None else AlignStats()
    features: list[dict[str, Any]] = []
    sources, targets = table.column("source").to_pylist(), table.column("target").to_pylist()
    tails = None
    if need_topk:
        ids_col = table.column("target_ids").combine_chunks()
        lengths = ids_col.value_lengths().to_numpy()
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        flat_ids = _flat(table.column("target_ids")).astype(np.int64)
        top_ids = _flat(table.column("topk_ids"), k).astype(np.int64)
        top_lp = _flat(table.column("topk_logprobs"), k).astype(np.float32)
        if tail_index is not None and mode in ("topk", "aligned"):
            column = table.column("tail_logprobs").combine_chunks()
            width = column.type.value_type.list_size
            tails = _flat(table.column("tail_logprobs"), width)[:, tail_index].astype(np.float32)
    label_lp = table.column("label_logprobs").to_pylist() if mode == "labels" else None
    for i, (source, target) in enumerate(zip(sources, targets)):
        text = prefix + source
        if mode == "topk":
            lo, n = int(starts[i]), min(int(lengths[i]), max_target_length)
            feat = encode_pair(tokenizer, "seq2seq", text, flat_ids[lo : lo + n].tolist(), max_source_length)
            feat.update(topk_ids=top_ids[lo : lo + n], topk_logprobs=top_lp[lo : lo + n], kd_mask=np.ones(n, bool))
            if tails is not None:
                feat["teacher_tail"] = tails[lo : lo + n]
        elif mode in ("aligned", "uld"):
            lo, n = int(starts[i]), int(lengths[i])
            t_ids = flat_ids[lo : lo + n].tolist()
            full = tokenizer(target, add_special_tokens=False)["input_ids"]
            labels = [*full[: max_target_length - 1], tokenizer.eos_token_id]  # as target_ids() cuts
            feat = encode_pair(tokenizer, "seq2seq", text, labels, max_source_length)
            assert pair is not None  # set above for these modes
            feat.update(_aligned_arrays(t_ids, labels, top_ids[lo : lo + n], top_lp[lo : lo + n],
                                        None if tails is None else tails[lo : lo + n],
                                        pair.teacher_surfaces, pair.student_surfaces, pair.teacher_eos,
                                        pair.student_eos, vmap, mode, stats,
                                        complete=len(full) <= max_target_length - 1))
        else:
            feat = encode_pair(tokenizer, "seq2seq", text, target_ids(tokenizer, target, max_target_length),
                               max_source_length)
            if label_lp is not None:
                feat["label_logprobs"] = np.asarray(label_lp[i], np.float32)
        features.append(feat)
    return features


def _aligned_arrays(t_ids: list[int], s_ids: list[int], top_ids: np.ndarray, top_lp: np.ndarray,
                    tails: np.ndarray | None, t_surf: Any, s_surf: Any, t_eos: int | None, s_eos: int | None,
                    vmap: VocabMap | None, mode: str, stats: AlignStats, complete: bool = True) -> dict[str, np.ndarray]:
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


def collate_kd(features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Batch gold and cache rows together; ``kd_mask`` marks positions with a stored top-k and
    ``label_rows`` rows with stored label log-probabilities."""
    batch = collate(features, pad_id)
    width = batch["labels"].shape[1]
    k = next((f["topk_ids"].shape[1] for f in features if "topk_ids" in f), 1)
    topk_ids = np.full((len(features), width, k), -1, dtype=np.int64)
    topk_lp = np.zeros((len(features), width, k), dtype=np.float32)
    kd_mask = np.zeros((len(features), width), dtype=bool)
    tails = any("teacher_tail" in f for f in features)
    teacher_tail = np.full((len(features), width), -np.inf, dtype=np.float32)
    for i, f in enumerate(features):
        if "topk_ids" in f:
            n = len(f["topk_ids"])
            topk_ids[i, :n] = f["topk_ids"]
            topk_lp[i, :n] = f["topk_logprobs"]
            kd_mask[i, :n] = f["kd_mask"]
            if tails:
                teacher_tail[i, :n] = f["teacher_tail"]
    batch.update(topk_ids=torch.from_numpy(topk_ids), topk_logprobs=torch.from_numpy(topk_lp),
                 kd_mask=torch.from_numpy(kd_mask))
    if tails:
        batch["teacher_tail"] = torch.from_numpy(teacher_tail)
    c = next((len(f["label_logprobs"]) for f in features if "label_logprobs" in f), 0)
    if c:
        rows = np.array(["label_logprobs" in f for f in features])
        lab = np.zeros((len(features), c), np.float32)
        for i, f in enumerate(features):
            if "label_logprobs" in f:
                lab[i] = f["label_logprobs"]
        batch.update(label_logprobs=torch.from_numpy(lab), label_rows=torch.from_numpy(rows))
    return batch


def student_loss(
    model: Any,
    batch: dict[str, torch.Tensor],
    *,
    mode: str,
    temperature: float,
    alpha: float,
    verbalisers: list[list[int]] | None = None,
) -> torch.Tensor:
    """Per label token: (1 - alpha) * KD + alpha * CE where a teacher signal is stored, CE elsewhere
    (gold rows, unaligned positions); averaged over the batch's label tokens. ``uld`` adds
    (1 - alpha) * ULD to CE on aligned positions; ``labels`` weights the cache rows' CE by alpha and
    adds (1 - alpha) * the label-set KL per cache row, averaged over those rows.

    One forward pass gives the logits (no loss inside the model); one log-softmax per temperature
    serves every term: at 1 for cross-entropy, at T for KD (the same tensor when T = 1). A batch
    with ``teacher_tail`` (format 2 caches) gets the exact bucketed KL at T; without it, the
    format 1 loss.
    """
    labels = batch["labels"]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   decoder_input_ids=decoder_inputs(model, labels)).logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    ce = token_cross_entropy(logp, labels)
    n_tokens = (labels != IGNORE).sum().clamp(min=1)
    kd_mask = batch["kd_mask"]
    per_token = ce
    if mode in ("uld", "topk", "aligned") and kd_mask.any():
        tempered = logp if temperature == 1.0 else torch.log_softmax(logits / temperature, dim=-1)
        if mode == "uld":
            uld = uld_per_token(tempered, batch["topk_logprobs"], temperature)
            per_token = ce + torch.where(kd_mask, (1 - alpha) * uld, torch.zeros_like(uld))
        else:
            ids = batch["topk_ids"]
            valid = ids >= 0
            # All slots valid (same tokenizer): the exact same-vocabulary computation.
            valid = None if bool(valid[kd_mask].all()) else valid | ~kd_mask.unsqueeze(-1)
            if "teacher_tail" in batch:
                kd = topk_kl_per_token(tempered, ids.clamp(min=0), batch["topk_logprobs"], batch["teacher_tail"],
                                       temperature, valid)
            else:
                kd = topk_kl_per_token_v1(logp, ids.clamp(min=0), batch["topk_logprobs"], temperature, valid)
            per_token = torch.where(kd_mask, (1 - alpha) * kd + alpha * ce, ce)
    if mode == "labels" and "label_rows" in batch:
        rows = batch["label_rows"]
        per_token = torch.where(rows.unsqueeze(-1), alpha * ce, ce)
        loss = per_token.sum() / n_tokens
        if rows.any() and verbalisers:
            student = torch.stack([_sequence_logprob(model, batch, ids) for ids in verbalisers], dim=-1)
            kl = label_set_kl(student[rows], batch["label_logprobs"][rows], temperature)
            loss = loss + (1 - alpha) * kl.mean()
        return loss
    return per_token.sum() / n_tokens


def _sequence_logprob(model: Any, batch: dict[str, torch.Tensor], ids: list[int]) -> torch.Tensor:
    """(B,) log-probability of the token sequence ``ids`` as the output for every row."""
    labels = torch.tensor(ids, device=batch["input_ids"].device).expand(len(batch["input_ids"]), -1).contiguous()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   decoder_input_ids=decoder_inputs(model, labels)).logits
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1).sum(-1)
