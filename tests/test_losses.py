"""Property tests of the KD losses (shapes in dora.pipeline.kd.losses), each against a reference
computed from the full distributions."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dora.pipeline.engines.generation import tail_logprobs
from dora.pipeline.kd.losses import (
    full_kl_per_token,
    label_set_kl,
    log1mexp,
    topk_kl_per_token,
    topk_kl_per_token_v1,
    uld_per_token,
)

shapes = st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(2, 40))
temps = st.sampled_from([0.5, 1.0, 2.0, 4.0])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cached(teacher: torch.Tensor, k: int, t: float):
    """What a format 2 cache stores for these teacher logits: top-k ids and log-probs (T = 1), tail at T."""
    top = torch.log_softmax(teacher, -1).topk(k, dim=-1)
    return top.indices, top.values, tail_logprobs(teacher, top.indices, [t])[..., 0]


def _cached_loss(student: torch.Tensor, teacher: torch.Tensor, k: int, t: float, valid=None) -> torch.Tensor:
    ids, lp, tail = _cached(teacher, k, t)
    return topk_kl_per_token(torch.log_softmax(student / t, -1), ids, lp, tail, t, valid)


def _bucketed_reference(student: torch.Tensor, teacher: torch.Tensor, ids: torch.Tensor, t: float,
                        keep: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * KL between the full tempered distributions with every id outside ``ids`` (and every
    id whose ``keep`` is False) pooled into one bucket: float64, straight from the definition."""
    p = torch.softmax(teacher.double() / t, -1)
    q = torch.softmax(student.double() / t, -1)
    inside = torch.zeros_like(p, dtype=torch.bool).scatter(-1, ids, True if keep is None else keep)
    p_in, q_in = torch.where(inside, p, 0), torch.where(inside, q, 0)
    p_tail, q_tail = (p * ~inside).sum(-1), (q * ~inside).sum(-1)
    term = torch.where(p_in > 0, p_in * (p_in.log() - q_in.log()), torch.zeros_like(p_in)).sum(-1)
    term = term + torch.where(p_tail > 0, p_tail * (p_tail.log() - q_tail.log()), torch.zeros_like(p_tail))
    return term * t * t


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000), t=temps, data=st.data())
def test_identical_distributions_give_zero(shape, seed, t, data):
    b, length, v = shape
    k = data.draw(st.integers(1, v))
    logits = torch.randn(b, length, v, generator=_gen(seed)) * 3
    assert torch.allclose(_cached_loss(logits, logits, k, t), torch.zeros(b, length), atol=1e-5)
    ids, lp, _ = _cached(logits, k, t)
    assert torch.allclose(topk_kl_per_token_v1(torch.log_softmax(logits, -1), ids, lp, t), torch.zeros(b, length),
                          atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000), t=temps)
def test_k_equal_to_vocabulary_is_full_kl(shape, seed, t):
    b, length, v = shape
    g = _gen(seed)
    teacher, student = torch.randn(b, length, v, generator=g) * 2, torch.randn(b, length, v, generator=g) * 2
    full = full_kl_per_token(teacher, student, t)
    assert torch.allclose(_cached_loss(student, teacher, v, t), full, atol=1e-4)
    ids, lp, _ = _cached(teacher, v, t)
    assert torch.allclose(topk_kl_per_token_v1(torch.log_softmax(student, -1), ids, lp, t), full, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000), t=temps, data=st.data())
