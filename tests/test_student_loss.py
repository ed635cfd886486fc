"""The distillation objectives as training calls them (``training_loss``), on real cache rows:
each --kd-loss against a reference computed independently (float64, from the definitions),
masking, alpha, one forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dora.cache import LabelCache
from dora.pipeline.data.encoding import IGNORE
from dora.pipeline.kd.objectives import OBJECTIVES, collate_kd, training_loss


def student_loss(model, batch, *, mode: str, temperature: float, alpha: float, **fields):
    """The loss training computes for objective ``mode`` on ``batch``."""
    return training_loss(OBJECTIVES[mode](temperature=temperature, alpha=alpha, **fields), model, batch)


def tail_column(cache, mode: str, t: float):
    return OBJECTIVES[mode].stored_tail(cache, t)


def _features(objective, table, tok, max_target_length: int = 16):
    return objective.featurise(table, tok, prefix="fever: ", max_source_length=64,
                               max_target_length=max_target_length)


@pytest.fixture(scope="module")
def parts(t5_dir, cache_dir):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(t5_dir)
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_pretrained(t5_dir).eval()
    cache = LabelCache.open(cache_dir)
    return tok, model, cache


def _batch(parts, mode: str, t: float = 2.0, rows: int = 6, **options):
    tok, _, cache = parts
    assert cache.manifest.generation.k == 8
    objective = OBJECTIVES[mode](temperature=t, tail_index=tail_column(cache, mode, t), **options)
    table = cache.read_shard(cache.manifest.shards[0], objective.columns())
    feats = _features(objective, table.slice(0, rows), tok)
    return feats, collate_kd(feats, tok.pad_token_id)


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=batch["labels"]).logits.double()


def _reference_topk(logits: torch.Tensor, batch, t: float) -> torch.Tensor:
    """T^2 * KL(teacher bucketed at T || student bucketed at T), per position, from the definition."""
    q = torch.softmax(logits / t, -1)
    ids = batch["topk_ids"].clamp(min=0)
    p_in = torch.softmax(batch["topk_logprobs"].double() / t, -1) * (1 - batch["teacher_tail"].double().exp())[..., None]
    p_tail = batch["teacher_tail"].double().exp()
    q_in = q.gather(-1, ids)
    q_tail = 1 - q_in.sum(-1)
    kl = (p_in * (p_in.log() - q_in.log())).sum(-1) + torch.where(p_tail > 0, p_tail * (p_tail.log() - q_tail.log()), 0)
    return kl * t * t


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits, -1)
    return torch.where(labels != IGNORE, -logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0], 0)


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_topk_loss_is_the_bucketed_kl_at_t_mixed_with_ce(parts, alpha):
    _, model, _ = parts
    _, batch = _batch(parts, "topk")
    assert "teacher_tail" in batch and batch["kd_mask"].any()
    got = student_loss(model, batch, mode="topk", temperature=2.0, alpha=alpha)
    logits = _logits(model, batch)
    mask, labels = batch["kd_mask"], batch["labels"]
    per = torch.where(mask, (1 - alpha) * _reference_topk(logits, batch, 2.0) + alpha * _ce(logits, labels),
                      _ce(logits, labels))
    expected = per.sum() / (labels != IGNORE).sum()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_positions_without_a_teacher_signal_get_cross_entropy_only(parts):
    """kd_mask False (gold rows, unaligned positions) means CE there, whatever the stored top-k says."""
    _, model, _ = parts
    feats, batch = _batch(parts, "topk")
    masked = [dict(f, kd_mask=np.arange(len(f["kd_mask"])) % 2 == 0) for f in feats]
    batch = collate_kd(masked, parts[0].pad_token_id)
    got = student_loss(model, batch, mode="topk", temperature=2.0, alpha=0.0)
    logits = _logits(model, batch)
    per = torch.where(batch["kd_mask"], _reference_topk(logits, batch, 2.0), _ce(logits, batch["labels"]))
    assert got.item() == pytest.approx((per.sum() / (batch["labels"] != IGNORE).sum()).item(), rel=1e-5)
    garbage = dict(batch, topk_logprobs=torch.where(batch["kd_mask"][..., None], batch["topk_logprobs"],
                                                    torch.full_like(batch["topk_logprobs"], -30.0)))
    assert student_loss(model, garbage, mode="topk", temperature=2.0, alpha=0.0).item() == pytest.approx(got.item())


def test_an_all_masked_batch_gives_zero_and_no_gradient(parts):
    tok, _, _ = parts
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(parts[1].name_or_path)
    _, batch = _batch(parts, "topk")
    batch = dict(batch, labels=torch.full_like(batch["labels"], IGNORE), kd_mask=torch.zeros_like(batch["kd_mask"]))
    loss = student_loss(model, batch, mode="topk", temperature=2.0, alpha=0.0)
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.parameters())


def test_one_forward_pass_without_an_internal_loss(parts):
    _, model, _ = parts
    _, batch = _batch(parts, "topk")
    calls = []

    class Spy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def prepare_decoder_input_ids_from_labels(self, labels):
            return self.inner.prepare_decoder_input_ids_from_labels(labels=labels)

        def forward(self, **kwargs):
            calls.append(sorted(kwargs))
            return self.inner(**kwargs)

    student_loss(Spy(model), batch, mode="topk", temperature=2.0, alpha=0.5)
    assert calls == [["attention_mask", "decoder_input_ids", "input_ids"]]


def test_uld_adds_the_sorted_l1_on_kd_positions(parts):
    from dora.pipeline.kd.align import TokenizerPair

    tok, model, cache = parts
    _, batch = _batch(parts, "uld", pair=TokenizerPair.of(cache.tokenizer(), cache.manifest.teacher.vocab_size, tok))
    alpha, t = 0.25, 2.0
    got = student_loss(model, batch, mode="uld", temperature=t, alpha=alpha)
    logits = _logits(model, batch)
    k = batch["topk_logprobs"].shape[-1]
    teacher = torch.softmax(batch["topk_logprobs"].double() / t, -1)
    student = torch.softmax(torch.log_softmax(logits / t, -1).topk(k, -1).values, -1)
    uld = (teacher - student).abs().sum(-1)
    per = _ce(logits, batch["labels"]) + torch.where(batch["kd_mask"], (1 - alpha) * uld, 0)
    assert got.item() == pytest.approx((per.sum() / (batch["labels"] != IGNORE).sum()).item(), rel=1e-5)


def test_labels_loss_matches_the_teacher_over_the_verbalisers(parts):
    tok, model, cache = parts
    from dora.pipeline.data.encoding import target_ids

    _, batch = _batch(parts, "labels")
    verbalisers = [target_ids(tok, x, 16) for x in cache.manifest.generation.label_set]
    alpha, t = 0.4, 2.0
    got = student_loss(model, batch, mode="labels", temperature=t, alpha=alpha, verbalisers=verbalisers)
    logits = _logits(model, batch)
    ce = alpha * _ce(logits, batch["labels"]).sum() / (batch["labels"] != IGNORE).sum()
    seqs = []
    for ids in verbalisers:
        labels = torch.tensor([ids] * len(batch["input_ids"]))
        with torch.no_grad():
            lp = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       labels=labels).logits.double().log_softmax(-1)
        seqs.append(lp.gather(-1, labels[..., None])[..., 0].sum(-1))
    s = torch.log_softmax(torch.stack(seqs, -1) / t, -1)
    p = torch.log_softmax(batch["label_logprobs"].double() / t, -1)
    kl = ((p.exp() * (p - s)).sum(-1) * t * t).mean()
    assert got.item() == pytest.approx((ce + (1 - alpha) * kl).item(), rel=1e-5)


def test_a_format_1_cache_trains_with_the_format_1_loss(parts, cache_dir, tmp_path):
    from conftest import downgrade_to_v1

    from dora.pipeline.kd.losses import topk_kl_per_token_v1

    tok, model, _ = parts
    old = LabelCache.open(downgrade_to_v1(cache_dir, tmp_path / "v1"))
    assert tail_column(old, "topk", 2.0) is None
    objective = OBJECTIVES["topk"](temperature=2.0, tail_index=None)
    assert objective.columns() == ["source", "target", "target_ids", "topk_ids", "topk_logprobs"]
    table = old.read_shard(old.manifest.shards[0], objective.columns())
    batch = collate_kd(_features(objective, table.slice(0, 6), tok), tok.pad_token_id)
    assert "teacher_tail" not in batch
    got = student_loss(model, batch, mode="topk", temperature=2.0, alpha=0.0)
    logits = _logits(model, batch).float()
    per = topk_kl_per_token_v1(torch.log_softmax(logits, -1), batch["topk_ids"].clamp(min=0), batch["topk_logprobs"], 2.0)
    expected = torch.where(batch["kd_mask"], per, 0).sum() / (batch["labels"] != IGNORE).sum()
    assert got.item() == pytest.approx(expected.item(), rel=1e-4)


def test_a_temperature_the_cache_did_not_store_is_refused(parts):
    from dora.errors import CacheError

    _, _, cache = parts
    assert tail_column(cache, "topk", 1.0) == 0 and tail_column(cache, "topk", 2.0) == 1
    assert tail_column(cache, "sequence", 3.0) is None  # the text-only loss needs no tail
    with pytest.raises(CacheError, match=r"stores the teacher's tail mass at T = 1, 2, not at --temperature 3; "
                                         r"train with --temperature 1, or relabel with --kd-temperatures 1,2,3"):
        tail_column(cache, "topk", 3.0)
