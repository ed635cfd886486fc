"""benchmarks/paper_effect.py --quick: the protocol end to end with tiny models built from configs
(a teacher Llama, an encoder student), in a real process, as a person runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_effect.py"


def test_paper_effect_quick_reports_every_point(tmp_path):
    fever = SHARED / "fever" / "fever_dev_all.json"
    if not fever.is_file():
        pytest.skip("the shared FEVER claims are not beside the checkout")
    out = tmp_path / "points.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--workdir", str(tmp_path / "work"),
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    saved = json.loads(out.read_text())
    # Every point is there: 3 budgets x 2 strategies x 2 seeds, none dropped, each a finished run.
    assert len(saved["points"]) == 12
    assert {(p["budget"], p["strategy"]) for p in saved["points"]} == {
        (n, s) for n in (8, 16, 24) for s in ("distill", "annotate")}
    for p in saved["points"]:
        assert (Path(p["run"]) / "run.json").is_file() and 0 <= p["score"] <= 1
    assert [r["budget"] for r in saved["summary"]] == [8, 16, 24]
    # The splits are disjoint: no test or dev row is in the pool or the gold labels.
    splits = {name: {json.loads(x)["id"] for x in Path(path).read_text().splitlines()}
              for name, path in saved["splits"].items()}
    assert not splits["test"] & (splits["dev"] | splits["pool"] | splits["gold"])
    assert not splits["dev"] & (splits["pool"] | splits["gold"])
    # The printed table has a row per budget, and the backtest ran on the points.
    assert proc.stdout.count("\n| 8 |") == 1 and "| 24 |" in proc.stdout
    assert "Backtest" in proc.stdout and set(saved["backtest"]) == {"annotate", "mixed"}
    assert "Wall time" in proc.stdout


def test_paper_effect_writes_only_into_its_own_workdir(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's file")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--workdir", str(mine)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "did not write" in proc.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
