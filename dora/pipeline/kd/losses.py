"""Distillation losses as pure functions of tensors.

Same-vocabulary KD from a stored top-k. The paper's loss is ``T^2 * KL(p_T || q_T)`` over the
full vocabulary, with ``p_T = softmax(teacher_logits / T)`` and ``q_T`` the student's. A cache
keeps, per generated token, the teacher's top-k log-probabilities (at T = 1) and, since format
2, the log of its mass *outside* the top-k at each stored temperature. At T the teacher's
distribution is then known exactly on the k stored ids and as one *tail bucket* for the rest:

    p_T(i) = (1 - tail_T) * softmax(lp / T)_i   for the k stored ids,   p_T(tail) = tail_T

(the order of the ids does not change with T, so the top-k at T is the top-k at 1). The
student is bucketed the same way (its exact mass on those ids, and on everything else), and

    loss = T^2 * [ sum_i p_T(i) log(p_T(i) / q_T(i)) + p_T(tail) log(p_T(tail) / q_T(tail)) ]

This is exactly the full-vocabulary loss when k is the vocabulary, zero when the student equals
the teacher, and otherwise the full loss minus the teacher-weighted KL *inside* the tail (which
no top-k can give). A confident teacher's tail is tiny at T = 1 but holds most of the mass at
T = 2, which is why format 2 stores it at each T: without it (format 1, ``topk_kl_per_token_v1``)
only the top-k part could be tempered and most of what T = 2 is for was lost.

Student inputs are log-probabilities, computed once per step by the caller (``log_softmax`` of
the logits at T for KD, at 1 for cross-entropy): one log-softmax per temperature, shared by
every term that needs it.

>>> import torch
>>> from dora.pipeline.engines.generation import tail_logprobs
>>> logits = torch.randn(2, 3, 11, generator=torch.Generator().manual_seed(0))
>>> top = logits.log_softmax(-1).topk(4, dim=-1)
>>> tail = tail_logprobs(logits, top.indices, [2.0])[..., 0]
>>> loss = topk_kl_per_token((logits / 2).log_softmax(-1), top.indices, top.values, tail, 2.0)
>>> bool(loss.abs().max() < 1e-6)
True
"""

from __future__ import annotations

import torch

