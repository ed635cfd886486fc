"""Batched generation with transformers (greedy by default), optionally with top-k logprobs.

Log-probabilities come from the raw logits (``output_logits``), not from processed scores
(temperature, top-p), and the generation config is built fresh so no model default (forced
tokens, repetition penalties, ...) changes what the teacher's distribution says. With
``temperatures``, each generated token also gets the log of the probability mass outside its
top-k at each temperature T, from the full logits: what distillation at T needs and a top-k
alone cannot give (the tail holds most of the mass at T = 2 for a confident teacher).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dora.pipeline.data.encoding import decoder_inputs, pad
from dora.pipeline.models.loading import ModelKind


@dataclass(frozen=True, slots=True)
class Generated:
    """One generated sequence. Arrays have one row per generated token (EOS included)."""

    ids: np.ndarray  # (L,) int32
    topk_ids: np.ndarray | None  # (L, k) int32
    topk_logprobs: np.ndarray | None  # (L, k) float32, sorted descending
    seq_logprob: float
    tail_logprobs: np.ndarray | None = None  # (L, len(temperatures)) float32: log mass outside the top-k at each T


def tail_logprobs(logits: torch.Tensor, topk_ids: torch.Tensor, temperatures: Sequence[float]) -> torch.Tensor:
    """Log of the probability mass outside ``topk_ids`` under ``softmax(logits / T)``, for each T.

    Computed over the complement directly (logsumexp of the other ids minus logsumexp of all),
    so a tiny tail keeps its precision; -inf when the top-k is the whole vocabulary.

    Args:
        logits: (..., V) raw logits; topk_ids: (..., k); temperatures: n values.
    Returns:
        (..., n) float32.
    """
    z = logits.float()
    out = []
    for t in temperatures:
        zt = z / t
        out.append(torch.logsumexp(zt.scatter(-1, topk_ids.long(), float("-inf")), dim=-1) - torch.logsumexp(zt, dim=-1))
    return torch.stack(out, dim=-1)


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _generation_config(model: Any, tokenizer: Any, max_new_tokens: int, temperature: float = 0.0,
                       top_p: float = 1.0) -> Any:
    from transformers import GenerationConfig

    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    return GenerationConfig(
        max_new_tokens=max_new_tokens, num_beams=1, **sampling,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        decoder_start_token_id=getattr(model.config, "decoder_start_token_id", None),
        bos_token_id=getattr(model.config, "bos_token_id", None),
        output_logits=True, return_dict_in_generate=True,
    )


@torch.inference_mode()
def hf_generate(
    model: Any,
    tokenizer: Any,
    kind: ModelKind,
    prompts: Sequence[Sequence[int]],
    *,
    batch_size: int,
    max_new_tokens: int,
    k: int | None = None,
    device: torch.device | None = None,
    on_batch: Callable[[int], None] | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    kd_temperatures: Sequence[float] = (),
) -> list[Generated]:
    """Decode every prompt (token ids, see ``encode_prompts``), greedy unless ``temperature`` > 0;
    with ``k`` also keep the top-k log-probs per generated token, and with ``kd_temperatures`` the
    log tail mass outside that top-k at each of those temperatures (``tail_logprobs``).

    Prompts are batched longest first (less padding) and results returned in input order.
    """
    device = device or next(model.parameters()).device
    model.eval()
    config = _generation_config(model, tokenizer, max_new_tokens, temperature, top_p)
    eos, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    encoded = prompts
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    results: list[Generated | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = [encoded[i] for i in idx]
        left = kind == "causal"  # decoder-only models continue from the right edge
        input_ids = pad(batch, pad_id, left=left).to(device)
        mask = pad([[1] * len(b) for b in batch], 0, left=left).to(device)
        out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
        steps = len(out.logits)
        gen = out.sequences[:, -steps:] if steps else out.sequences[:, :0]
        if k is not None and steps:
            lp_steps = [torch.log_softmax(step.float(), dim=-1) for step in out.logits]
            chosen = torch.stack([lp.gather(-1, gen[:, t : t + 1]).squeeze(-1) for t, lp in enumerate(lp_steps)], 1)
            top = [lp.topk(k, dim=-1) for lp in lp_steps]
            top_ids = torch.stack([t.indices for t in top], 1).int().cpu().numpy()
            top_lp = torch.stack([t.values for t in top], 1).cpu().numpy()
            chosen_np = chosen.cpu().numpy()
            tails = (torch.stack([tail_logprobs(step, t.indices, kd_temperatures) for step, t in zip(out.logits, top)], 1)
                     .cpu().numpy() if kd_temperatures else None)
        gen_np = gen.cpu().numpy()
        for row, i in enumerate(idx):
            seq = gen_np[row]
            hits = np.nonzero(seq == eos)[0]
            length = int(hits[0]) + 1 if len(hits) else len(seq)
            if k is not None and steps:
                results[i] = Generated(
                    ids=seq[:length].astype(np.int32), topk_ids=top_ids[row, :length],
                    topk_logprobs=top_lp[row, :length], seq_logprob=float(chosen_np[row, :length].sum()),
                    tail_logprobs=tails[row, :length] if tails is not None else None,
                )
            else:
                results[i] = Generated(ids=seq[:length].astype(np.int32), topk_ids=None, topk_logprobs=None, seq_logprob=0.0)
        if on_batch:
            on_batch(len(idx))
    return [r for r in results if r is not None]


def decode(tokenizer: Any, ids: np.ndarray) -> str:
    """Text of generated ids, exactly as `tokenizer.decode(ids, skip_special_tokens=True)` gives it."""
    return tokenizer.decode(ids.tolist(), skip_special_tokens=True)


@torch.inference_mode()
def hf_score(
    model: Any,
    tokenizer: Any,
    kind: ModelKind,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    *,
    batch_size: int,
    device: torch.device | None = None,
) -> np.ndarray:
    """Log-probability of each continuation (token ids, EOS included) after each prompt, from raw
    logits by teacher forcing. Returns (len(prompts), len(continuations)) float32."""
    device = device or next(model.parameters()).device
    model.eval()
    pad_id = tokenizer.pad_token_id
    out = np.zeros((len(prompts), len(continuations)), np.float32)
    for c, cont in enumerate(continuations):
        cont_t = torch.tensor(list(cont), dtype=torch.long, device=device)
        for start in range(0, len(prompts), batch_size):
            batch = [list(p) for p in prompts[start : start + batch_size]]
            labels = cont_t.expand(len(batch), -1).contiguous()
            if kind == "seq2seq":
                x = pad(batch, pad_id).to(device)
                mask = pad([[1] * len(b) for b in batch], 0).to(device)
                logits = model(input_ids=x, attention_mask=mask, decoder_input_ids=decoder_inputs(model, labels)).logits
            else:  # left-pad prompts so every continuation starts at the same column
                x = pad([b + list(cont) for b in batch], pad_id, left=True).to(device)
                mask = pad([[1] * (len(b) + len(cont)) for b in batch], 0, left=True).to(device)
                # Positions count real tokens only: left padding must not shift absolute position embeddings.
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = model(input_ids=x, attention_mask=mask, position_ids=positions).logits[:, -len(cont) - 1 : -1]
            lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
            out[start : start + len(batch), c] = lp.sum(-1).cpu().numpy()
    return out
