"""A model's predictions on raw sources, and its dev scores: what ``dora evaluate``, ``dora predict``
and training's checkpoint selection (teacher and student) share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dora.pipeline.models.kinds import ModelKind
from dora.pipeline.tasks.catalog import Task
from dora.pipeline.tasks.metrics import TaskScorer
from dora.progress import progress_bar


def predict(model: Any, tokenizer: Any, kind: ModelKind, task: Task, sources: list[str], *, batch_size: int,
            max_source_length: int, max_new_tokens: int, on_batch: Callable[[int], None] | None = None) -> list[str]:
    """Greedy predictions for raw sources (the task prefix is added), stripped of whitespace.

    A classifier (``kind`` "classifier") predicts the label its head scores highest, by name
    (``id2label``), instead of generating.

    Progress goes to ``on_batch(rows)`` when given (a caller with its own display), else to a bar here."""
    from dora.pipeline.data.encoding import encode_prompts
    from dora.pipeline.engines.generation import hf_generate

    prompts = encode_prompts(tokenizer, [task.source_prefix + s for s in sources], max_source_length)

    def generate(advance: Callable[[int], None]) -> list[str]:
        if kind == "classifier":
            return classify(model, tokenizer, prompts, batch_size=batch_size, on_batch=advance)
        generated = hf_generate(model, tokenizer, kind, prompts, batch_size=batch_size,
                                max_new_tokens=max_new_tokens, on_batch=advance)
        return [tokenizer.decode(g.ids.tolist(), skip_special_tokens=True).strip() for g in generated]

    if on_batch is not None:
        return generate(on_batch)
    with progress_bar() as bar:
        job = bar.add_task("predict", total=len(sources), info="", unit="row")
        return generate(lambda n: bar.advance(job, n))


def dev_scores(model: Any, tokenizer: Any, kind: ModelKind, task: Task, sources: list[str], scorer: TaskScorer, *,
               batch_size: int, max_source_length: int, max_new_tokens: int) -> dict[str, float]:
    """A model's scores on dev under both metric definitions, flat (``{"strict_accuracy": ...,
    "paper_accuracy": ...}``): what the training loop logs and selects on (teacher and student)."""
    preds = predict(model, tokenizer, kind, task, sources, batch_size=batch_size,
                    max_source_length=max_source_length, max_new_tokens=max_new_tokens)
    return {f"{mode}_{key}": value for mode, scores in scorer(preds).items() for key, value in scores.items()}


def classify(model: Any, tokenizer: Any, prompts: list[list[int]], *, batch_size: int,
             on_batch: Callable[[int], None]) -> list[str]:
    """A classifier's label (``id2label`` of its highest logit) for each encoded input, in order;
    batches of similar length together, so little padding is computed."""
    import torch

    from dora.pipeline.data.encoding import pad

    labels = model.config.id2label
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for lo in range(0, len(order), batch_size):
                rows = order[lo : lo + batch_size]
                ids = pad([prompts[i] for i in rows], tokenizer.pad_token_id or 0).to(device)
                mask = pad([[1] * len(prompts[i]) for i in rows], 0).to(device)
                picked = model(input_ids=ids, attention_mask=mask).logits.argmax(-1).tolist()
                for i, p in zip(rows, picked):
                    out[i] = str(labels[p])
                on_batch(len(rows))
    finally:
        model.train(was_training)
    return out
