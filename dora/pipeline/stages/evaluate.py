"""``dora evaluate``: score a model on a labeled file, or score a predictions file without a model.

Examples::

    dora evaluate --task fever --model runs/distill --data test.jsonl --out scores.json
    dora evaluate --task nq --predictions preds.jsonl      # rows: {"prediction": ..., "target": ...}
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dora.checks import as_paths, positive_ints
from dora.errors import ConfigError, InputError
from dora.files import check_output, starts_like_json_object
from dora.pipeline.costs.ledger import Devices, one_off
from dora.pipeline.data.inputs import iter_records, read_examples
from dora.pipeline.engines.inference import predict
from dora.pipeline.stages.config import TaskInputs
from dora.pipeline.tasks.catalog import get_task
from dora.pipeline.tasks.metrics import METRIC_MODES, TaskScorer


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
