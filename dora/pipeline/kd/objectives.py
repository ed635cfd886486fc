"""The distillation objectives, one class per ``--kd-loss``, and the registry that names them.

* ``topk``: same tokenizer as the teacher. Labels are the teacher's ``target_ids``; every
  position carries the teacher's stored top-k (exact top-k KL with a tail bucket).
* ``aligned``: another tokenizer. Labels are the student's tokens of the pseudo-label text;
  1:1 positions (same text span, see ``dora.pipeline.kd.align``) carry the teacher's top-k mapped
  into the student vocabulary (unmapped ids' mass goes to the tail bucket); other positions
  get cross-entropy. With identical tokenizers it is exactly ``topk``.
* ``uld``: cross-entropy on the student's tokens plus, on the 1:1 positions, the vocabulary-free
  ULD loss (L1 between sorted probability vectors) weighted by 1 - alpha. ULD says how peaked
  the teacher is, not which token it prefers, so it complements the text loss (as in Boizard
  et al.) rather than replacing it.
* ``labels``: closed-label tasks. The student's normalised distribution over the label
  verbalisers (each scored as a sequence) matches the teacher's stored ``label_logprobs``.
* ``sequence``: the pseudo-label text only (cross-entropy, sequence-level KD).
* ``none``: gold labels only (the annotate route): cross-entropy.

Every objective answers the same questions: which cache columns it reads (``columns``), what
the student learns from one shard (``featurise``), its loss from the student's logits and a
batch (``loss``), and how it describes itself in ``run.json`` (``record``) and on the console
(``describe``). ``OBJECTIVES`` holds them by name; the CLI's ``--kd-loss`` choices and help come
from it (``KD_LOSSES``, ``kd_loss_help``), so a new loss is one class here.

torch is imported where a loss is computed, not at the top: the CLI reads this registry for
its help text, and ``dora --help`` must not load torch.

Example (what ``dora train-student`` does with a batch)::

    objective = OBJECTIVES["topk"].build(cache=cache, student_tokenizer=tok, temperature=2.0, alpha=0.0,
                                         out_dir=out, max_target_length=64)
    features = objective.featurise(cache.read_shard(entry, objective.columns()), tok, prefix="fever: ",
                                   max_source_length=256, max_target_length=64)
    loss = training_loss(objective, model, collate_kd(features, tok.pad_token_id))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from dora.errors import CacheError
from dora.pipeline.data.encoding import encode_pair, target_ids
from dora.pipeline.kd.align import AlignStats, TokenizerPair, VocabMap, aligned_arrays
from dora.pipeline.models.kinds import ModelKind
from dora.progress import note, warn

if TYPE_CHECKING:
    import torch

    from dora.cache import LabelCache
    from dora.cache.shard import DecodedShard

Forward = Callable[["torch.Tensor"], "torch.Tensor"]
"""Logits (B, L, V) of the student for labels (B, L), on the batch's inputs: position t's logits
predict label t (a seq2seq decoder's, or a decoder-only model's after the prompt)."""

TOPK_COLUMNS = ("target_ids", "topk_ids", "topk_logprobs")


class Objective:
    """Cross-entropy on the pseudo-label text: the base every objective refines."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    """What ``--kd-loss NAME`` is for, in a few words ("" keeps it out of the CLI's choices)."""
    topk: ClassVar[bool] = False
    """Reads the teacher's ``target_ids`` and stored top-k."""
    tail: ClassVar[bool] = False
    """Reads the teacher's tail mass at the training temperature (format 2 caches store it)."""
    cross_tokenizer: ClassVar[bool] = False
    """Needs the teacher's tokenizer (``build`` takes it as ``teacher_tokenizer``)."""
    label_set: ClassVar[bool] = False
    """Reads the teacher's ``label_logprobs``."""

    def __init__(self, *, temperature: float = 2.0, alpha: float = 0.0, tail_index: int | None = None) -> None:
        self.temperature, self.alpha = temperature, alpha
        self.tail_index = tail_index if self.tail else None

    @classmethod
    def build(cls, *, cache: LabelCache, student_tokenizer: Any, temperature: float, alpha: float, out_dir: Path,
              max_target_length: int, teacher_tokenizer: Any = None) -> Objective:
        """The objective for training on ``cache`` (the stage's settings; subclasses take what they need)."""
        return cls(temperature=temperature, alpha=alpha, tail_index=cls.stored_tail(cache, temperature))

    @classmethod
    def stored_tail(cls, cache: LabelCache, temperature: float) -> int | None:
        """Which ``tail_logprobs`` column holds the teacher's tail at ``temperature`` (None: this
        objective reads no tail, or a format 1 cache has none). Raises when the cache stores tails
        but not at this temperature."""
        stored = cache.manifest.generation.kd_temperatures
        if not cls.tail or not stored:
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

    def columns(self) -> list[str]:
        """The shard columns ``featurise`` reads."""
        return (["source", "target"] + (list(TOPK_COLUMNS) if self.topk else [])
                + (["tail_logprobs"] if self.tail_index is not None else [])
                + (["label_logprobs"] if self.label_set else []))

    def featurise(self, table: Any, tokenizer: Any, *, prefix: str, max_source_length: int,
                  max_target_length: int) -> list[dict[str, Any]]:
        """One training feature per row of a shard's ``table`` (read with ``columns()``)."""
        from dora.cache.shard import DecodedShard

        shard = DecodedShard(table)
        return [self.feature(shard, i, prefix + source, tokenizer, max_source_length, max_target_length)
                for i, source in enumerate(shard.sources)]

    def feature(self, shard: DecodedShard, i: int, text: str, tokenizer: Any, max_source_length: int,
                max_target_length: int) -> dict[str, Any]:
        """Row ``i``: the pseudo-label text as the labels."""
        return encode_pair(tokenizer, "seq2seq", text, target_ids(tokenizer, shard.targets[i], max_target_length),
                           max_source_length)

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], forward: Forward) -> torch.Tensor:
        """The batch's loss from the student's ``logits`` (B, L, V) for ``batch["labels"]``, averaged
        over its label tokens; ``forward`` gives logits for other labels (one pass each), for
        objectives that score more than the batch's labels."""
        import torch

        from dora.pipeline.data.encoding import IGNORE
        from dora.pipeline.kd.losses import token_cross_entropy

        labels = batch["labels"]
        logp = torch.log_softmax(logits, dim=-1)
        per_token = self.per_token(logits, logp, token_cross_entropy(logp, labels), batch)
        return per_token.sum() / (labels != IGNORE).sum().clamp(min=1)

    def per_token(self, logits: torch.Tensor, logp: torch.Tensor, ce: torch.Tensor,
                  batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, L) loss per label position from the logits, their log-softmax at 1 and the
        cross-entropy ``ce`` (0 where labels are -100)."""
        return ce

    def tempered(self, logits: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
        """The student's log-softmax at T (the same tensor at T = 1: one log-softmax per temperature)."""
        import torch

        return logp if self.temperature == 1.0 else torch.log_softmax(logits / self.temperature, dim=-1)

    def describe(self) -> str:
        return "loss: cross-entropy on the pseudo-label text (sequence-level KD)"

    def record(self) -> dict[str, Any]:
        """What ``run.json`` says about the loss."""
        return {"kd_loss": self.name, "alignment": None}


