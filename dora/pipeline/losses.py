"""Distillation losses as pure functions of tensors.

Same-vocabulary KD from a stored top-k. The teacher's distribution is split, by the chain rule
of KL, into *where* its mass goes (the stored top-k region or the tail bucket outside it, a
two-way split) and *how* it spreads inside the top-k. The student is split the same way over
the teacher's top-k ids, so that

    KL = KL_bucket(m_t || m_s) + m_t * T^2 * KL(softmax(t_topk / T) || softmax(s_topk / T))

where m is the mass in the top-k region and the within-region distributions are tempered at T.
This gives, exactly:

* identical teacher and student: zero for every k and T;
* k equal to the vocabulary: the tail is empty and the loss is T^2 * the full-vocabulary KL at T;
* masked positions contribute nothing; an all-masked batch gives zero.

The student's mass outside the teacher's top-k is penalised through the bucket term.

>>> import torch
>>> logits = torch.randn(2, 3, 11)
>>> top = logits.log_softmax(-1).topk(4, dim=-1)
>>> abs(float(topk_kl_loss(logits, top.indices, top.values, torch.ones(2, 3, dtype=torch.bool)))) < 1e-6
True
"""

from __future__ import annotations

import torch

# Floor for the student's tail log-mass: keeps the bucket term finite when the teacher's tail is
# pure float rounding and the student's is exactly empty (k equal to the vocabulary).
_LOG_FLOOR = -69.0  # log(1e-30)
_NEG = -1e4  # log-mass of an excluded top-k slot: exp() underflows to exactly 0
_TAIL_EPS = 1e-5  # teacher tail mass below this is summation rounding, not signal


def teacher_tail_logprob(topk_logprobs: torch.Tensor) -> torch.Tensor:
    """Log of the teacher mass outside its stored top-k: log(1 - sum exp(lp)), -inf when empty.

    A tail below ``_TAIL_EPS`` is float rounding (k equal to the vocabulary, or float16 values
    summing to slightly above 1) and counts as empty.
    """
    tail = 1.0 - topk_logprobs.float().exp().sum(-1)
    return torch.log(torch.where(tail > _TAIL_EPS, tail, torch.zeros_like(tail)))


def _xlogy_diff(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """p * (log p - log q), defined as 0 where p = 0."""
    p = p_log.exp()
    return torch.where(p > 0, p * (p_log - q_log), torch.zeros_like(p))


def topk_kl_per_token(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    temperature: float = 2.0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(teacher || student) per position over the stored top-k plus a tail bucket.

    Args:
        student_logits: (B, L, V) raw student logits.
        topk_ids: (B, L, k) the teacher's top-k token ids (valid student vocabulary ids).
        topk_logprobs: (B, L, k) the teacher's log-probabilities of those ids at T = 1.
        temperature: T > 0; the within-top-k term is tempered and scaled by T^2 (Hinton et al.),
            the two-way bucket term is not.
        valid: optional (B, L, k) bool; False entries (teacher ids with no student id, in
            cross-tokenizer KD) leave the top-k and their teacher mass joins the tail bucket.
    Returns:
        (B, L) KL in nats per position.
    """
    ids = topk_ids.long()
    t_topk = topk_logprobs.float()
    if valid is not None:
        # Invalid slots repeat the position's first valid id (scattering it twice is harmless)
        # and get a finite, negligible log-mass (a finite value keeps gradients NaN-free).
        first = ids.gather(-1, valid.long().argmax(-1, keepdim=True)).expand_as(ids)
        ids = torch.where(valid, ids, first)
        t_topk = torch.where(valid, t_topk, torch.full_like(t_topk, _NEG))
    s_logp = torch.log_softmax(student_logits.float(), dim=-1)
    s_topk = s_logp.gather(-1, ids)
    if valid is not None:
        s_topk = torch.where(valid, s_topk, torch.full_like(s_topk, _NEG))
    s_mass = torch.logsumexp(s_topk, dim=-1)
    # Student mass outside the teacher's top-k, exactly: logsumexp over the other ids.
    s_tail = torch.logsumexp(s_logp.scatter(-1, ids, float("-inf")), dim=-1).clamp(min=_LOG_FLOOR)
    t_mass = torch.logsumexp(t_topk, dim=-1).clamp(max=0.0)
    t_tail = teacher_tail_logprob(t_topk)

    t_in = torch.log_softmax(t_topk / temperature, dim=-1)
    s_in = torch.log_softmax(s_topk / temperature, dim=-1)
    within = _xlogy_diff(t_in, s_in).sum(-1)
    bucket = _xlogy_diff(t_mass, s_mass) + _xlogy_diff(t_tail, s_tail)
    return bucket + t_mass.exp() * within * temperature**2


def topk_kl_loss(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 2.0,
) -> torch.Tensor:
    """Mean of :func:`topk_kl_per_token` over unmasked positions; 0 when nothing is unmasked.

    Args:
        mask: (B, L) bool, True where the position is a real teacher token.
    """
    per = topk_kl_per_token(student_logits, topk_ids, topk_logprobs, temperature)
    mask = mask.to(per.dtype)
    return (per * mask).sum() / mask.sum().clamp(min=1.0)


def uld_per_token(
    student_logits: torch.Tensor,
    topk_logprobs: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Universal Logit Distillation (Boizard et al., 2024): L1 distance between the teacher's and
    the student's probability vectors sorted in decreasing order. Needs no shared vocabulary.

    The teacher's stored top-k probabilities (at T, renormalised over the top-k) are compared with
    the student's k largest probabilities at T.

    Args:
        student_logits: (B, L, V); topk_logprobs: (B, L, k) the teacher's, sorted descending.
    Returns:
        (B, L) L1 distances in [0, 2].
    """
    k = topk_logprobs.shape[-1]
    t = torch.softmax(topk_logprobs.float() / temperature, dim=-1)
    s = torch.softmax(student_logits.float() / temperature, dim=-1).topk(k, dim=-1).values
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
    return (t.exp() * (t - s)).sum(-1) * temperature**2


def full_kl_per_token(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Reference: full-vocabulary KL(teacher || student) at T, times T^2. Shapes (B, L, V) -> (B, L)."""
    t = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    s = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1) * temperature**2


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, L, V) logits and (B, L) labels with -100 for padding -> (B, L) cross-entropy (0 on padding)."""
    return torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none"
    )
