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
from dora.pipeline.models.kinds import ModelKind


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

    The tail is summed over the complement directly (never ``1 - top-k mass``), so a tiny tail keeps
    its precision: one ``exp`` buffer per T, its total summed, the top-k entries zeroed in place, the
    rest summed. Rows whose tail underflows float32 there (below 1e-30 of the total) are recomputed
    with a logsumexp over the complement alone. -inf when the top-k is the whole vocabulary.

    Args:
        logits: (..., V) raw logits; topk_ids: (..., k); temperatures: n values.
    Returns:
        (..., n) float32.
    """
    return tails_and_normaliser(logits, topk_ids, temperatures)[0]


def tails_and_normaliser(logits: torch.Tensor, topk_ids: torch.Tensor,
                         temperatures: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(``tail_logprobs``, ``logsumexp(logits)`` of shape (..., 1)): the normaliser at T = 1 comes
    from the same pass when 1 is among the temperatures, so log-probabilities cost no extra pass."""
    z = logits.float()
    ids = topk_ids.long()
    top = z.amax(-1, keepdim=True)
    shifted = z - top  # max at 0: exp never overflows and the total is >= 1
    buf = torch.empty_like(shifted)
    out, norm = [], None
    for t in temperatures:
        if t == 1.0:
            torch.exp(shifted, out=buf)
        else:
            torch.mul(shifted, 1.0 / t, out=buf).exp_()
        total = buf.sum(-1)
        if t == 1.0:
            norm = top + total.log().unsqueeze(-1)
        tail = buf.scatter_(-1, ids, 0.0).sum(-1)
        lp = tail.log() - total.log()
        lost = tail < total * 1e-30  # underflowed terms: redo those rows exactly
        if lost.any():
            zt = shifted[lost] / t
            lp[lost] = torch.logsumexp(zt.scatter(-1, ids[lost], float("-inf")), -1) - torch.logsumexp(zt, -1)
        out.append(lp)
    if norm is None:
        norm = torch.logsumexp(z, dim=-1, keepdim=True)
    tails = torch.stack(out, dim=-1) if out else z.new_zeros((*z.shape[:-1], 0))
    return tails, norm


def plan_batches(lengths: Sequence[int], batch_size: int, max_new_tokens: int,
                 batch_tokens: int | None = None) -> list[list[int]]:
    """Indices of each generation batch: longest prompt first (less padding), at most ``batch_size``
    rows, and with ``batch_tokens`` at most that many padded positions, rows x (longest prompt +
    ``max_new_tokens``), so batches of long prompts shrink. A prompt over the limit alone is a
    batch of one."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        current = batches[-1] if batches else None
        width = lengths[current[0]] + max_new_tokens if current else 0  # the first row is the batch's longest
        if (current is None or len(current) >= batch_size
                or (batch_tokens is not None and (len(current) + 1) * width > batch_tokens)):
            batches.append([i])
        else:
            current.append(i)
    return batches


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
    batch_tokens: int | None = None,
) -> list[Generated]:
    """Decode every prompt (token ids, see ``encode_prompts``), greedy unless ``temperature`` > 0;
    with ``k`` also keep the top-k log-probs per generated token, and with ``kd_temperatures`` the
    log tail mass outside that top-k at each of those temperatures (``tail_logprobs``).

    Prompts are batched by ``plan_batches`` (longest first, at most ``batch_size`` rows and
    ``batch_tokens`` padded positions) and results returned in input order.
    """
    device = device or next(model.parameters()).device
    model.eval()
    config = _generation_config(model, tokenizer, max_new_tokens, temperature, top_p)
    eos, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    results: list[Generated | None] = [None] * len(prompts)
    for idx in plan_batches([len(p) for p in prompts], batch_size, max_new_tokens, batch_tokens):
        batch = [prompts[i] for i in idx]
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
