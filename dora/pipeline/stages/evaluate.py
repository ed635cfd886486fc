"""``dora evaluate``: score a model on a labeled file, or score a predictions file without a model.

Examples::

    dora evaluate --task fever --model runs/distill --data test.jsonl --out scores.json
    dora evaluate --task nq --predictions preds.jsonl      # rows: {"prediction": ..., "target": ...}
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from dora.errors import InputError
from dora.pipeline.costs.ledger import Devices, one_off
from dora.pipeline.data.inputs import iter_records, read_examples
from dora.pipeline.engines.inference import predict
from dora.pipeline.stages.config import EvaluateConfig, predictions_path
from dora.pipeline.tasks.catalog import get_task
from dora.pipeline.tasks.metrics import TaskScorer


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
