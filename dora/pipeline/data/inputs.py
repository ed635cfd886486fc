"""Reading and validating examples from JSON Lines, CSV or Parquet.

Every problem is raised as :class:`dora.errors.InputError` naming the file, the line (1-based,
as an editor shows it; for Parquet the 1-based row) and the fix.

>>> import json, tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "gold.jsonl"
>>> _ = p.write_text(json.dumps({"source": "Cats purr.", "target": "SUPPORTS"}) + "\\n")
>>> read_examples(p, require_target=True)[0].target
'SUPPORTS'
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dora.errors import InputError

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True, slots=True)
class Example:
    """One input row. ``row`` is its 0-based position in the file; ``id`` is stable across runs."""

    id: str
    row: int
    source: str
    target: str | None


@dataclass(frozen=True, kw_only=True)
class Fields:
    """Column names in the user's files."""

    source: str = "source"
    """Input column name."""
    target: str = "target"
    """Output (label) column name."""
    id: str = "id"
    """Stable id column; a file without it gets its row numbers as ids."""


def _format_of(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(
            path, f"unknown file type {path.suffix or '(no extension)'!r}",
            fix="use .jsonl (JSON Lines), .csv or .parquet",
        )
    return fmt


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as f:  # line by line: a pool of millions of rows is never held whole
        for number, line in enumerate(f, start=1):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(path, f"not UTF-8 (byte {e.start + 1} of the line)",
                                 line=number, fix="re-save the file as UTF-8") from None
            if not text.strip():
                continue
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as e:
                raise InputError(path, f"invalid JSON ({e.msg} at column {e.colno})", line=number,
                                 fix="write one JSON object per line") from None
            except RecursionError:  # the parser recurses once per nesting level
                raise InputError(path, "invalid JSON for dora: nested too deeply", line=number,
                                 fix="write one flat JSON object per line") from None
            except ValueError as e:  # an integer of thousands of digits (Python's conversion limit)
                raise InputError(path, f"invalid JSON for dora ({str(e).split(';')[0][:120]})", line=number,
                                 fix="write one JSON object per line, numbers as strings") from None


def _csv_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(first line of the row, {column: value}) for each row after the header.

    Strict, because a lenient reader mislabels silently: a quote left open swallows the rows after
    it into one field (labeled by whichever row closes it), and an unquoted comma shifts a row's
    fields. So a quote that never closes or closes mid-field, a row with more or fewer fields than
    the header, a repeated column name, and a field that holds both a line break and the delimiter
    (a quote that swallowed the next row, most likely) are errors naming the line.
    """
    quote_fix = 'close the quote, or double a quote inside a quoted field ("")'
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, strict=True)
        header: list[str] | None = None
        while True:
            begin = reader.line_num + 1  # the row's first line; a quoted field may span several
            try:
                row = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError:
                raise InputError(path, "not UTF-8", line=reader.line_num + 1, fix="re-save the file as UTF-8") from None
            except csv.Error as e:
                if "unexpected end of data" in str(e):
                    raise InputError(path, "a quoted field opened on this line is never closed: it would swallow "
                                     "every row after it", line=begin, fix=quote_fix) from None
                if "expected after" in str(e):
                    swallowed = (f" on line {reader.line_num}: a quote left open swallowed the rows between"
                                 if reader.line_num > begin else "")
                    raise InputError(path, f"a quoted field closes mid-field ({e}){swallowed}", line=begin,
                                     fix=quote_fix) from None
                raise InputError(path, f"invalid CSV ({e})", line=begin,
                                 fix="quote fields that contain commas or newlines") from None
            if not row:
                continue  # a blank line
            if header is None:
                repeated = sorted({name for name in row if row.count(name) > 1})
                if repeated:
                    raise InputError(path, f"column {repeated[0]!r} appears more than once in the header",
                                     line=begin, fix="give every column its own name")
                header = row
                continue
            if len(row) != len(header):
                raise InputError(path, f"{len(row)} field{'s' * (len(row) != 1)}, but the header has {len(header)}",
                                 line=begin, fix="quote fields that contain commas, and give every row every column "
                                                 "(an empty one as nothing between two commas)")
            if len(header) > 1:
                for name, value in zip(header, row):
                    if ("\n" in value or "\r" in value) and "," in value:
                        raise InputError(
                            path, f"field {name!r} runs over several lines (to line {reader.line_num}) and holds a "
                            "comma: a quote left open that swallowed the next row?", line=begin,
                            fix=f"{quote_fix}; if the line break belongs to the text, replace it with a space "
                                "or use JSON Lines")
            yield begin, dict(zip(header, row))


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise InputError(path, f"not a readable Parquet file ({e})",
                         fix="write it with pandas.DataFrame.to_parquet or pyarrow") from None
    number = 0
    batches = pf.iter_batches(batch_size=4096)
    while True:
        try:
            records = next(batches).to_pylist()
        except StopIteration:
            return
        except Exception as e:  # a damaged row group fails only when it is read
            detail = str(e).splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise InputError(path, f"not a readable Parquet file ({detail})", line=number + 1,
                             fix="write it with pandas.DataFrame.to_parquet or pyarrow") from None
        for record in records:
            number += 1
            yield number, record


def iter_records(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, raw record) from a JSON Lines, CSV or Parquet file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found" if not path.exists() else "not a file",
                         fix="check the path")
    fmt = _format_of(path)
    yield from {"jsonl": _jsonl_rows, "csv": _csv_rows, "parquet": _parquet_rows}[fmt](path)


def _text_field(path: Path, line: int, record: dict, name: str, *, required: bool) -> str | None:
    value = record.get(name)
    if value is None:
        if required:
            present = ", ".join(sorted(map(str, record))) or "none"
            raise InputError(path, f"missing field {name!r} (fields present: {present})", line=line,
                             fix=f"add {name!r} to every row, or name your column with --source-field / --target-field")
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "id":
        raise InputError(path, f"field {name!r} is a number ({value!r}), not a string", line=line,
                         fix='quote it, e.g. "1" instead of 1')
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise InputError(path, f"field {name!r} is {type(value).__name__}, not a string", line=line,
                         fix=f"make {name!r} a string")
    return str(value)


def _source(path: Path, line: int, record: Any, field: str) -> str:
    """A row's input text: the row must be an object, and the text a non-empty string."""
    if not isinstance(record, dict):
        raise InputError(path, f"expected a JSON object, got {type(record).__name__}", line=line,
                         fix='write objects like {"source": "...", "target": "..."}')
    source = _text_field(path, line, record, field, required=True) or ""
    if not source.strip():
        raise InputError(path, f"empty {field!r}", line=line, fix="remove the row or give it an input text")
    return source


def iter_sources(path: str | Path, *, field: str = "source") -> Iterator[str]:
    """Yield each row's validated input text, and nothing else of the row (``dora predict``: new
    data's other columns are the user's, passed through unread)."""
    path = Path(path)
    for line, record in iter_records(path):
        yield _source(path, line, record, field)


def iter_examples(path: str | Path, *, fields: Fields = Fields(), require_target: bool) -> Iterator[tuple[int, Example]]:
    """Yield (line number, validated example) one at a time; ids are not checked for duplicates."""
    path = Path(path)
    row = 0
    for line, record in iter_records(path):
        source = _source(path, line, record, fields.source)
        target = _text_field(path, line, record, fields.target, required=require_target)
        if require_target and target is not None and not target.strip():
            raise InputError(path, f"empty {fields.target!r}", line=line,
                             fix="remove the row or give it a label")
        ident = _text_field(path, line, record, fields.id, required=False)
        yield line, Example(id=str(row) if ident is None else ident, row=row, source=source, target=target)
        row += 1


def duplicate_id_error(path: Path, fields: Fields, ident: str, first_row: int, line: int) -> InputError:
    return InputError(path, f"duplicate id {ident!r} (first at row {first_row + 1})", line=line,
                      fix=f"make the {fields.id!r} column unique or drop it")


def no_examples_error(path: Path, fields: Fields) -> InputError:
    return InputError(path, "no examples in the file", fix=f"give at least one row with a {fields.source!r} field")


def read_examples(
    path: str | Path,
    *,
    fields: Fields = Fields(),
    require_target: bool,
    limit: int | None = None,
) -> list[Example]:
    """Read and validate every row of ``path`` into memory (labeled sets; pools stream: ``dora.pipeline.data.pool``).

    require_target: the file is labeled data (train/eval) and each row needs a non-empty target;
        otherwise (an unlabeled pool) the target column may be absent.
    limit: read at most this many rows.
    """
    path = Path(path)
    examples: list[Example] = []
    seen: dict[str, int] = {}
    for line, ex in iter_examples(path, fields=fields, require_target=require_target):
        if limit is not None and len(examples) >= limit:
            break
        if ex.id in seen:
            raise duplicate_id_error(path, fields, ex.id, seen[ex.id], line)
        seen[ex.id] = ex.row
        examples.append(ex)
    if not examples:
        raise no_examples_error(path, fields)
    return examples


def fingerprint_update(h: Any, ex: Example) -> None:
    h.update(json.dumps([ex.id, ex.source], ensure_ascii=False).encode())
    h.update(b"\n")


def fingerprint(examples: Sequence[Example]) -> str:
    """sha256 over ids and sources: identifies a pool independently of its file format."""
    h = hashlib.sha256()
    for ex in examples:
        fingerprint_update(h, ex)
    return h.hexdigest()