class Sequence(Objective):
    name = "sequence"
    help = "text only"


class GoldOnly(Objective):
    """No cache: gold labels only (the annotate route)."""

    name = "none"

    def describe(self) -> str:
        return "loss: cross-entropy on gold labels"


class TopK(Objective):
    name = "topk"
    help = "same tokenizer"
    topk = tail = True

    @staticmethod
    def warn_format_1(cache: LabelCache, temperature: float) -> None:
        if not cache.manifest.generation.kd_temperatures:
            warn(f"{cache.root} is a format 1 cache: it stores no teacher tail mass, so KD at T={temperature:g} uses "
                 "the format 1 loss, which drops the tail's share of the tempered teacher; relabel with this dora "
                 "for the exact loss")

    @classmethod
    def build(cls, *, cache: LabelCache, student_tokenizer: Any, temperature: float, alpha: float, out_dir: Path,
              max_target_length: int, teacher_tokenizer: Any = None) -> Objective:
        cls.warn_format_1(cache, temperature)
        return super().build(cache=cache, student_tokenizer=student_tokenizer, temperature=temperature, alpha=alpha,
                             out_dir=out_dir, max_target_length=max_target_length, teacher_tokenizer=teacher_tokenizer)

    def feature(self, shard: DecodedShard, i: int, text: str, tokenizer: Any, max_source_length: int,
                max_target_length: int) -> dict[str, Any]:
        """Row ``i``: the teacher's tokens as labels, its top-k (and tail) on every position."""
        lo, n = int(shard.starts[i]), min(int(shard.lengths[i]), max_target_length)
        feat = encode_pair(tokenizer, "seq2seq", text, shard.target_ids[lo : lo + n].tolist(), max_source_length)
        feat.update(topk_ids=shard.topk_ids[lo : lo + n].astype(np.int64),
                    topk_logprobs=shard.topk_logprobs[lo : lo + n].astype(np.float32), kd_mask=np.ones(n, bool))
        if self.tail_index is not None:
            feat["teacher_tail"] = shard.tail_logprobs[lo : lo + n, self.tail_index].astype(np.float32)
        return feat

    def per_token(self, logits: torch.Tensor, logp: torch.Tensor, ce: torch.Tensor,
                  batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(1 - alpha) * KD + alpha * CE where a teacher signal is stored (``kd_mask``), CE elsewhere
        (gold rows, unaligned positions). A batch with ``teacher_tail`` (format 2 caches) gets the
        exact bucketed KL at T; without it, the format 1 loss."""
        import torch

        from dora.pipeline.kd.losses import topk_kl_per_token, topk_kl_per_token_v1

        kd_mask = batch["kd_mask"]
        if not kd_mask.any():
            return ce
        ids = batch["topk_ids"]
        valid = ids >= 0
        # All slots valid (same tokenizer): the exact same-vocabulary computation.
        valid = None if bool(valid[kd_mask].all()) else valid | ~kd_mask.unsqueeze(-1)
        if "teacher_tail" in batch:
            kd = topk_kl_per_token(self.tempered(logits, logp), ids.clamp(min=0), batch["topk_logprobs"],
                                   batch["teacher_tail"], self.temperature, valid)
        else:
            kd = topk_kl_per_token_v1(logp, ids.clamp(min=0), batch["topk_logprobs"], self.temperature, valid)
        return torch.where(kd_mask, (1 - self.alpha) * kd + self.alpha * ce, ce)

    def describe(self) -> str:
        return f"loss: top-k KL at T={self.temperature} (alpha={self.alpha} on the pseudo-label)"


class _Crossing(Objective):
    """Objectives across tokenizers: the student's tokens of the pseudo-label text as labels, the
    teacher's signal on the 1:1 positions (``dora.pipeline.kd.align``)."""

    topk = cross_tokenizer = True

    def __init__(self, *, temperature: float = 2.0, alpha: float = 0.0, tail_index: int | None = None,
                 pair: TokenizerPair | None = None, vmap: VocabMap | None = None,
                 stats: AlignStats | None = None) -> None:
        super().__init__(temperature=temperature, alpha=alpha, tail_index=tail_index)
        self.pair, self.vmap = pair, vmap
        self.stats = stats if stats is not None else AlignStats()

    def feature(self, shard: DecodedShard, i: int, text: str, tokenizer: Any, max_source_length: int,
                max_target_length: int) -> dict[str, Any]:
        lo, n = int(shard.starts[i]), int(shard.lengths[i])
        full = tokenizer(shard.targets[i], add_special_tokens=False)["input_ids"]
        labels = [*full[: max_target_length - 1], tokenizer.eos_token_id]  # as target_ids() cuts
        feat = encode_pair(tokenizer, "seq2seq", text, labels, max_source_length)
        p = self.pair
        assert p is not None, "build() gives a cross-tokenizer objective its tokenizer pair"
        tails = (None if self.tail_index is None
                 else shard.tail_logprobs[lo : lo + n, self.tail_index].astype(np.float32))
        feat.update(aligned_arrays(shard.target_ids[lo : lo + n].tolist(), labels,
                                   shard.topk_ids[lo : lo + n].astype(np.int64),
                                   shard.topk_logprobs[lo : lo + n].astype(np.float32), tails,
                                   p.teacher_surfaces, p.student_surfaces, p.teacher_eos, p.student_eos, self.vmap,
                                   self.name, self.stats, complete=len(full) <= max_target_length - 1))
        return feat

    def record(self) -> dict[str, Any]:
        return {"kd_loss": self.name, "alignment": self.stats.to_dict()}


class Aligned(_Crossing, TopK):
    name = "aligned"
    help = "another tokenizer"

    @classmethod
    def build(cls, *, cache: LabelCache, student_tokenizer: Any, temperature: float, alpha: float, out_dir: Path,
              max_target_length: int, teacher_tokenizer: Any = None) -> Objective:
        from dora.cache import tokenizer_fingerprint
        from dora.pipeline.kd.align import cached_vocab_map

        cls.warn_format_1(cache, temperature)
        pair = TokenizerPair.of(teacher_tokenizer, cache.manifest.teacher.vocab_size, student_tokenizer)
        vmap, map_path = cached_vocab_map(out_dir, cache.manifest.teacher.tokenizer_fingerprint,
                                          tokenizer_fingerprint(student_tokenizer), pair.teacher_surfaces,
                                          pair.student_surfaces, pair.teacher_eos, pair.student_eos)
        stats = AlignStats(vocab_coverage=vmap.coverage(), extra={"vocab_map": map_path.name})
        return cls(temperature=temperature, alpha=alpha, tail_index=cls.stored_tail(cache, temperature), pair=pair,
                   vmap=vmap, stats=stats)

    def describe(self) -> str:
        return f"loss: aligned top-k KL at T={self.temperature} across tokenizers (alpha={self.alpha})"


class Uld(_Crossing):
    name = "uld"
    help = "another tokenizer, vocabulary-free"

    @classmethod
    def build(cls, *, cache: LabelCache, student_tokenizer: Any, temperature: float, alpha: float, out_dir: Path,
              max_target_length: int, teacher_tokenizer: Any = None) -> Objective:
        pair = TokenizerPair.of(teacher_tokenizer, cache.manifest.teacher.vocab_size, student_tokenizer)
        return cls(temperature=temperature, alpha=alpha, pair=pair)

    def per_token(self, logits: torch.Tensor, logp: torch.Tensor, ce: torch.Tensor,
                  batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """CE everywhere plus (1 - alpha) * ULD on the 1:1 positions."""
        import torch

        from dora.pipeline.kd.losses import uld_per_token

        kd_mask = batch["kd_mask"]
        if not kd_mask.any():
            return ce
        uld = uld_per_token(self.tempered(logits, logp), batch["topk_logprobs"], self.temperature)
        return ce + torch.where(kd_mask, (1 - self.alpha) * uld, torch.zeros_like(uld))

    def describe(self) -> str:
        return f"loss: ULD on aligned positions at T={self.temperature} (alpha={self.alpha})"


class Labels(Objective):
    name = "labels"
    help = "closed label sets"
    label_set = True

    def __init__(self, *, temperature: float = 2.0, alpha: float = 0.0, tail_index: int | None = None,
                 verbalisers: list[list[int]] | None = None) -> None:
        super().__init__(temperature=temperature, alpha=alpha, tail_index=tail_index)
        self.verbalisers = verbalisers

    @classmethod
    def build(cls, *, cache: LabelCache, student_tokenizer: Any, temperature: float, alpha: float, out_dir: Path,
              max_target_length: int, teacher_tokenizer: Any = None) -> Objective:
        verbalisers = [target_ids(student_tokenizer, label, max_target_length)
                       for label in cache.manifest.generation.label_set or []]
        return cls(temperature=temperature, alpha=alpha, verbalisers=verbalisers)

    def feature(self, shard: DecodedShard, i: int, text: str, tokenizer: Any, max_source_length: int,
                max_target_length: int) -> dict[str, Any]:
        feat = super().feature(shard, i, text, tokenizer, max_source_length, max_target_length)
        feat["label_logprobs"] = shard.label_logprobs[i]
        return feat

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], forward: Forward) -> torch.Tensor:
        """The cache rows' CE weighted by alpha, plus (1 - alpha) * the label-set KL per cache row,
        averaged over those rows (each verbaliser scored as a sequence: one ``forward`` each)."""
        if "label_rows" not in batch:
            return super().loss(logits, batch, forward)
        import torch

        from dora.pipeline.data.encoding import IGNORE
        from dora.pipeline.kd.losses import label_set_kl, token_cross_entropy

        labels, rows = batch["labels"], batch["label_rows"]
        ce = token_cross_entropy(torch.log_softmax(logits, dim=-1), labels)
        loss = torch.where(rows.unsqueeze(-1), self.alpha * ce, ce).sum() / (labels != IGNORE).sum().clamp(min=1)
        if rows.any() and self.verbalisers:
            student = torch.stack([_sequence_logprob(forward, batch, ids) for ids in self.verbalisers], dim=-1)
            kl = label_set_kl(student[rows], batch["label_logprobs"][rows], self.temperature)
            loss = loss + (1 - self.alpha) * kl.mean()
        return loss

    def describe(self) -> str:
        return (f"loss: label-set KL at T={self.temperature} over the cache's labels (alpha={self.alpha} on the "
                "pseudo-label)")


