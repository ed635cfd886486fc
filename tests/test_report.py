"""Prices, cost records, `dora report` and `dora budget` on real runs of both strategies."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from dora.cli import app
from dora.errors import ConfigError
from dora.pipeline.costs.pricing import PAPER_ANNOTATION_USD, Prices

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, t5_dir, data_dir, cache_dir):
    """An annotate run (with TensorBoard) and a distill run on the shared cache."""
    root = tmp_path_factory.mktemp("runs")
    common = ["train-student", "--task", "fever", "--student", str(t5_dir), "--dev", str(data_dir / "dev.jsonl"),
              "--test", str(data_dir / "test.jsonl"), "--max-steps", "10", "--eval-every", "5", "--max-new-tokens", "4"]
    result = runner.invoke(app, [*common, "--train", str(data_dir / "train.jsonl"), "--out", str(root / "annotate"),
                                 "--report-to", "tensorboard"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*common, "--cache", str(cache_dir), "--out", str(root / "distill")])
    assert result.exit_code == 0, result.output
    return root


def test_prices_trace_every_dollar_and_never_invent_one(tmp_path):
    p = Prices.resolve("wlp")
    assert p.labels(10).usd == pytest.approx(2.60) and "paper's estimate for wlp" in p.labels(10).source
    line = p.compute("labeling", {"device": "NVIDIA A100", "device_hours": 2.0})
    assert line.usd is None and "price missing" in line.source  # no compute price given: none made up
    assert Prices.resolve("mytask").annotation_usd is None
    prices = tmp_path / "prices.yaml"
    prices.write_text("gpu_hour_usd: {A100: 1.5, 'NVIDIA A100-SXM4-80GB': 2.0, '*': 9}\nannotation_usd: 0.5\n")
    p = Prices.resolve("fever", prices_file=prices)
    assert p.compute("x", {"device": "NVIDIA A100-SXM4-80GB", "device_hours": 1}).usd == 2.0  # the longest match
    assert p.compute("x", {"device": "NVIDIA A100-PCIE", "device_hours": 1}).usd == 1.5
    assert p.compute("x", {"device": "cpu", "device_hours": 1}).usd == 9
    assert p.labels(2).usd == 1.0 and Prices.resolve("fever", prices_file=prices, annotation_usd=0.1).labels(2).usd == 0.2
    assert set(PAPER_ANNOTATION_USD) == {"wlp", "stanceosaurus", "fever", "multipit_id", "multipit_gen", "nq"}
    prices.write_text("gpu_hour_usd: {A100: -1}\n")
    with pytest.raises(ConfigError, match="non-negative"):
        Prices.resolve("fever", prices_file=prices)


def test_training_writes_curves_and_tensorboard_events(runs):
    with open(runs / "annotate" / "curves.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [5, 10] and rows[-1]["loss"]
    assert rows[0]["eval_strict_accuracy"] and rows[0]["eval_paper_accuracy"]  # dev scores, both definitions
    assert list((runs / "annotate" / "tensorboard").glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(runs / "annotate" / "tensorboard"))
    events.Reload()
    assert {"loss", "eval_strict_accuracy", "eval_paper_accuracy"} <= set(events.Tags()["scalars"])
    record = json.loads((runs / "distill" / "run.json").read_text())
    for stage in ("teacher_finetune", "labeling"):
        cost = record["upstream_costs"][stage]
        assert {"device", "device_count", "wall_seconds", "device_hours", "examples", "tokens"} <= set(cost)
    assert record["upstream_costs"]["teacher_finetune"]["gold_labels"] == 48


def test_report_prices_runs_and_draws_the_plot(runs, tmp_path):
    out = tmp_path / "report"
    result = runner.invoke(app, ["report", str(runs / "annotate"), str(runs / "distill"), "--out", str(out),
                                 "--gpu-hour-usd", "3.0", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["strategy"]: r for r in json.loads(result.output)}
    assert rows["annotate"]["gold_labels"] == 48 and rows["annotate"]["label_usd"] == pytest.approx(48 * 0.129)
    assert rows["distill"]["gold_labels"] == 48  # the teacher's labels are the distill route's labels
    for r in rows.values():
        assert r["total_usd"] == pytest.approx(r["label_usd"] + r["compute_usd"], abs=1e-3)
        assert r["compute_usd"] == pytest.approx(3.0 * r["device_hours"], abs=1e-3)
    assert rows["distill"]["labeling_device_hours"] > 0
    with open(out / "report.csv", newline="") as f:
        assert {r["strategy"] for r in csv.DictReader(f)} == {"annotate", "distill"}
    for png in ("report.png", "curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    unpriced = runner.invoke(app, ["report", str(runs / "annotate"), "--out", str(tmp_path / "r2"), "--json"])
    assert json.loads(unpriced.output)[0]["total_usd"] is None  # compute unpriced: no total made up


def test_report_plots_the_test_score_in_the_chosen_metric_mode(runs, tmp_path):
    metrics = json.loads((runs / "distill" / "metrics.json").read_text())
    assert metrics["reported_on"]["split"] == "test" and metrics["selected_on"]["file"].endswith("dev.jsonl")
    for mode in ("strict", "paper"):
        result = runner.invoke(app, ["report", str(runs / "distill"), "--out", str(tmp_path / mode), "--metric-mode",
                                     mode, "--json"])
        assert result.exit_code == 0, result.output
        (row,) = json.loads(result.output)
        assert row["metric_mode"] == mode and row["score"] == metrics["test"][mode]["accuracy"] and not row["notes"]
    # A run without --test is plotted with its dev score, and says so.
    dev_only = tmp_path / "dev-only"
    (dev_only).mkdir()
    (dev_only / "run.json").write_text((runs / "distill" / "run.json").read_text())
    (dev_only / "metrics.json").write_text(json.dumps({**metrics, "test": None}))
    (row,) = json.loads(runner.invoke(app, ["report", str(dev_only), "--out", str(tmp_path / "r"), "--json"]).output)
    assert row["score"] == metrics["dev"]["strict"]["accuracy"] and "picked the checkpoint" in row["notes"]
    bad = runner.invoke(app, ["report", str(runs / "distill"), "--metric-mode", "loose"])
    assert bad.exit_code == 2 and "--metric-mode must be paper or strict" in bad.stderr


def test_budget_plans_every_option_from_a_recorded_run(runs):
    result = runner.invoke(app, ["budget", "--task", "fever", "--budget", "100", "--labels-owned", "48", "--from",
                                 str(runs / "distill"), "--pool-rows", "1000", "--gpu-hour-usd", "2.0", "--json"])
    assert result.exit_code == 0, result.output
    plans = {p["option"]: p for p in json.loads(result.output)}
    assert plans["annotate"]["labels_bought"] == int(100 / 0.129)
    distill = plans["distill"]
    assert [line["what"].split(" on ")[0] for line in distill["lines"]] == [
        "teacher_finetune", "labeling", "student_train", "more gold labels with what is left"]
    assert all(line["source"] for line in distill["lines"]) and distill["total_usd"] <= 100
    assert distill["lines"][1]["quantity"] == pytest.approx(
        json.loads((runs / "distill" / "run.json").read_text())["upstream_costs"]["labeling"]["device_hours"] * 1000 / 40,
        rel=1e-3)
    assert any(name.startswith("mixed") for name in plans)
    text = runner.invoke(app, ["budget", "--task", "fever", "--budget", "100", "--from", str(runs / "distill")])
    assert text.exit_code == 0 and "price missing" in text.output
    bad = runner.invoke(app, ["budget", "--task", "fever", "--budget", "100", "--from", str(runs / "annotate"),
                              "--gpu-hour-usd", "1"])
    assert bad.exit_code == 2 and "not a distill run" in bad.output


def test_budget_from_measured_rates_when_no_run_is_recorded(tmp_path):
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"gpu_hour_usd": {"H100": 2.5}}))
    result = runner.invoke(app, ["budget", "--task", "nq", "--budget", "1000", "--labels-owned", "500", "--pool-rows",
                                 "1000000", "--device", "NVIDIA H100", "--finetune-hours", "4",
                                 "--label-rows-per-hour", "200000", "--student-rows-per-hour", "500000",
                                 "--prices", str(prices), "--json"])
    assert result.exit_code == 0, result.output
    distill = {p["option"]: p for p in json.loads(result.output)}["distill"]
    hours = [line["quantity"] for line in distill["lines"][:3]]
    assert hours == pytest.approx([4.0, 5.0, 2.0])
    spent = 11.0 * 2.5
    assert distill["lines"][3]["quantity"] == int((1000 - spent) / 0.129)  # nq: the paper's 0.129 per label
    # The mixed strategy: exactly those labels, chosen by the teacher's doubt.
    bought = distill["lines"][3]["quantity"]
    assert distill["note"].endswith(f"dora cache select CACHE --n {bought} --out queue.jsonl")
    partial = runner.invoke(app, ["budget", "--task", "nq", "--budget", "10", "--finetune-hours", "4"])
    assert partial.exit_code == 2 and "need all three" in partial.output


def test_report_to_an_uninstalled_tracker_fails_before_training(t5_dir, data_dir, tmp_path):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    result = runner.invoke(app, ["train-student", "--task", "fever", "--student", str(t5_dir), "--train",
                                 str(data_dir / "train.jsonl"), "--out", str(tmp_path / "run"), "--report-to", "wandb"])
    assert result.exit_code == 2 and "--report-to wandb needs the wandb package" in result.output
    assert not (tmp_path / "run").exists()