# Floor for the student's tail log-mass: keeps the bucket term finite when the teacher's tail is
# pure float rounding and the student's is exactly empty (k equal to the vocabulary).
_LOG_FLOOR = -69.0  # log(1e-30)
_NEG = -1e4  # log-mass of an excluded top-k slot: exp() underflows to exactly 0
_TAIL_EPS = 1e-5  # teacher tail mass below this is summation rounding, not signal (format 1 only)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate at both ends (Maechler 2012); 0 at -inf, -inf at 0."""
    x = x.clamp(max=0.0)
    return torch.where(x > -0.6931472, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _xlogy_diff(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """p * (log p - log q), defined as 0 where p = 0."""
    p = p_log.exp()
    return torch.where(p > 0, p * (p_log - q_log), torch.zeros_like(p))


def _valid_ids(ids: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Invalid slots repeat the position's first valid id: scattering it twice is harmless."""
    if valid is None:
        return ids
    first = ids.gather(-1, valid.long().argmax(-1, keepdim=True)).expand_as(ids)
    return torch.where(valid, ids, first)


def _student_buckets(student_logprobs: torch.Tensor, ids: torch.Tensor,
                     valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the student's log-probability of each stored id, of everything else), exactly."""
    s_topk = student_logprobs.gather(-1, ids)
    if valid is not None:
        s_topk = torch.where(valid, s_topk, torch.full_like(s_topk, _NEG))
    s_tail = torch.logsumexp(student_logprobs.scatter(-1, ids, float("-inf")), dim=-1).clamp(min=_LOG_FLOOR)
    return s_topk, s_tail


def topk_kl_per_token(
    student_logprobs: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    teacher_tail: torch.Tensor,
    temperature: float = 2.0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """T^2 * KL(teacher || student) at T per position, over the stored top-k plus the tail bucket.

    Args:
        student_logprobs: (B, L, V) ``log_softmax(student_logits / T)``.
        topk_ids: (B, L, k) the teacher's top-k token ids (valid student vocabulary ids).
        topk_logprobs: (B, L, k) the teacher's log-probabilities of those ids at T = 1.
        teacher_tail: (B, L) log of the teacher's mass outside the top-k at T (cache column
            ``tail_logprobs``); -inf when the top-k is the whole vocabulary.
        temperature: T > 0.
        valid: optional (B, L, k) bool; False entries (teacher ids with no student id, in
            cross-tokenizer KD) leave the top-k and their teacher mass joins the tail bucket.
    Returns:
        (B, L) in nats.
    """
    ids = _valid_ids(topk_ids.long(), valid)
    tail = teacher_tail.float()
    t_topk = log1mexp(tail).unsqueeze(-1) + torch.log_softmax(topk_logprobs.float() / temperature, dim=-1)
    if valid is not None:
        moved = torch.logsumexp(torch.where(valid, torch.full_like(t_topk, float("-inf")), t_topk), dim=-1)
        tail = torch.logaddexp(tail, moved)
        t_topk = torch.where(valid, t_topk, torch.full_like(t_topk, float("-inf")))
    s_topk, s_tail = _student_buckets(student_logprobs.float(), ids, valid)
    kl = _xlogy_diff(t_topk, s_topk).sum(-1) + _xlogy_diff(tail, s_tail)
    return kl * temperature**2


def teacher_tail_logprob(topk_logprobs: torch.Tensor) -> torch.Tensor:
    """Log of the teacher mass outside its stored top-k at T = 1, from the top-k itself (format 1
    caches, which store no tail): log(1 - sum exp(lp)), -inf when empty.

    A tail below ``_TAIL_EPS`` is float rounding (k equal to the vocabulary, or float16 values
    summing to slightly above 1) and counts as empty.
    """
    tail = 1.0 - topk_logprobs.float().exp().sum(-1)
    return torch.log(torch.where(tail > _TAIL_EPS, tail, torch.zeros_like(tail)))


def topk_kl_per_token_v1(
    student_logprobs: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    temperature: float = 2.0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """The format 1 loss, for caches without a stored tail: the two-way bucket term at T = 1
    plus ``m_t * T^2 * KL`` within the top-k at T (m_t: the teacher's top-k mass at T = 1).

    Exact at T = 1 and when k is the vocabulary; at T > 1 the tail's share of the tempered
    distribution is missing (see the module docstring).

    Args:
        student_logprobs: (B, L, V) ``log_softmax(student_logits)`` (T = 1).
        others: as :func:`topk_kl_per_token`.
    Returns:
        (B, L) in nats.
    """
    ids = _valid_ids(topk_ids.long(), valid)
    t_topk = topk_logprobs.float()
    if valid is not None:  # a finite, negligible log-mass keeps gradients NaN-free
        t_topk = torch.where(valid, t_topk, torch.full_like(t_topk, _NEG))
    s_topk, s_tail = _student_buckets(student_logprobs.float(), ids, valid)
    s_mass = torch.logsumexp(s_topk, dim=-1)
    t_mass = torch.logsumexp(t_topk, dim=-1).clamp(max=0.0)
    t_tail = teacher_tail_logprob(t_topk)
    t_in = torch.log_softmax(t_topk / temperature, dim=-1)
    s_in = torch.log_softmax(s_topk / temperature, dim=-1)
    within = _xlogy_diff(t_in, s_in).sum(-1)
    bucket = _xlogy_diff(t_mass, s_mass) + _xlogy_diff(t_tail, s_tail)
    return bucket + t_mass.exp() * within * temperature**2


def uld_per_token(
    student_logprobs: torch.Tensor,
    topk_logprobs: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Universal Logit Distillation (Boizard et al., 2024): L1 distance between the teacher's and
    the student's probability vectors sorted in decreasing order. Needs no shared vocabulary.

    Both sides are treated alike: the teacher's stored top-k and the student's own k most likely
    tokens, each renormalised over its k entries at T, so a student equal to the teacher scores 0.

    Args:
        student_logprobs: (B, L, V) ``log_softmax(student_logits / T)``.
        topk_logprobs: (B, L, k) the teacher's at T = 1, sorted descending.
    Returns:
        (B, L) L1 distances in [0, 2].
    """
    k = topk_logprobs.shape[-1]
    t = torch.softmax(topk_logprobs.float() / temperature, dim=-1)
    s = torch.softmax(student_logprobs.float().topk(k, dim=-1).values, dim=-1)
    return (t - s).abs().sum(-1)


def label_set_kl(
    student_label_logprobs: torch.Tensor,
    teacher_label_logprobs: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """KL(teacher || student) between normalised distributions over a closed set of labels.

    Args:
        student_label_logprobs: (B, C) log-probability of each label verbaliser as a sequence.
        teacher_label_logprobs: (B, C) the teacher's, from the cache's ``label_logprobs``.
    Returns:
        (B,) KL in nats, times T^2.
    """
    t = torch.log_softmax(teacher_label_logprobs.float() / temperature, dim=-1)
    s = torch.log_softmax(student_label_logprobs.float() / temperature, dim=-1)
    p = t.exp()  # a label the teacher gives no mass (a -inf score) adds nothing, not 0 * -inf = NaN
    return torch.where(p > 0, p * (t - s), torch.zeros_like(p)).sum(-1) * temperature**2


def label_kd_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_label_logprobs: torch.Tensor | None = None,
    kd_rows: torch.Tensor | None = None,
    *,
    temperature: float = 2.0,
    alpha: float = 0.0,
) -> torch.Tensor:
    """A classifier student's loss over a closed label set, averaged over the batch's rows.

    Rows without a teacher (gold rows) get cross-entropy on ``labels``; rows with one (``kd_rows``)
    get ``(1 - alpha) * label_set_kl`` at T (times T^2) plus ``alpha`` times cross-entropy on
    ``labels`` (there: the teacher's own label). A teacher whose scores put all their mass on
    one label gives, at ``alpha`` 0 and T = 1, exactly the cross-entropy on that label.

    Args:
        student_logits: (B, C) the head's logits.
        labels: (B,) label indices; -100 for a row with no hard label (counted by its KD term only).
        teacher_label_logprobs: (B, C) the teacher's scores of each label (any scale: normalised
            over the C labels), or None for a batch of gold rows only.
        kd_rows: (B,) True for rows that have a teacher (None: none do).
    Returns:
        () the mean loss; 0 for an empty batch.
    """
    logits = student_logits.float()
    ce = torch.nn.functional.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    ce = torch.where(labels != -100, ce, torch.zeros_like(ce))
    if teacher_label_logprobs is None or kd_rows is None or not bool(kd_rows.any()):
        return ce.sum() / max(len(ce), 1)
    kl = label_set_kl(logits, teacher_label_logprobs, temperature)
    per_row = torch.where(kd_rows, (1 - alpha) * kl + alpha * ce, ce)
    return per_row.sum() / max(len(per_row), 1)


def full_kl_per_token(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Reference: full-vocabulary KL(teacher || student) at T, times T^2 (the paper's loss). (B, L, V) -> (B, L)."""
    t = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    s = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1) * temperature**2


def token_cross_entropy(logprobs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, L, V) log-probabilities and (B, L) labels with -100 for padding -> (B, L) cross-entropy (0 on padding)."""
    picked = logprobs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(labels != -100, -picked, torch.zeros_like(picked))
