"""Property tests of the top-k KD loss (shapes in dora.pipeline.losses)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dora.pipeline.losses import full_kl_per_token, topk_kl_loss, topk_kl_per_token

shapes = st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(2, 40))
temps = st.sampled_from([0.5, 1.0, 2.0, 4.0])


def _teacher_topk(logits: torch.Tensor, k: int):
    top = torch.log_softmax(logits, -1).topk(k, dim=-1)
    return top.indices, top.values


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000), t=temps, data=st.data())
def test_identical_distributions_give_zero(shape, seed, t, data):
    b, length, v = shape
    k = data.draw(st.integers(1, v))
    logits = torch.randn(b, length, v, generator=torch.Generator().manual_seed(seed)) * 3
    ids, lp = _teacher_topk(logits, k)
    per = topk_kl_per_token(logits, ids, lp, t)
    assert torch.allclose(per, torch.zeros_like(per), atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000), t=temps)
def test_k_equal_to_vocabulary_is_full_kl(shape, seed, t):
    b, length, v = shape
    g = torch.Generator().manual_seed(seed)
    teacher, student = torch.randn(b, length, v, generator=g) * 2, torch.randn(b, length, v, generator=g) * 2
    ids, lp = _teacher_topk(teacher, v)
    assert torch.allclose(topk_kl_per_token(student, ids, lp, t), full_kl_per_token(teacher, student, t), atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000), t=temps, data=st.data())
def test_kl_is_non_negative_and_grows_with_disagreement(shape, seed, t, data):
    b, length, v = shape
    k = data.draw(st.integers(1, v))
    g = torch.Generator().manual_seed(seed)
    teacher, student = torch.randn(b, length, v, generator=g), torch.randn(b, length, v, generator=g)
    ids, lp = _teacher_topk(teacher, k)
    assert (topk_kl_per_token(student, ids, lp, t) >= -1e-6).all()


def test_masked_positions_contribute_nothing():
    g = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(2, 5, 30, generator=g), torch.randn(2, 5, 30, generator=g)
    ids, lp = _teacher_topk(teacher, 6)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, :3] = True
    expected = topk_kl_per_token(student, ids, lp)[0, :3].mean()
    # Garbage at masked positions (even NaN-free extremes) must not change the loss.
    student2 = student.clone()
    student2[1] = 1e4
    student2[0, 3:] = -1e4
    assert torch.allclose(topk_kl_loss(student2, ids, lp, mask), expected, atol=1e-6)
    assert torch.allclose(topk_kl_loss(student, ids, lp, mask), expected, atol=1e-6)


def test_all_masked_batch_is_zero_with_zero_gradient():
    student = torch.randn(2, 3, 10, requires_grad=True)
    ids, lp = _teacher_topk(torch.randn(2, 3, 10), 4)
    loss = topk_kl_loss(student, ids, lp, torch.zeros(2, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(student.grad, torch.zeros_like(student))


def test_gradients_are_finite_when_the_tail_is_empty():
    student = torch.randn(1, 2, 7, requires_grad=True)
    ids, lp = _teacher_topk(torch.randn(1, 2, 7), 7)
    topk_kl_loss(student, ids, lp, torch.ones(1, 2, dtype=torch.bool)).backward()
    assert torch.isfinite(student.grad).all()


def test_float16_storage_rounding_is_tolerated():
    """Stored logprobs are float16: their mass may exceed 1 slightly; the tail clamps to empty."""
    teacher = torch.randn(1, 4, 12) * 5
    ids, lp = _teacher_topk(teacher, 12)
    lp16 = lp.half().float()
    per = topk_kl_per_token(teacher, ids, lp16)
    assert torch.isfinite(per).all() and per.abs().max() < 1e-2


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_temperature_scaling_by_t_squared(t):
    g = torch.Generator().manual_seed(3)
    teacher, student = torch.randn(1, 1, 9, generator=g), torch.randn(1, 1, 9, generator=g)
    ids, lp = _teacher_topk(teacher, 9)
    tl = torch.log_softmax(teacher / t, -1)
    sl = torch.log_softmax(student / t, -1)
    manual = (tl.exp() * (tl - sl)).sum() * t * t
    assert torch.allclose(topk_kl_per_token(student, ids, lp, t).sum(), manual, atol=1e-5)
