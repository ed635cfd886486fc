"""Classifier students: an encoder (BERT, MiniLM, RoBERTa, ...) with a head over a closed label set.

For tasks whose outputs are one of a few labels (FEVER, MultiPIT_id, Stanceosaurus, or your own
with ``--labels``), a pretrained encoder with a classification head is the strongest small
student a CPU can train. It learns from

* gold rows: cross-entropy on the gold label's index;
* cache rows: the teacher's distribution over the labels (the cache's ``label_logprobs``: each
  label verbaliser scored as a sequence by the teacher, normalised over the label set here), by
  KL at temperature T times T^2, plus ``alpha`` times cross-entropy on the teacher's own label
  (the most likely one).

The head's label order is the student's (``LabelHead``); the cache's order is mapped onto it by
name, so a cache labeled with the labels in another order trains the same student.

Example (what ``dora train-student`` does with an encoder student)::

    head = LabelHead(("SUPPORTS", "REFUTES"))
    objective = LabelObjective.build(head, cache, temperature=2.0, alpha=0.0)
    rows = gold_features(tokenizer, gold, head, prefix="fever: ", max_source_length=128, path="gold.jsonl")
    loss = objective.loss(model, collate_classifier(rows, tokenizer.pad_token_id))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dora.errors import CacheError, InputError
from dora.pipeline.data.encoding import IGNORE, pad, prompt_ids

if TYPE_CHECKING:
    import torch

    from dora.cache import LabelCache
    from dora.pipeline.data.inputs import Example


@dataclass(frozen=True)
class LabelHead:
    """The student's labels, in the order of its head's outputs (``id2label``)."""

    labels: tuple[str, ...]

    def index(self, label: str) -> int | None:
        """The head's output for ``label`` (surrounding whitespace ignored), None when it is not one."""
        try:
            return self.labels.index(label.strip())
        except ValueError:
            return None

    def require(self, example: Example, path: object) -> int:
        """The head's output for a gold example's target; a target that is not one of the labels
        is refused, naming the file and the row."""
        index = self.index(example.target or "")
        if index is None:
            raise InputError(path, f"row {example.row + 1}: target {example.target!r} is not one of the labels "
                             f"{', '.join(self.labels)}", fix="fix the row, or pass --labels with every label your data uses")
        return index

    def order_of(self, other: Sequence[str], where: str) -> np.ndarray:
        """For labels ``other`` (a cache's order): the head's index of each. Raises when the two
        are not the same set of labels."""
        if sorted(other) != sorted(self.labels) or len(set(other)) != len(other):
            raise CacheError(f"{where}: the teacher scored the labels {', '.join(other)}, the student's head has "
                             f"{', '.join(self.labels)}; pass --labels {','.join(other)} (or relabel the pool with "
                             f"--labels {','.join(self.labels)})")
        return np.array([self.labels.index(label) for label in other], dtype=np.int64)


def scored_labels(cache: LabelCache) -> tuple[str, ...]:
    """The labels the teacher scored into the cache's ``label_logprobs``, in column order; raises
    when it scored none (what a classifier student learns from)."""
    scored = tuple(cache.manifest.generation.label_set or ())
    if not scored:
        raise CacheError(f"{cache.root}: a classifier student learns the teacher's scores of the labels "
                         "(label_logprobs), which this cache lacks; relabel the pool with `dora teacher-label` "
                         "on a closed-label task (or with --labels A,B,...) and without --no-score-labels, or "
                         "train a seq2seq student on it")
    return scored


def gold_features(tokenizer: Any, examples: Sequence[Example], head: LabelHead, *, prefix: str,
                  max_source_length: int, path: object) -> list[dict[str, Any]]:
    """One feature per gold example: the encoded input and its label's index. A target that is
    not one of the head's labels is refused, naming the file and the row."""
    return [{"input_ids": prompt_ids(tokenizer, prefix + ex.source, max_source_length), "labels": head.require(ex, path)}
            for ex in examples]


