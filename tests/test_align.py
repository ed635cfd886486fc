"""Cross-tokenizer alignment and the aligned losses: properties on adversarial strings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dora.cache import tokenizer_fingerprint
from dora.pipeline.engines.generation import tail_logprobs
from dora.pipeline.kd.align import align, build_vocab_map, cached_vocab_map, canon, surfaces
from dora.pipeline.kd.losses import label_set_kl
from dora.pipeline.kd.objectives import OBJECTIVES, collate_kd, training_loss

PIECES = list("abcXYZ019 .,;-'\"\t\n") + ["  ", "   ", "é", "ö", "ß", "ﬁ", "e\u0301", "日本", "🙂", "👍🏽",
                                          "\u00a0", "Ω", "ñ", "SUPPORTS", " the", "▁", "Ġ", "Claim"]
ADVERSARIAL = st.lists(st.sampled_from(PIECES), min_size=1, max_size=25).map("".join).filter(lambda t: t.strip())


@pytest.fixture(scope="module")
def toks(t5_dir, llama_dir):
    from transformers import AutoTokenizer

    t5, ll = AutoTokenizer.from_pretrained(t5_dir), AutoTokenizer.from_pretrained(llama_dir)
    return {"t5": (t5, surfaces(t5)), "llama": (ll, surfaces(ll))}


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def _piece(surf, ids):
    return canon(b"".join(surf[i] or b"" for i in ids).decode("utf-8", errors="replace"))


@settings(max_examples=150, deadline=None)
@given(text=ADVERSARIAL)
def test_aligned_positions_cover_the_same_text(toks, text):
    (s_tok, s_surf), (t_tok, t_surf) = toks["t5"], toks["llama"]
    s_ids, t_ids = _ids(s_tok, text), _ids(t_tok, text)
    pairs = align(t_ids, s_ids, t_surf, s_surf, t_tok.eos_token_id, s_tok.eos_token_id)
    assert len(pairs) == len(s_ids)
    matched = [(j, i) for j, i in enumerate(pairs) if i >= 0]
    assert [i for _, i in matched] == sorted({i for _, i in matched})  # monotone, one-to-one
    for j, i in matched[:-1]:  # the last pair is EOS with EOS
        assert _piece(s_surf, [s_ids[j]]) == _piece(t_surf, [t_ids[i]]) != ""
    assert pairs[-1] == len(t_ids) - 1


def test_a_cut_student_label_ends_with_an_eos_that_aligns_with_nothing(toks):
    """--max-target-length cut the student's label: its forced EOS follows part of the text, so it
    must not take the teacher's final distribution (which says where the whole text ends)."""
    (s_tok, s_surf), (t_tok, t_surf) = toks["t5"], toks["llama"]
    text = "SUPPORTS the claim about Claim"
    s_full, t_ids = _ids(s_tok, text), _ids(t_tok, text)
    whole = align(t_ids, s_full, t_surf, s_surf, t_tok.eos_token_id, s_tok.eos_token_id)
    assert whole[-1] == len(t_ids) - 1
    cut = [*s_full[:3], s_tok.eos_token_id]  # what target_ids() makes with max_target_length 4
    pairs = align(t_ids, cut, t_surf, s_surf, t_tok.eos_token_id, s_tok.eos_token_id, student_complete=False)
    assert pairs[-1] == -1 and pairs[:3] == whole[:3]


@settings(max_examples=100, deadline=None)
@given(text=ADVERSARIAL, which=st.sampled_from(["t5", "llama"]))
def test_one_tokenizer_aligns_to_itself(toks, text, which):
    tok, surf = toks[which]
    ids = _ids(tok, text)
    pairs = align(ids, ids, surf, surf, tok.eos_token_id, tok.eos_token_id)
    for j, i in enumerate(pairs):
        assert i in (j, -1)
        if i == -1:  # only tokens with no visible text of their own, or halves of a split character
            before, after = _piece(surf, ids[:j]), _piece(surf, ids[: j + 1])
            assert after == before or "\ufffd" in before + after


