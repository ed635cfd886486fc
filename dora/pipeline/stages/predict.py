"""``dora predict``: a trained student (or teacher) on new, unlabeled data.

The input is JSON Lines, CSV or Parquet; the output has every input column plus ``prediction``,
in the format of ``--out``'s extension (Parquet to Parquet keeps the input's column types).
Predictions are generated in chunks of ``--chunk-rows``; each finished chunk is kept in a hidden
directory beside ``--out`` (``.<name>.dora-predict/``), so an interrupted run continues where it
stopped when the same command is rerun. The output appears whole at the end (written to a
temporary sibling, then renamed) and the chunk directory is removed.

Examples::

    dora predict --task fever --model runs/distill --data claims.jsonl --out claims.predicted.jsonl
    dora predict --task fever --model runs/distill --data claims.parquet --out preds.parquet --chunk-rows 50000
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from dora.errors import InputError, Interrupted
from dora.files import file_sha256, write_atomic
from dora.lock import Guarded
from dora.pipeline.data.inputs import FORMATS, iter_records, iter_sources, no_examples_error
from dora.pipeline.stages.config import PredictConfig
from dora.progress import console, progress_bar, warn
from dora.rundir import RunDir, RunWords

MARKER = "predict.json"
"""The chunk directory's record: which model, data and settings its chunks belong to."""


def chunk_dir(out: Path) -> Path:
    """Where an unfinished ``dora predict --out OUT`` keeps its finished chunks."""
    return out.with_name(f".{out.name}.dora-predict")