class LabelObjective:
    """What a classifier student learns from one cache shard, and its loss on a batch (gold rows
    and cache rows mixed). The same interface as ``dora.pipeline.kd.objectives.Objective``
    (``columns``, ``featurise``, ``describe``, ``record``), so the student stage streams cache
    shards through it alike."""

    def __init__(self, head: LabelHead, *, temperature: float = 2.0, alpha: float = 0.0,
                 order: np.ndarray | None = None, distill: bool = True) -> None:
        self.head, self.temperature, self.alpha = head, temperature, alpha
        self.order = order  # the head's index of each of the cache's labels
        self.name = "labels" if distill else "none"

    @classmethod
    def build(cls, head: LabelHead, cache: LabelCache | None, *, temperature: float, alpha: float) -> LabelObjective:
        """The objective for ``cache`` (None: gold only). Raises when the cache holds no label scores."""
        if cache is None:
            return cls(head, temperature=temperature, alpha=alpha, distill=False)
        scored = scored_labels(cache)
        return cls(head, temperature=temperature, alpha=alpha, order=head.order_of(list(scored), str(cache.root)))

    def columns(self) -> list[str]:
        return ["source", "label_logprobs"]

    def featurise(self, table: Any, tokenizer: Any, *, prefix: str, max_source_length: int,
                  max_target_length: int) -> list[dict[str, Any]]:
        """One feature per cache row: the encoded input, the teacher's label log-probabilities in
        the head's order, and the teacher's own label (its most likely) as the hard label."""
        from dora.cache.shard import DecodedShard

        assert self.order is not None, "build() maps the cache's labels onto the head"
        shard = DecodedShard(table)
        sources, scores = shard.sources, shard.label_logprobs
        in_head = np.full_like(scores, -np.inf)
        in_head[:, self.order] = scores
        encoded = tokenizer([prefix + s for s in sources], truncation=True, max_length=max_source_length)["input_ids"]
        return [{"input_ids": ids, "labels": int(row.argmax()), "label_logprobs": row}
                for ids, row in zip(encoded, in_head)]

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The student's loss on a batch (``collate_classifier``): one forward pass, then
        ``dora.pipeline.kd.losses.label_kd_loss``."""
        from dora.pipeline.kd.losses import label_kd_loss

        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return label_kd_loss(logits, batch["labels"], batch.get("label_logprobs"), batch.get("label_rows"),
                             temperature=self.temperature, alpha=self.alpha)

    def describe(self) -> str:
        labels = ", ".join(self.head.labels)
        if self.name == "none":
            return f"loss: cross-entropy on gold labels over the head's labels ({labels})"
        return (f"loss: KL at T={self.temperature} to the teacher's distribution over the labels ({labels}), "
                f"alpha={self.alpha} on its own label; cross-entropy on gold rows")

    def record(self) -> dict[str, Any]:
        return {"kd_loss": self.name, "alignment": None, "labels": list(self.head.labels)}


def collate_classifier(features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask``; ``labels`` (B,) the gold or the teacher's
    label index; for batches with cache rows ``label_logprobs`` (B, C) and ``label_rows`` (B,)."""
    import torch

    batch = {"input_ids": pad([f["input_ids"] for f in features], pad_id),
             "attention_mask": pad([[1] * len(f["input_ids"]) for f in features], 0),
             "labels": torch.tensor([f.get("labels", IGNORE) for f in features], dtype=torch.long)}
    width = next((len(f["label_logprobs"]) for f in features if "label_logprobs" in f), 0)
    if width:
        scores = np.zeros((len(features), width), np.float32)
        rows = np.zeros(len(features), bool)
        for i, f in enumerate(features):
            if "label_logprobs" in f:
                scores[i], rows[i] = f["label_logprobs"], True
        batch.update(label_logprobs=torch.from_numpy(scores), label_rows=torch.from_numpy(rows))
    return batch