def test_k_below_vocabulary_is_the_bucketed_full_kl(shape, seed, t, data):
    """The stored tail makes the cached loss exactly the full KL with the tail pooled, at any T."""
    b, length, v = shape
    k = data.draw(st.integers(1, v))
    g = _gen(seed)
    teacher, student = torch.randn(b, length, v, generator=g) * 3, torch.randn(b, length, v, generator=g) * 3
    ids, _, _ = _cached(teacher, k, t)
    reference = _bucketed_reference(student, teacher, ids, t).float()
    assert torch.allclose(_cached_loss(student, teacher, k, t), reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("k", [1, 5, 29, 30])
def test_the_loss_grows_with_disagreement(k):
    """Along a line away from the teacher, the loss starts at 0 and rises; with the whole
    vocabulary it rises strictly at every step (KL along a line in logit space is convex)."""
    g = _gen(k)
    teacher, direction = torch.randn(4, 3, 30, generator=g) * 2, torch.randn(4, 3, 30, generator=g)
    losses = [_cached_loss(teacher + eps * direction, teacher, k, 2.0).sum().item() for eps in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert losses[0] == pytest.approx(0.0, abs=1e-5)
    assert all(x > 1e-4 for x in losses[1:])
    if k == 30:
        assert all(b > a for a, b in zip(losses, losses[1:])), losses


def test_invalid_slots_move_their_teacher_mass_to_the_tail():
    """Cross-tokenizer KD: slots whose teacher id has no student id leave the top-k; the result is
    the full KL with those ids pooled into the tail bucket."""
    g = _gen(11)
    teacher, student = torch.randn(2, 3, 25, generator=g) * 2, torch.randn(2, 3, 25, generator=g) * 2
    ids, lp, tail = _cached(teacher, 6, 2.0)
    valid = torch.rand(2, 3, 6, generator=g) > 0.4
    valid[..., 0] = True  # a 1:1 position always maps the teacher's own token
    got = topk_kl_per_token(torch.log_softmax(student / 2, -1), ids, lp, tail, 2.0, valid)
    reference = _bucketed_reference(student, teacher, ids, 2.0, keep=valid).float()
    assert torch.allclose(got, reference, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, _cached_loss(student, teacher, 6, 2.0), atol=1e-3)  # the mask changed something


def test_format_1_loss_drops_the_tempered_tail_and_format_2_keeps_it():
    """A confident teacher: its tail outside the top-20 is tiny at T = 1 and most of its mass at
    T = 2. With the stored tail the loss is the bucketed KL at any T; the format 1 loss is that
    only at T = 1."""
    g = _gen(3)
    v, k = 4000, 20
    teacher = torch.randn(2, 4, v, generator=g) * 2
    teacher[..., :3] += 14.0  # a few very likely tokens, a long tail
    student = teacher + torch.randn(2, 4, v, generator=g) * 1.5
    ids, lp, _ = _cached(teacher, k, 1.0)
    assert tail_logprobs(teacher, ids, [2.0]).exp().min() > 0.3 and tail_logprobs(teacher, ids, [1.0]).exp().max() < 0.01
    for t in (1.0, 2.0):
        reference = _bucketed_reference(student, teacher, ids, t).float()
        v2 = _cached_loss(student, teacher, k, t)
        v1 = topk_kl_per_token_v1(torch.log_softmax(student, -1), ids, lp, t)
        assert torch.allclose(v2, reference, rtol=1e-3, atol=1e-4)
        if t == 1.0:
            assert torch.allclose(v1, reference, rtol=1e-3, atol=1e-4)
        else:
            assert ((v1 - reference).abs() > 0.05).all()


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_free_logits_trained_on_the_cached_loss_recover_the_teacher(t):
    """Transfer: minimising the cached loss over free student logits recovers the teacher's
    tempered distribution on its top-k and its mass outside it."""
    g = _gen(5)
    teacher = torch.randn(1, 3, 50, generator=g) * 3
    ids, lp, tail = _cached(teacher, 8, t)
    student = torch.zeros(1, 3, 50, requires_grad=True)
    optimiser = torch.optim.Adam([student], lr=0.1)
    for _ in range(800):
        optimiser.zero_grad()
        topk_kl_per_token(torch.log_softmax(student / t, -1), ids, lp, tail, t).sum().backward()
        optimiser.step()
    q = torch.softmax(student.detach() / t, -1)
    p = torch.softmax(teacher / t, -1)
    assert torch.allclose(q.gather(-1, ids), p.gather(-1, ids), atol=2e-3)
    assert torch.allclose(1 - q.gather(-1, ids).sum(-1), tail.exp(), atol=2e-3)


def test_stored_tail_matches_the_definition():
    g = _gen(9)
    logits = torch.randn(3, 5, 200, generator=g) * 4
    top = logits.topk(7, dim=-1)
    for t in (1.0, 2.0, 3.5):
        expected = torch.log1p(-torch.softmax(logits.double() / t, -1).gather(-1, top.indices).sum(-1))
        assert torch.allclose(tail_logprobs(logits, top.indices, [t])[..., 0].double(), expected, atol=1e-5)
    full = tail_logprobs(logits, logits.topk(200, dim=-1).indices, [1.0, 2.0])
    assert torch.isinf(full).all() and (full < 0).all()


def test_stored_tail_keeps_its_precision_when_it_underflows_float32():
    # A top-1 logit 5 to 200 nats above 999 equal others: the tail is 999 * exp(-gap) / (1 + ...),
    # far below what 1 - top-k mass (or a float32 exp beside the top logit) can represent.
    gap = torch.tensor([5.0, 30.0, 90.0, 200.0], dtype=torch.float64)
    logits = torch.zeros(4, 1000, dtype=torch.float64)
    logits[:, 0] = gap
    for t in (1.0, 2.0):
        g = gap / t
        expected = torch.log(torch.tensor(999.0, dtype=torch.float64)) - g - torch.log1p(999 * torch.exp(-g))
        got = tail_logprobs(logits.float(), torch.zeros(4, 1, dtype=torch.long), [t])[:, 0].double()
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6), (t, got, expected)


def test_log1mexp_is_accurate_at_both_ends():
    x = torch.tensor([-1e-12, -1e-3, -0.5, -0.7, -5.0, -50.0, float("-inf")], dtype=torch.float64)
    expected = torch.tensor([float(torch.log(torch.tensor(1e-12, dtype=torch.float64))), -6.908255, -0.932752,
                             -0.686339, -0.0067607, -1.9287e-22, 0.0], dtype=torch.float64)
    assert torch.allclose(log1mexp(x), expected, rtol=1e-4, atol=1e-25)


def test_gradients_are_finite_when_the_tail_is_empty():
    g = _gen(1)
    teacher = torch.randn(1, 2, 7, generator=g)
    student = torch.randn(1, 2, 7, generator=g, requires_grad=True)
    ids, lp, tail = _cached(teacher, 7, 2.0)
    topk_kl_per_token(torch.log_softmax(student / 2, -1), ids, lp, tail, 2.0).sum().backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def test_float16_storage_rounding_is_tolerated():
    """Stored logprobs are float16: their mass is off 1 by the rounding. Format 2 renormalises the
    top-k and takes the tail from its float32 column, so a student equal to the teacher stays at 0;
    format 1 reads the rounding as tail mass (finite, but not 0)."""
    teacher = torch.randn(1, 4, 12, generator=_gen(2)) * 5
    ids, lp, tail = _cached(teacher, 12, 1.0)
    lp16 = lp.half().float()
    v2 = topk_kl_per_token(torch.log_softmax(teacher, -1), ids, lp16, tail, 1.0)
    v1 = topk_kl_per_token_v1(torch.log_softmax(teacher, -1), ids, lp16, 1.0)
    assert torch.isfinite(v2).all() and v2.abs().max() < 1e-6
    assert torch.isfinite(v1).all() and v1.abs().max() < 0.05


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_temperature_scaling_by_t_squared(t):
    g = _gen(3)
    teacher, student = torch.randn(1, 1, 9, generator=g), torch.randn(1, 1, 9, generator=g)
    tl = torch.log_softmax(teacher / t, -1)
    sl = torch.log_softmax(student / t, -1)
    manual = (tl.exp() * (tl - sl)).sum() * t * t
    assert torch.allclose(_cached_loss(student, teacher, 9, t).sum(), manual, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), t=temps, k=st.integers(1, 20))
def test_uld_is_zero_for_a_student_equal_to_the_teacher(seed, t, k):
    logits = torch.randn(2, 3, 20, generator=_gen(seed)) * 3
    top = torch.log_softmax(logits, -1).topk(k, dim=-1)
    same = uld_per_token(torch.log_softmax(logits / t, -1), top.values, t)
    assert torch.allclose(same, torch.zeros_like(same), atol=1e-5)
    other = uld_per_token(torch.log_softmax(torch.zeros_like(logits), -1), top.values, t)
    assert (other >= 0).all() and (other <= 2 + 1e-6).all()
    if k > 1:
        assert other.min() > 1e-4  # a uniform student differs from a peaked teacher


def test_label_set_kl_is_zero_for_equal_and_positive_for_different():
    g = _gen(4)
    a, b = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    assert torch.allclose(label_set_kl(a, a, 2.0), torch.zeros(5), atol=1e-6)
    assert (label_set_kl(a, b, 2.0) > 0).all()
