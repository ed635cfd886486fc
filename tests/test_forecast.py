"""`dora forecast` (learning curves from measured runs) and `dora cache select` (the annotation
queue from the teacher's doubt): curve fitting on synthetic points with known parameters, interval
coverage over seeds, the extrapolation guard, the queue's order against hand-computed scores and
its size against the budget."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from dora.cache import LabelCache
from dora.cli import app
from dora.pipeline.stages.forecast import Curve, bootstrap, crossing, fit_curve
from dora.pipeline.stages.select import doubt_scores, labels_for

runner = CliRunner()


def test_the_fit_recovers_known_parameters():
    x = np.geomspace(10, 1000, 8)
    for truth in (Curve(0.8, 0.5, 0.5), Curve(0.65, 2.0, 1.2), Curve(0.9, 0.3, 0.1)):
        got = fit_curve(x, truth(x))
        assert got.c == pytest.approx(truth.c, rel=0.03) and got.a == pytest.approx(truth.a, abs=0.01)
        assert got(300.0) == pytest.approx(truth(300.0), abs=1e-3)
    flat = fit_curve([10, 100, 1000], [0.7, 0.6, 0.5])  # falling with money: the best rising curve is flat
    assert flat.b == 0 and flat(5000) == pytest.approx(0.6)
    with pytest.raises(Exception, match="two or more different"):
        fit_curve([10, 10], [0.5, 0.6])


@pytest.mark.parametrize("per_budget, budgets", [(4, 6), (1, 8)])
def test_intervals_cover_the_truth_at_about_their_level(per_budget, budgets):
    truth, rng, covered, trials = Curve(0.8, 0.5, 0.5), np.random.default_rng(0), 0, 100
    for seed in range(trials):
        x = np.repeat(np.geomspace(5, 500, budgets), per_budget)
        y = truth(x) + rng.normal(0, 0.01, len(x))
        draws = np.array([c(100.0) for c in bootstrap(x, y, samples=200, seed=seed)])
        low, high = np.quantile(draws, [0.05, 0.95])
        covered += low <= truth(100.0) <= high
    assert 0.74 <= covered / trials <= 0.98  # nominal 0.9; the residual bootstrap runs a little under
    assert bootstrap([1, 2, 3], [0.1, 0.2, 0.3]) == []  # three points fit exactly: no interval


def test_crossing_is_where_the_curves_meet():
    from dora.pipeline.stages.forecast import Strategy

    def strategy(curve: Curve) -> Strategy:
        return Strategy(name="x", dollars=[], scores=[], runs=[], labels=[], curve=curve, curves=[])

    a, b = strategy(Curve(0.9, 1.0, 0.5)), strategy(Curve(0.7, 0.2, 0.5))  # equal where 0.2 = 0.8 x^-0.5: x = 16
    assert crossing(a, b, 1, 1000) == pytest.approx(16.0, rel=1e-3)
    assert crossing(a, b, 20, 1000) is None
    assert crossing(a, strategy(Curve(0.9, 1.0, 0.5)), 1, 10) == 1.0  # equal everywhere: they meet at once


# --- cache select --------------------------------------------------------------------------------

def test_select_ranks_by_hand_computed_doubt(cache_dir, tmp_path):
    rows = LabelCache.open(cache_dir).read().to_pylist()
    # Hand-computed, row by row, from the stored columns.
    margin = [sorted(r["label_logprobs"], reverse=True)[0] - sorted(r["label_logprobs"], reverse=True)[1] for r in rows]
    tail = [float(np.mean([math.exp(t[0]) for t in r["tail_logprobs"]])) for r in rows]
    entropy = []
    for r in rows:
        per_token = []
        for lps, t in zip(r["topk_logprobs"], r["tail_logprobs"]):
            p = [math.exp(v) for v in lps]
            rest = math.exp(t[0])
            per_token.append(-sum(q * math.log(q) for q in p) - (rest * math.log(rest) if rest > 0 else 0.0))
        entropy.append(float(np.mean(per_token)))
    scores = doubt_scores(LabelCache.open(cache_dir))
    np.testing.assert_allclose(scores["label_margin"], margin, atol=1e-5)
    np.testing.assert_allclose(scores["tail_mass"], tail, rtol=1e-5)
    np.testing.assert_allclose(scores["mean_entropy"], entropy, rtol=1e-3, atol=1e-4)  # float16 log-probs

    for by, key, sign in (("margin", margin, 1), ("entropy", entropy, -1), ("tail", tail, -1),
                          ("seq-logprob", [r["seq_logprob"] for r in rows], 1)):
        out = tmp_path / f"{by}.jsonl"
        result = runner.invoke(app, ["cache", "select", str(cache_dir), "--out", str(out), "--n", "7", "--by", by])
        assert result.exit_code == 0, result.output
        queue = [json.loads(line) for line in out.read_text().splitlines()]
        want = sorted(range(len(rows)), key=lambda i: (sign * key[i], i))[:7]
        assert [q["row"] for q in queue] == want, by
        assert [q["rank"] for q in queue] == list(range(1, 8))
        assert all(q["target"] == "" and q["teacher_label"] == rows[q["row"]]["target"] for q in queue)
    default = tmp_path / "auto.csv"
    result = runner.invoke(app, ["cache", "select", str(cache_dir), "--out", str(default), "--n", "7"])
    assert result.exit_code == 0 and "by margin" in result.output  # the cache has label scores
    assert default.read_text().splitlines()[0].startswith("id,source,teacher_label,target,rank,row,")


def test_the_queue_is_what_the_budget_buys_and_never_more(cache_dir, tmp_path):
    assert labels_for(1.29, 0.129) == 10 and labels_for(1.289, 0.129) == 9 and labels_for(0.3, 0.1) == 3
    out = tmp_path / "q.jsonl"
    result = runner.invoke(app, ["cache", "select", str(cache_dir), "--out", str(out), "--budget", "1.29"])
    assert result.exit_code == 0, result.output  # FEVER at the paper's 0.129 USD per label
    assert len(out.read_text().splitlines()) == 10 and "at 0.129 USD per label" in result.output
    result = runner.invoke(app, ["cache", "select", str(cache_dir), "--out", str(out), "--budget", "2",
                                 "--annotation-usd", "0.5"])
    assert result.exit_code == 2 and "exists" in result.output  # never over a file without --overwrite
    result = runner.invoke(app, ["cache", "select", str(cache_dir), "--out", str(out), "--budget", "2",
                                 "--annotation-usd", "0.5", "--overwrite"])
    assert result.exit_code == 0 and len(out.read_text().splitlines()) == 4
    for args, message in ((["--n", "3", "--budget", "1"], "exactly one of --n"), (["--budget", "0.1"], "buys no label"),
                          (["--n", "3", "--by", "vibes"], "--by must be")):
        result = runner.invoke(app, ["cache", "select", str(cache_dir), "--out", str(tmp_path / "x.jsonl"), *args])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.jsonl").exists()


def test_a_cache_without_label_scores_ranks_by_entropy(cache_dir, data_dir, tmp_path):
    teacher = cache_dir.with_name(cache_dir.name + ".teacher")
    result = runner.invoke(app, ["teacher-label", "--task", "fever", "--teacher", str(teacher), "--no-finetune",
                                 "--pool", str(data_dir / "pool.jsonl"), "--out", str(tmp_path / "c"), "--top-k", "4",
                                 "--max-new-tokens", "6", "--no-score-labels"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["cache", "select", str(tmp_path / "c"), "--out", str(tmp_path / "q.jsonl"), "--n", "3",
                                 "--by", "margin"])
    assert result.exit_code == 2 and "has no label_logprobs" in result.output and "--by entropy" in result.output
    result = runner.invoke(app, ["cache", "select", str(tmp_path / "c"), "--out", str(tmp_path / "q.jsonl"), "--n", "3"])
    assert result.exit_code == 0 and "by entropy" in result.output
    queue = [json.loads(line) for line in (tmp_path / "q.jsonl").read_text().splitlines()]
    assert "label_margin" not in queue[0] and queue[0]["mean_entropy"] >= queue[-1]["mean_entropy"]


# --- sweep, then forecast ------------------------------------------------------------------------

def test_a_sweep_of_tiny_budgets_resumes_and_feeds_the_forecast(t5_dir, data_dir, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["sweep", "--task", "fever", "--teacher", str(t5_dir), "--student", str(t5_dir),
            "--train", str(data_dir / "train.jsonl"), "--pool", str(data_dir / "pool.jsonl"),
            "--dev", str(data_dir / "dev.jsonl"), "--test", str(data_dir / "test.jsonl"), "--out", str(sweep),
            "--max-steps", "4", "--batch-size", "4", "--top-k", "4", "--max-new-tokens", "4", "--max-target-length", "4"]
    result = runner.invoke(app, [*args, "--budgets", "8,16"])
    assert result.exit_code == 0, result.output
    points = json.loads((sweep / "sweep.json").read_text())["points"]
    assert [(p["strategy"], p["gold_labels"]) for p in points] == [("annotate", 8), ("distill", 8), ("annotate", 16),
                                                                   ("distill", 16)]
    gold8, gold16 = ((sweep / "data" / f"gold-{n}-seed0.jsonl").read_text().splitlines() for n in (8, 16))
    assert gold16[:8] == gold8  # a smaller budget's labels are a subset of a larger one's
    run = json.loads((sweep / "distill-16-seed0" / "run.json").read_text())
    assert run["upstream_costs"]["teacher_finetune"]["gold_labels"] == 16
    assert run["upstream_costs"]["teacher_finetune"]["steps"] == 4

    # Other settings may not reuse these points; a third budget may: the four finished points are skipped, two run.
    result = runner.invoke(app, [*args, "--budgets", "8,16", "--learning-rate", "1e-3"])
    assert result.exit_code == 2 and "other learning_rate" in " ".join(result.output.split())
    # A third budget: the four finished points are skipped, two run.
    result = runner.invoke(app, [*args, "--budgets", "8,16,24"])
    assert result.exit_code == 0, result.output
    assert " ".join(result.output.split()).count("finished earlier") == 4
    assert len(json.loads((sweep / "sweep.json").read_text())["points"]) == 6

    out = tmp_path / "forecast"
    result = runner.invoke(app, ["forecast", str(sweep), "--budget", "2.5", "--gpu-hour-usd", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    forecast = json.loads((out / "forecast.json").read_text())
    assert set(forecast["strategies"]) == {"annotate", "distill"}
    for s in forecast["strategies"].values():
        assert len(s["points"]) == 3 and s["low"] is None  # three points fit exactly: no interval claimed
        bt = s["backtest"]
        assert bt["error"] == pytest.approx(bt["predicted"] - bt["measured"])
        assert (bt["fitted_up_to_labels"], bt["predicted_labels"]) == (16, 24)
    assert "no interval" in forecast["recommendation"] and (out / "forecast.png").read_bytes()[:4] == b"\x89PNG"
    # Far beyond the measured dollars: refused unless asked.
    result = runner.invoke(app, ["forecast", str(sweep), "--budget", "500", "--gpu-hour-usd", "2", "--out", str(out)])
    assert result.exit_code == 2 and "--extrapolate" in result.output
    result = runner.invoke(app, ["forecast", str(sweep), "--budget", "2.5", "--out", str(out)])  # CPU time unpriced
    assert result.exit_code == 2 and "a price is missing" in result.output
    result = runner.invoke(app, ["forecast", str(sweep), "--budget", "500", "--gpu-hour-usd", "2", "--out", str(out),
                                 "--extrapolate"])
    assert result.exit_code == 0 and json.loads((out / "forecast.json").read_text())["extrapolated"] is True


def test_a_queue_drops_out_of_the_cache_for_its_gold_labels(cache_dir, tmp_path):
    queue = tmp_path / "queue.jsonl"
    assert runner.invoke(app, ["cache", "select", str(cache_dir), "--out", str(queue), "--n", "5"]).exit_code == 0
    result = runner.invoke(app, ["cache", "filter", str(cache_dir), str(tmp_path / "rest"), "--exclude", str(queue)])
    assert result.exit_code == 0 and "kept 35 of 40 rows" in result.output, result.output
    queued = {json.loads(line)["id"] for line in queue.read_text().splitlines()}
    rest = LabelCache.open(tmp_path / "rest")
    assert not queued & set(rest.read().column("id").to_pylist())
    assert rest.manifest.lineage["filter"]["criteria"] == {"excluded_ids": 5}
