"""A newcomer's first hour (issue 18, in part): bad pseudo-labels are counted and said, a typo in
a local model path fails at once, and task names are matched without regard to case."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from dora.cache import LabelCache
from dora.cli import app

runner = CliRunner()


def test_off_label_pseudo_labels_are_counted_recorded_and_warned(t5_dir, cache_dir, data_dir, tmp_path):
    # An untrained teacher emits anything: most of its pseudo-labels are neither SUPPORTS nor REFUTES.
    result = runner.invoke(app, ["teacher-label", "--task", "fever", "--teacher", str(t5_dir), "--no-finetune",
                                 "--pool", str(data_dir / "pool.jsonl"), "--out", str(tmp_path / "c"), "--top-k", "4",
                                 "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    targets = LabelCache.open(tmp_path / "c").read().column("target").to_pylist()
    off = [t for t in targets if t.strip() not in ("SUPPORTS", "REFUTES")]
    assert len(off) > 2  # the premise: this teacher misses the label set
    recorded = LabelCache.open(tmp_path / "c").manifest.stats["off_label"]
    assert (recorded["rows"], recorded["of"]) == (len(off), 40) and recorded["share"] == pytest.approx(len(off) / 40)
    assert recorded["most_common"][0]["rows"] == max(off.count(t) for t in set(off))
    text = " ".join(result.output.split())
    assert f"{len(off) / 40:.1%} of the pseudo-labels ({len(off)} of 40) are none of the task's labels" in text
    shown = runner.invoke(app, ["cache", "info", str(tmp_path / "c")])
    assert shown.exit_code == 0 and "off-label pseudo-labels" in shown.output
    assert f"{len(off) / 40:.1%} ({len(off)} of 40" in " ".join(shown.output.split())
    as_json = json.loads(runner.invoke(app, ["cache", "info", str(tmp_path / "c"), "--json"]).output)
    assert as_json["off_label"]["rows"] == len(off)
    # The fine-tuned teacher's cache (at least 30 of 40 on the label set): its own share, shown with costs in units.
    good = runner.invoke(app, ["cache", "info", str(cache_dir)])
    fine = sum(t.strip() not in ("SUPPORTS", "REFUTES") for t in LabelCache.open(cache_dir).read().column("target").to_pylist())
    assert f"{fine / 40:.1%} ({fine} of 40" in " ".join(good.output.split())
    assert "device-hours on" in good.output


def test_a_missing_local_model_path_fails_at_once(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()  # an existing parent directory: models/t5-typo is a path, not a hub id
    start = time.perf_counter()
    result = runner.invoke(app, ["teacher-label", "--task", "fever", "--teacher", "models/t5-typo", "--no-finetune",
                                 "--pool", str(data_dir / "pool.jsonl"), "--out", str(tmp_path / "c")])
    assert time.perf_counter() - start < 2.0
    assert result.exit_code == 2 and "models/t5-typo: no such model directory" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "c").exists()


def test_task_names_match_without_regard_to_case(cache_dir, t5_dir, data_dir, tmp_path):
    result = runner.invoke(app, ["train-student", "--task", "FEVER", "--student", str(t5_dir), "--cache", str(cache_dir),
                                 "--out", str(tmp_path / "s"), "--max-steps", "1", "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s" / "metrics.json").read_text())["task"] == "fever"


@pytest.mark.parametrize("command", [[], ["demo"], ["cache", "verify"], ["sweep"], ["forecast"], ["cache", "select"]])
def test_every_entry_point_shows_an_example(command):
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "Example" in result.output, result.output


def test_help_says_what_the_id_field_default_means_and_keeps_budget_with_the_options():
    text = " ".join(runner.invoke(app, ["train-student", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "(default: the row number). [default: id]" not in text and "gets its row numbers as ids" in text
    budget = runner.invoke(app, ["budget", "--help"], env={"COLUMNS": "200"}).output
    prices = budget[budget.index("Prices"):]
    assert "--budget " not in prices.split("╰")[0]  # the required --budget is not a price