def test_vocab_map_between_marker_conventions(toks):
    (s_tok, s_surf), (t_tok, t_surf) = toks["t5"], toks["llama"]
    vmap = build_vocab_map(t_surf, s_surf, t_tok.eos_token_id, s_tok.eos_token_id)
    assert 0 < vmap.coverage() < 1
    for t, sid in enumerate(vmap.exact):
        if sid >= 0 and t != t_tok.eos_token_id:
            assert t_surf[t] == s_surf[sid]  # 'Ġword' (byte-level) is '▁word' (SentencePiece)
    assert vmap.exact[t_tok.eos_token_id] == s_tok.eos_token_id


def test_identical_tokenizers_make_aligned_equal_topk_exactly(t5_dir, tmp_path):
    """Same tokenizer on both sides: alignment is the identity, the map is the identity, and the
    aligned loss is the same-vocabulary loss, bit for bit."""
    from conftest import fever_rows
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from dora.pipeline.data.encoding import encode_pair
    from dora.pipeline.kd.align import AlignStats, aligned_arrays

    tok = AutoTokenizer.from_pretrained(t5_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(t5_dir).eval()
    surf = surfaces(tok)
    fp = tokenizer_fingerprint(tok)
    vmap, _ = cached_vocab_map(tmp_path, fp, fp, surf, surf, tok.eos_token_id, tok.eos_token_id)
    exact, aligned, stats = [], [], AlignStats()
    for row in fever_rows()[:12]:
        ids = _ids(tok, row["source"])  # the "pseudo-label": a real sentence, EOS last
        feat = encode_pair(tok, "seq2seq", "fever: " + row["target"], ids, 64)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([feat["input_ids"]]), labels=torch.tensor([ids])).logits[0]
        top = logits.log_softmax(-1).topk(8, dim=-1)
        top_ids, top_lp = top.indices.numpy().astype(np.int64), top.values.numpy()
        tails = tail_logprobs(logits, top.indices, [2.0])[:, 0].numpy()
        exact.append({**feat, "topk_ids": top_ids, "topk_logprobs": top_lp, "kd_mask": np.ones(len(ids), bool),
                      "teacher_tail": tails})
        arrays = aligned_arrays(ids, ids, top_ids, top_lp, tails, surf, surf, tok.eos_token_id, tok.eos_token_id,
                                 vmap, "aligned", stats)
        aligned.append({**feat, **arrays})
    # Every position with visible text aligns to itself and keeps the teacher's ids unchanged.
    assert stats.aligned_positions / stats.student_positions > 0.8
    for a, e in zip(aligned, exact):
        np.testing.assert_array_equal(a["topk_ids"][a["kd_mask"]], e["topk_ids"][a["kd_mask"]])
    full = [i for i, a in enumerate(aligned) if a["kd_mask"].all()]
    assert len(full) >= 3
    student = AutoModelForSeq2SeqLM.from_pretrained(t5_dir)
    la = training_loss(OBJECTIVES["aligned"](temperature=2.0, alpha=0.0),
                       student, collate_kd([aligned[i] for i in full], tok.pad_token_id))
    le = training_loss(OBJECTIVES["topk"](temperature=2.0, alpha=0.0),
                       student, collate_kd([exact[i] for i in full], tok.pad_token_id))
    assert torch.equal(la, le)


@settings(max_examples=50, deadline=None)
@given(c=st.integers(2, 6), seed=st.integers(0, 1000), t=st.sampled_from([0.5, 1.0, 2.0]))
def test_label_set_distribution_sums_to_one_and_kl_is_zero_on_itself(c, seed, t):
    g = torch.Generator().manual_seed(seed)
    seq_lp = -torch.rand(3, c, generator=g) * 20  # sequence log-probs: unnormalised over the label set
    probs = torch.softmax(seq_lp / t, dim=-1)
    assert torch.allclose(probs.sum(-1), torch.ones(3))
    assert torch.allclose(label_set_kl(seq_lp, seq_lp, t), torch.zeros(3), atol=1e-6)
    other = -torch.rand(3, c, generator=g) * 20
    assert (label_set_kl(other, seq_lp, t) >= -1e-6).all()
