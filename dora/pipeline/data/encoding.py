"""Turning examples into token ids for seq2seq and decoder-only models, and batching them.

Seq2seq: encoder input ``prefix + source``, labels ``target + EOS``.
Causal: ``prefix + source`` as the prompt, ``target + EOS`` as the completion, one sequence;
the loss falls on the completion only (prompt labels are -100).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dora.pipeline.models.kinds import ModelKind

if TYPE_CHECKING:  # torch is imported where tensors are made: the CLI reads this module's users for help
    import torch

IGNORE = -100


def prompt_ids(tokenizer: Any, text: str, max_length: int) -> list[int]:
    """Token ids of an encoder input or causal prompt, truncated from the right."""
    return tokenizer(text, truncation=True, max_length=max_length)["input_ids"]


def encode_prompts(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of many encoder inputs or causal prompts at once (what the engines take)."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"] if texts else []


def target_ids(tokenizer: Any, text: str, max_length: int) -> list[int]:
    """Token ids of a target with EOS last (EOS kept even when the text is cut)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: max_length - 1]
    return [*ids, tokenizer.eos_token_id]


def encode_pair(
    tokenizer: Any, kind: ModelKind, source: str, labels: list[int], max_source_length: int
) -> dict[str, list[int]]:
    """One training example from an input text and label ids (gold or a teacher's ``target_ids``)."""
    prompt = prompt_ids(tokenizer, source, max_source_length)
    if kind == "seq2seq":
        return {"input_ids": prompt, "labels": labels}
    return {"input_ids": [*prompt, *labels], "labels": [IGNORE] * len(prompt) + labels}


def pad(seqs: Sequence[Sequence[int]], value: int, *, left: bool = False) -> torch.Tensor:
    import torch

    width = max(len(s) for s in seqs)
    rows = [([value] * (width - len(s)) + list(s)) if left else (list(s) + [value] * (width - len(s))) for s in seqs]
    return torch.tensor(rows, dtype=torch.long)


def collate(features: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``input_ids`` (with pad_id) and ``labels`` (with -100); build the attention mask."""
    input_ids = pad([f["input_ids"] for f in features], pad_id)
    mask = pad([[1] * len(f["input_ids"]) for f in features], 0)
    labels = pad([f["labels"] for f in features], IGNORE)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def decoder_inputs(model: Any, labels: torch.Tensor) -> torch.Tensor:
    """A seq2seq model's decoder inputs for ``labels`` (shifted right, -100 as padding), so the
    forward pass returns logits without computing a loss of its own."""
    inner = getattr(model, "module", model)  # DistributedDataParallel wraps the model
    return inner.prepare_decoder_input_ids_from_labels(labels=labels)


def causal_targets(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift a causal LM's logits and labels so position i predicts token i + 1."""
    return logits[:, :-1], labels[:, 1:]
