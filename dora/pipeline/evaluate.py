"""``dora evaluate``: score a model on a labeled file, or score a predictions file without a model.

Examples::

    dora evaluate --task fever --model runs/distill --data test.jsonl --out scores.json
    dora evaluate --task nq --predictions preds.jsonl      # rows: {"prediction": ..., "target": ...}
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dora.errors import ConfigError, InputError
from dora.files import check_output, starts_like_json_object
from dora.pipeline.checks import as_paths, positive_ints
from dora.pipeline.config import TaskInputs
from dora.pipeline.costs.ledger import Devices, one_off
from dora.pipeline.data.inputs import iter_records, read_examples
from dora.pipeline.models.loading import ModelKind
from dora.pipeline.progress import progress_bar
from dora.pipeline.tasks.catalog import Task, get_task
from dora.pipeline.tasks.metrics import METRIC_MODES, TaskScorer


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


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig(TaskInputs):
    """Score a model (``model`` + ``data``) or a predictions file (``predictions``)."""

    model: str | None = None
    """Model directory (or hub id) to generate predictions with."""
    data: Path | None = None
    """Labeled file to predict and score (with ``model``)."""
    predictions: Path | None = None
    """JSON Lines with ``prediction`` and ``target`` (and ``source`` for BERT-iBLEU)."""
    out: Path | None = None
    """Write the scores (and, with a model, predictions next to it) as JSON here."""
    batch_size: int = 32
    """Generation batch size."""
    encoder: str | None = None
    """Sentence encoder directory for BERT-iBLEU."""
    metric_mode: str = "strict"
    """Which metric definitions ``scores`` holds: strict (dora's) or paper (the paper's code);
    ``scores_by_mode`` holds both."""
    overwrite: bool = False
    """Replace an existing ``out`` (and its predictions file) that dora cannot tell it wrote;
    without it only earlier scores/predictions files of ``dora evaluate`` are replaced. Inputs never are."""

    def __post_init__(self) -> None:
        super().__post_init__()
        as_paths(self, "data", "predictions", "out")
        if (self.model is None) == (self.predictions is None):
            raise ConfigError("give either --model with --data, or --predictions (not both)")
        if self.model is not None and self.data is None:
            raise ConfigError("--model needs --data LABELED_FILE to predict on")
        if self.metric_mode not in METRIC_MODES:
            raise ConfigError(f"--metric-mode must be {' or '.join(METRIC_MODES)}, got {self.metric_mode!r}")
        positive_ints(self, "batch_size")
        if self.out is not None:
            # Never the input, the model, or a file dora did not write (checked before the model loads).
            inputs = [self.data, self.predictions, Path(self.encoder) if self.encoder else None]
            if self.model is not None and Path(self.model).exists():
                inputs.append(Path(self.model))
            check_output(self.out, option="--out", inputs=inputs, overwrite=self.overwrite,
                         ours=lambda p: starts_like_json_object(p, SCORES_KEYS))
            if self.model is not None:
                check_output(predictions_path(self.out), option="--out (its predictions file)", inputs=inputs,
                             overwrite=self.overwrite,
                             ours=lambda p: starts_like_json_object(p, PREDICTION_KEYS, lines=True))


SCORES_KEYS = ("task", "metric", "scores", "scores_by_mode")
"""Keys every scores file of ``dora evaluate`` has: how a rerun recognises one it may replace."""
PREDICTION_KEYS = ("id", "source", "prediction", "target")


def predictions_path(out: Path) -> Path:
    """Where ``dora evaluate --out OUT`` with a model writes its predictions."""
    return out.with_name(out.stem + ".predictions.jsonl")


def _read_predictions(path: Path) -> tuple[list[str], list[str], list[str] | None]:
    preds, refs, sources = [], [], []
    for line, record in iter_records(path):
        if not isinstance(record, dict):
            raise InputError(path, "expected a JSON object", line=line, fix='write {"prediction": ..., "target": ...}')
        for key in ("prediction", "target"):
            if not isinstance(record.get(key), str):
                raise InputError(path, f"missing or non-string field {key!r}", line=line,
                                 fix='each row needs string "prediction" and "target" fields')
        preds.append(record["prediction"])
        refs.append(record["target"])
        sources.append(record.get("source"))
    if not preds:
        raise InputError(path, "no predictions in the file", fix='write one {"prediction", "target"} object per line')
    has_sources = all(isinstance(s, str) for s in sources)
    return preds, refs, sources if has_sources else None  # type: ignore[return-value]


def evaluate(config: EvaluateConfig) -> dict[str, Any]:
    """Return (and optionally write) ``{"task", "metric", "metric_mode", "scores", "scores_by_mode", ...}``."""
    start = time.perf_counter()
    task = get_task(config.task, metric=config.metric, prefix=config.prefix)
    result: dict[str, Any] = {"task": task.name, "metric": task.metric, "primary": task.primary,
                              "metric_mode": config.metric_mode}
    if config.predictions is not None:
        preds, refs, sources = _read_predictions(config.predictions)
        result["predictions_file"] = str(config.predictions)
    else:
        from dora.pipeline.engines.generation import pick_device
        from dora.pipeline.models.loading import load_model, load_tokenizer

        assert config.model is not None and config.data is not None  # checked in __post_init__
        examples = read_examples(config.data, fields=config.fields, require_target=True)
        tokenizer = load_tokenizer(config.model, revision=config.revision, trust_remote_code=config.trust_remote_code)
        model, kind = load_model(config.model, revision=config.revision, trust_remote_code=config.trust_remote_code)
        model.to(pick_device())
        sources = [e.source for e in examples]
        refs = [e.target or "" for e in examples]
        preds = predict(model, tokenizer, kind, task, sources, batch_size=config.batch_size,
                        max_source_length=config.max_source_length, max_new_tokens=config.max_new_tokens)
        result.update(model=config.model, data=str(config.data))
        if config.out is not None:
            rows = [{"id": e.id, "source": e.source, "prediction": p, "target": e.target} for e, p in zip(examples, preds)]
            pred_path = predictions_path(config.out)
            config.out.parent.mkdir(parents=True, exist_ok=True)
            pred_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            result["predictions_file"] = str(pred_path)
    scorer = TaskScorer(task, refs, sources=sources, encoder=config.encoder)
    both = scorer(preds)
    result.update(scores=both[config.metric_mode], scores_by_mode=both, scorer=scorer.describe())
    tokens = sum(len(p.split()) for p in preds)  # whitespace words: the tokenizer is not loaded for a predictions file
    result["cost"] = one_off("evaluation", Devices.here(), time.perf_counter() - start, examples=len(preds),
                             tokens=tokens) | {"tokens_are": "words"}
    if config.out is not None:
        config.out.parent.mkdir(parents=True, exist_ok=True)
        config.out.write_text(json.dumps(result, indent=2) + "\n")
    return result
