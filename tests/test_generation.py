"""The transformers labeling engine: raw-logit top-k, batching and padding do not change labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import fever_rows

from dora.pipeline.data.encoding import encode_prompts
from dora.pipeline.engines.generation import hf_generate


@pytest.fixture(scope="module", params=["t5", "llama"])
def model_and_tok(request, t5_dir, llama_dir):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    path = t5_dir if request.param == "t5" else llama_dir
    auto = AutoModelForSeq2SeqLM if request.param == "t5" else AutoModelForCausalLM
    return request.param, auto.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


TEXTS = ["fever: " + r["source"] for r in fever_rows()[:9]]


def test_batching_and_padding_do_not_change_labels(model_and_tok):
    name, model, tok = model_and_tok
    kind = "seq2seq" if name == "t5" else "causal"
    prompts = encode_prompts(tok, TEXTS, 64)
    one = hf_generate(model, tok, kind, prompts, batch_size=1, max_new_tokens=6, k=5)
    many = hf_generate(model, tok, kind, prompts, batch_size=4, max_new_tokens=6, k=5)
    for a, b in zip(one, many):
        assert a.ids.tolist() == b.ids.tolist()
        assert a.topk_ids.tolist() == b.topk_ids.tolist()
        np.testing.assert_allclose(a.topk_logprobs, b.topk_logprobs, atol=1e-4)


def test_topk_matches_a_teacher_forced_forward_pass(model_and_tok):
    name, model, tok = model_and_tok
    kind = "seq2seq" if name == "t5" else "causal"
    gen = hf_generate(model, tok, kind, encode_prompts(tok, TEXTS[:3], 64), batch_size=3, max_new_tokens=6, k=5)
    for text, g in zip(TEXTS[:3], gen):
        prompt = torch.tensor([tok(text)["input_ids"]])
        target = torch.tensor([g.ids.tolist()])
        with torch.no_grad():
            if kind == "seq2seq":
                logp = model(input_ids=prompt, labels=target).logits.log_softmax(-1)[0]
            else:
                full = torch.cat([prompt, target], dim=1)
                logp = model(input_ids=full).logits.log_softmax(-1)[0, prompt.shape[1] - 1 : -1]
        top = logp.topk(5, dim=-1)
        assert top.indices.tolist() == g.topk_ids.tolist()
        np.testing.assert_allclose(top.values.numpy(), g.topk_logprobs, atol=1e-4)
        assert g.seq_logprob == pytest.approx(float(logp.gather(-1, target[0, :, None]).sum()), abs=1e-3)
        # Greedy: each chosen token is the top-1.
        assert g.ids.tolist() == g.topk_ids[:, 0].tolist()
