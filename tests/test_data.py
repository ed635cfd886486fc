"""Reading inputs: three formats, and the errors a user sees for bad files."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dora.errors import InputError
from dora.pipeline.data.inputs import Fields, fingerprint, read_examples

ROWS = [{"source": "Cats purr.", "target": "SUPPORTS"}, {"source": "Dogs meow, \"loudly\".", "target": "REFUTES"}]


def test_three_formats_read_the_same(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS) + "\n")
    with open(tmp_path / "a.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["source", "target"])
        w.writeheader()
        w.writerows(ROWS)
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "a.parquet")
    got = [read_examples(tmp_path / f"a.{ext}", require_target=True) for ext in ("jsonl", "csv", "parquet")]
    assert got[0] == got[1] == got[2]
    assert [e.target for e in got[0]] == ["SUPPORTS", "REFUTES"]
    assert fingerprint(got[0]) == fingerprint(got[2])


def test_custom_fields_ids_and_unlabeled_pool(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text(json.dumps({"claim": "x", "uid": "u1"}) + "\n" + json.dumps({"claim": "y", "uid": "u2"}) + "\n")
    ex = read_examples(path, fields=Fields(source="claim", id="uid"), require_target=False)
    assert [(e.id, e.row, e.source, e.target) for e in ex] == [("u1", 0, "x", None), ("u2", 1, "y", None)]


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("bad.jsonl", b'{"source": "a", "target": "b"}\n{"source": "a", \n', "line 2: invalid JSON"),
        ("empty.jsonl", b"\n\n", "no examples"),
        ("latin1.jsonl", '{"source": "caf\u00e9", "target": "b"}\n'.encode("latin-1"), "line 1: not UTF-8"),
        ("missing.jsonl", b'{"source": "a", "target": "b"}\n{"src": "a", "target": "b"}\n', "line 2: missing field 'source'"),
        ("number.jsonl", b'{"source": "a", "target": 1}\n', "line 1: field 'target' is a number"),
        ("list.jsonl", b'{"source": ["a"], "target": "b"}\n', "field 'source' is list"),
        ("blank.jsonl", b'{"source": "  ", "target": "b"}\n', "line 1: empty 'source'"),
        ("array.jsonl", b'["a", "b"]\n', "line 1: expected a JSON object"),
        ("dup.jsonl", b'{"id": "1", "source": "a", "target": "b"}\n{"id": "1", "source": "c", "target": "d"}\n', "duplicate id"),
        ("notarget.jsonl", b'{"source": "a"}\n', "missing field 'target'"),
        ("data.txt", b"hello\n", "unknown file type"),
        ("bad.parquet", b"PAR1 not really", "not a readable Parquet file"),
    ],
)
def test_bad_inputs_name_file_line_and_fix(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        read_examples(path, require_target=True)
    message = str(info.value)
    assert needle in message and str(path) in message and "\n" not in message
    assert ";" in message  # a fix follows the problem


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found; check the path"):
        read_examples(tmp_path / "nope.jsonl", require_target=False)