def _sequence_logprob(forward: Forward, batch: dict[str, torch.Tensor], ids: list[int]) -> torch.Tensor:
    """(B,) log-probability of the token sequence ``ids`` as the output for every row."""
    import torch

    labels = torch.tensor(ids, device=batch["input_ids"].device).expand(len(batch["input_ids"]), -1).contiguous()
    return torch.log_softmax(forward(labels), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1).sum(-1)


# --- the registry ---------------------------------------------------------------------------------

OBJECTIVES: dict[str, type[Objective]] = {c.name: c for c in (TopK, Aligned, Uld, Labels, Sequence, GoldOnly)}
"""Every objective by name; those with ``help`` are ``--kd-loss`` choices."""

KD_LOSSES: tuple[str, ...] = ("auto", *(name for name, c in OBJECTIVES.items() if c.help))
"""``--kd-loss`` values: ``auto`` picks one from the tokenizers (``choose``)."""


def kd_loss_help() -> str:
    """The ``--kd-loss`` help text, from the registry."""
    listed = ", ".join(f"{name} ({OBJECTIVES[name].help})" for name in KD_LOSSES[1:])
    return f"Distillation loss: auto (topk when the tokenizers match, else aligned), {listed}."


def choose(requested: str, cache: LabelCache | None, student_tokenizer: Any, student_vocab_size: int) -> str:
    """The objective's name for training on ``cache`` (``none`` without one): ``requested`` when
    the cache allows it, or for ``auto`` topk when the student shares the teacher's tokenizer and
    aligned when it does not."""
    if cache is None:
        return "none"
    from dora.cache import tokenizer_fingerprint

    teacher = cache.manifest.teacher
    student_fp = tokenizer_fingerprint(student_tokenizer)
    same = teacher.tokenizer_fingerprint == student_fp and teacher.vocab_size <= student_vocab_size
    if requested == "topk" and not same:
        raise CacheError(
            f"{cache.root}: --kd-loss topk needs the teacher's tokenizer, but the cache's tokenizer fingerprint "
            f"{teacher.tokenizer_fingerprint[:12]}... differs from the student's {student_fp[:12]}... "
            f"(or its vocabulary is larger); use --kd-loss {_either(n for n in KD_LOSSES[1:] if n != 'topk')}"
        )
    if OBJECTIVES.get(requested, Objective).label_set and not cache.manifest.generation.label_set:
        raise CacheError(f"{cache.root}: --kd-loss {requested} needs the teacher's label_logprobs, which this cache "
                         "lacks; relabel with a closed-label task or --labels A,B,...")
    if requested != "auto":
        return "topk" if requested == "aligned" and same else requested
    if same:
        return "topk"
    note("the cache's teacher tokenizer differs from the student's: distilling through the aligned top-k KL "
         f"(--kd-loss aligned); --kd-loss {_either(n for n in KD_LOSSES[1:] if n not in ('topk', 'aligned'))} "
         "are the alternatives")
    return "aligned"