def predict_file(config: PredictConfig) -> dict[str, Any]:
    """Predict every row of ``config.data`` into ``config.out``; returns a summary."""
    from dora.pipeline.tasks.catalog import get_task

    start = time.perf_counter()
    task = get_task(config.task, metric=config.metric, prefix=config.prefix)
    # 1. Every row is read and checked before the model loads: a bad row fails in seconds.
    rows = _count_rows(config)
    header = _columns(config.data)
    if config.prediction_field in header:
        raise InputError(config.data, f"already has a column {config.prediction_field!r}",
                         fix="name the new column with --prediction-field, or drop that column")

    # 2. Chunks an interrupted run finished are reused when they belong to this very run (each
    #    checked now, so a damaged one fails before any work); one run at a time per --out.
    parts, identity, chunks = chunk_dir(config.out), _identity(config, rows), -(-rows // config.chunk_rows)
    run = _chunk_dir(config, parts, identity)
    failed = True
    try:
        if run.claim() is None:  # new, or another run's chunks discarded: this run's from now on
            run.write_marker(identity)
        kept = {i: _read_part(parts / _part(i), _chunk_len(config, rows, i)) for i in range(chunks)
                if (parts / _part(i)).exists() or (parts / _part(i)).is_symlink()}
        _predict_chunks(config, task, parts, rows, chunks, kept)
        # 4. The output appears whole, then the chunks go.
        predictions = [p for i in range(chunks) for p in kept[i]]
        _write_output(config, predictions)
        _remove_chunks(parts)
        failed = False
    finally:  # a failure before the first chunk leaves no chunk directory behind
        run.release(failed=failed, keep=lambda d: any(d.glob("part-*.jsonl")))
    try:
        parts.rmdir()  # unlocked: the lock file went with the lock
    except OSError:
        warn(f"{parts} holds files dora predict did not write; they are left there")
    seconds = time.perf_counter() - start
    console.print(f"predict: {rows:,} rows -> {config.out} ({seconds:.1f} s)")
    return {"rows": rows, "out": str(config.out), "model": config.model, "data": str(config.data),
            "prediction_field": config.prediction_field, "seconds": round(seconds, 3)}


def _predict_chunks(config: PredictConfig, task: Any, parts: Path, rows: int, chunks: int,
                    kept: dict[int, list[str]]) -> None:
    """3. Predict the chunks not in ``kept`` (into it), each saved in ``parts`` before it counts."""
    from dora.pipeline.engines.generation import pick_device
    from dora.pipeline.engines.inference import predict
    from dora.pipeline.models.loading import load_model, load_tokenizer

    todo = [i for i in range(chunks) if i not in kept]
    if kept:
        console.print(f"predict: {len(kept)} of {chunks} chunks already done in {parts}; continuing")
    if not todo:
        return
    tokenizer = load_tokenizer(config.model, revision=config.revision, trust_remote_code=config.trust_remote_code)
    model, kind = load_model(config.model, revision=config.revision, trust_remote_code=config.trust_remote_code)
    model.to(pick_device())
    with progress_bar() as bar:
        job = bar.add_task("predict", total=rows, completed=rows - sum(_chunk_len(config, rows, i) for i in todo),
                           info="", unit="row")
        texts = iter_sources(config.data, field=config.fields.source)  # read once
        for i in range(chunks):
            sources = list(islice(texts, config.chunk_rows))
            if i in kept:
                continue
            try:
                preds = predict(model, tokenizer, kind, task, sources, batch_size=config.batch_size,
                                max_source_length=config.max_source_length, max_new_tokens=config.max_new_tokens,
                                on_batch=lambda n: bar.advance(job, n))
            except KeyboardInterrupt:
                raise Interrupted(f"predict stopped: {len(kept)} of {chunks} chunks of {config.chunk_rows} rows "
                                  f"are kept in {parts}; rerun the same command to predict the rest") from None
            write_atomic(parts / _part(i), "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds).encode())
            kept[i] = preds


def _count_rows(config: PredictConfig) -> int:
    rows = sum(1 for _ in iter_sources(config.data, field=config.fields.source))
    if rows == 0:
        raise no_examples_error(config.data, config.fields)
    return rows


def _chunk_len(config: PredictConfig, rows: int, i: int) -> int:
    return min(config.chunk_rows, rows - i * config.chunk_rows)


def _part(i: int) -> str:
    return f"part-{i:06d}.jsonl"


def _identity(config: PredictConfig, rows: int) -> dict[str, Any]:
    """What a chunk's predictions depend on: the model's files, the data's bytes and the settings."""
    return {"model": str(config.model), "model_files": _model_stamp(config.model), "revision": config.revision,
            "data_sha256": file_sha256(config.data), "rows": rows, "task": config.task, "prefix": config.prefix,
            "source_field": config.fields.source, "chunk_rows": config.chunk_rows,
            "max_source_length": config.max_source_length, "max_new_tokens": config.max_new_tokens}


_MODEL_JSON = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "added_tokens.json", "vocab.json"}


def _model_stamp(model: str) -> list[list[Any]]:
    """Name, size and modification time of the files a model loads from (weights, config, tokenizer):
    a retrained or replaced model does not continue another's chunks, and a scores file written
    beside it later does not discard them. A hub id has none (its --revision identifies it)."""
    path = Path(model)
    if path.is_file():  # a GGUF
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and (
            p.name in _MODEL_JSON or p.name.endswith((".safetensors", ".safetensors.index.json", ".model", ".txt"))))
    else:
        return []
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


CHUNKS_LOCK = Guarded(directory="the chunk directory", create_fix="choose another --out",
                      busy="is predicting into this --out", wait="wait for it to finish, or choose another --out")
NOT_OURS = "{dir} exists but was not written by dora predict; move it away, or choose another --out"
CHUNK_WORDS = RunWords(
    not_dir=NOT_OURS, foreign=NOT_OURS,
    other="{dir} holds the chunks of an earlier dora predict with another model, data or settings; rerun that "
          "command to finish it, or pass --overwrite to discard them",
    damaged="move it away, or choose another --out")


def _chunk_dir(config: PredictConfig, parts: Path, identity: dict[str, Any]) -> RunDir:
    """The chunk directory of this very command: its record (``predict.json``) is the identity.
    Another run's chunks are refused (or, with --overwrite, discarded); a record without chunks
    costs nothing to replace; a directory without dora's record is never touched."""

    def other(record: dict[str, Any]) -> None:
        if any(parts.glob("part-*.jsonl")) and not config.overwrite:
            raise run.refusal()
        _remove_chunks(parts)

    run = RunDir(parts, identity=identity, markers=(MARKER,), field=None, words=CHUNK_WORDS, guarded=CHUNKS_LOCK,
                 other=other, adopt_empty=False)
    return run