def _either(names: Iterable[str]) -> str:
    """"a, b or c"."""
    *rest, last = names
    return f"{', '.join(rest)} or {last}" if rest else last


def collate_kd(features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Batch gold and cache rows together; ``kd_mask`` marks positions with a stored top-k and
    ``label_rows`` rows with stored label log-probabilities."""
    import torch

    from dora.pipeline.data.encoding import collate

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


def seq2seq_forward(model: Any, batch: dict[str, torch.Tensor]) -> Forward:
    """The student's forward pass on the batch's inputs, for any decoder labels: logits in float32,
    and no loss inside the model (the objective computes it)."""
    from dora.pipeline.data.encoding import decoder_inputs

    def forward(labels: torch.Tensor) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     decoder_input_ids=decoder_inputs(model, labels)).logits.float()

    return forward


def causal_forward(model: Any, batch: dict[str, torch.Tensor]) -> Forward:
    """A decoder-only student's forward pass on prompt + labels, with logits aligned to the labels
    exactly as ``seq2seq_forward`` gives them, so every objective works unchanged.

    The batch holds prompts right-padded (``input_ids``, ``attention_mask``), as for an encoder.
    Each prompt is moved to the right edge of its block (padding on the left), the labels follow
    it, and positions count real tokens only; the logits at the last prompt token and at every
    label but the last predict the labels. Only those positions' logits are computed
    (``logits_to_keep``), so a large vocabulary costs memory for the labels, not the prompt.
    """
    import torch

    from dora.pipeline.data.encoding import IGNORE

    prompt, mask = batch["input_ids"], batch["attention_mask"]
    width = prompt.shape[1]
    shift = width - mask.sum(-1)  # (B,) padding of each prompt
    index = (torch.arange(width, device=prompt.device).unsqueeze(0) - shift.unsqueeze(1)) % width
    left_ids, left_mask = prompt.gather(1, index), mask.gather(1, index)

    def forward(labels: torch.Tensor) -> torch.Tensor:
        real = labels != IGNORE
        ids = torch.cat([left_ids, torch.where(real, labels, torch.zeros_like(labels))], dim=1)
        attention = torch.cat([left_mask, real.to(left_mask.dtype)], dim=1)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=attention, position_ids=positions,
                    logits_to_keep=labels.shape[1] + 1)
        return out.logits[:, :-1].float()

    return forward


def student_forward(kind: ModelKind) -> Callable[[Any, dict[str, torch.Tensor]], Forward]:
    """``seq2seq_forward`` or ``causal_forward`` for a student of that kind."""
    return seq2seq_forward if kind == "seq2seq" else causal_forward


def training_loss(objective: Objective, model: Any, batch: dict[str, torch.Tensor],
                  kind: ModelKind = "seq2seq") -> torch.Tensor:
    """What one training step computes: one forward pass of the student (``seq2seq_forward`` or
    ``causal_forward``), then the objective's loss on its logits."""
    forward = student_forward(kind)(model, batch)
    return objective.loss(forward(batch["labels"]), batch, forward)