def _remove_chunks(parts: Path) -> None:
    """Delete the chunk directory's own files (its record and ``part-*.jsonl``); a file someone else
    put there is left."""
    for path in parts.iterdir():
        if path.name == MARKER or (path.name.startswith("part-") and path.suffix == ".jsonl"):
            path.unlink()


def _read_part(path: Path, rows: int) -> list[str]:
    """A finished chunk's predictions; one damaged since it was written is refused, not misaligned."""
    try:
        if path.is_symlink():
            raise OSError("a link")  # dora writes files there, never links
        with open(path, "rb") as f:  # a chunk holds ``rows`` short strings; a planted giant is not read whole
            text = f.read(rows * (1 << 16) + 1).decode("utf-8")
        preds = [json.loads(line) for line in text.split("\n") if line]  # not splitlines: U+2028 is text
    except (OSError, ValueError, RecursionError):
        preds = []
    if len(preds) != rows or not all(isinstance(p, str) for p in preds):
        raise InputError(path, f"is not a finished chunk of {rows} predictions",
                         fix="delete it and rerun the same command: that chunk is predicted again")
    return preds


def _columns(path: Path) -> list[str]:
    """The input's column names (the union over rows for JSON Lines)."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:  # as the reader: Excel's byte-order mark
            return next(csv.reader(f), [])
    names: dict[str, None] = {}
    for _, record in iter_records(path):
        names.update(dict.fromkeys(record))
    return list(names)


def _write_output(config: PredictConfig, predictions: list[str]) -> None:
    """Every input row with its prediction, in ``out``'s format, written beside it and renamed into place."""
    out, field = config.out, config.prediction_field
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        kind = FORMATS[out.suffix.lower()]
        if kind == "parquet":
            _write_parquet(config.data, tmp, field, predictions)
        elif kind == "csv":
            header = _columns(config.data) + [field]
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
                writer.writeheader()
                for record, p in _with_predictions(config.data, predictions):
                    writer.writerow({k: _cell(v) for k, v in record.items()} | {field: p})
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for record, p in _with_predictions(config.data, predictions):
                    f.write(json.dumps(record | {field: p}, ensure_ascii=False, default=str) + "\n")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _with_predictions(data: Path, predictions: list[str]) -> Iterator[tuple[dict[str, Any], str]]:
    for (_, record), p in zip(iter_records(data), predictions, strict=True):
        yield record, p


def _cell(value: Any) -> Any:
    """A CSV cell: nested values (from JSON Lines or Parquet) as JSON, the rest as they are."""
    return json.dumps(value, ensure_ascii=False, default=str) if isinstance(value, (dict, list)) else value


def _write_parquet(data: Path, tmp: Path, field: str, predictions: list[str]) -> None:
    """Parquet out: from Parquet in, batch by batch with the input's column types; else from the rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if data.suffix.lower() == ".parquet":
        source = pq.ParquetFile(data)
        schema = source.schema_arrow.append(pa.field(field, pa.string()))
        done = 0
        with pq.ParquetWriter(tmp, schema) as writer:
            for batch in source.iter_batches(batch_size=65536):
                column = pa.array(predictions[done : done + batch.num_rows], pa.string())
                writer.write_batch(pa.RecordBatch.from_arrays([*batch.columns, column], schema=schema))
                done += batch.num_rows
        return
    records = [record | {field: p} for record, p in _with_predictions(data, predictions)]
    try:
        table = pa.Table.from_pylist(records)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise InputError(data, f"its rows cannot form one Parquet table ({str(e).splitlines()[0][:160]})",
                         fix="give --out a .jsonl or .csv name instead") from None
    pq.write_table(table, tmp)
