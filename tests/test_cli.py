"""The CLI end to end with tiny models: both stages, all six tasks, reruns, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import CACHE_OPTIONS, SHARED, fever_rows, write_jsonl
from typer.testing import CliRunner

from dora.cache import LabelCache
from dora.cli import app

runner = CliRunner()


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def ok(*args: str | Path):
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result


def test_help_lists_the_stages():
    out = ok("--help").output
    for cmd in ("teacher-label", "train-student", "evaluate", "demo"):
        assert cmd in out
    assert "Example" in ok("teacher-label", "--help").output


def test_distill_student_from_the_cache(cache_dir, t5_dir, data_dir, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    from dora.pipeline.tasks.catalog import get_task
    from dora.pipeline.tasks.metrics import TaskScorer

    out = tmp_path / "student"
    result = ok("train-student", "--task", "fever", "--student", t5_dir, "--cache", cache_dir,
                "--dev", data_dir / "dev.jsonl", "--test", data_dir / "test.jsonl", "--out", out, "--max-steps", "6",
                "--batch-size", "8", "--eval-every", "3", "--max-new-tokens", "12")
    assert "top-k KL at T=2.0" in result.output and "warning" not in result.output
    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    assert model.config.model_type == "t5"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "fever" and metrics["metric_mode"] == "strict"
    assert [h["step"] for h in metrics["history"] if "eval" in h] == [3, 6]
    # Selected on dev (the best of the evaluations), reported on test, scored from the saved predictions.
    dev_evals = [h["eval"] for h in metrics["history"] if "eval" in h]
    best = max(dev_evals, key=lambda e: e["strict_accuracy"])  # the first of equals is kept
    assert metrics["dev"]["strict"]["accuracy"] == best["strict_accuracy"]
    assert metrics["selected_on"]["file"] == str(data_dir / "dev.jsonl") and metrics["best_step"] in (3, 6)
    assert metrics["reported_on"] == {"file": str(data_dir / "test.jsonl"), "split": "test",
                                      "model": "the checkpoint selected on dev"}
    rows = [json.loads(x) for x in (out / "test_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and [r["target"] for r in rows] == [r["target"] for r in fever_rows()[200:216]]
    again = TaskScorer(get_task("fever"), [r["target"] for r in rows])([r["prediction"] for r in rows])
    assert metrics["test"] == again and metrics["eval"] == again["strict"]
    record = json.loads((out / "run.json").read_text())
    assert record["strategy"] == "distill" and record["kd_loss"] == "topk" and record["steps"] == 6
    assert record["examples_seen"] == 48 and record["tokens_seen"] > 0 and record["cost"]["wall_seconds"] > 0
    assert record["upstream_costs"]["labeling"]["examples"] == 40 and record["cache_format"] == 2
    assert not (out / "checkpoints").exists() and not (out / "best").exists()

    # The saved student scores the same through `dora evaluate`, and a predictions file scores without a model.
    scores = json.loads(ok("evaluate", "--task", "fever", "--model", out, "--data", data_dir / "test.jsonl",
                           "--out", tmp_path / "scores.json", "--max-new-tokens", "12").stdout)
    assert scores["scores"] == metrics["test"]["strict"] and scores["scores_by_mode"] == metrics["test"]
    assert scores["cost"]["stage"] == "evaluation" and scores["cost"]["examples"] == 16 and scores["cost"]["device_hours"] > 0
    preds = tmp_path / "scores.predictions.jsonl"
    again = json.loads(ok("evaluate", "--task", "fever", "--predictions", preds, "--metric-mode", "paper").stdout)
    assert again["scores"] == metrics["test"]["paper"] and again["metric_mode"] == "paper"
    same = invoke("evaluate", "--task", "fever", "--predictions", preds, "--out", preds)
    assert same.exit_code == 2 and "would overwrite the input file" in same.stderr


def test_a_format_1_cache_trains_with_one_warning(cache_dir, t5_dir, tmp_path):
    from conftest import downgrade_to_v1

    old = downgrade_to_v1(cache_dir, tmp_path / "v1")
    result = ok("train-student", "--task", "fever", "--student", t5_dir, "--cache", old, "--out", tmp_path / "s",
                "--max-steps", "2")
    assert result.output.count("is a format 1 cache") == 1 and "drops the tail's share" in result.output
    assert json.loads((tmp_path / "s" / "run.json").read_text())["cache_format"] == 1
    info = ok("cache", "info", old).output
    assert "1 (ids int32, tail at T = none)" in info


def test_dev_and_test_are_kept_apart(cache_dir, t5_dir, data_dir, tmp_path):
    base = ["train-student", "--task", "fever", "--student", t5_dir, "--cache", cache_dir, "--max-steps", "2",
            "--max-new-tokens", "4"]
    same = ok(*base, "--dev", data_dir / "test.jsonl", "--test", data_dir / "test.jsonl", "--out", tmp_path / "a")
    assert "--dev and --test are the same data" in same.output
    old = ok(*base, "--eval", data_dir / "dev.jsonl", "--out", tmp_path / "b")
    assert "--eval is deprecated" in old.output and "no --test" in old.output
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["reported_on"]["split"] == "dev" and metrics["test"] is None
    both = invoke(*base, "--eval", data_dir / "dev.jsonl", "--dev", data_dir / "dev.jsonl", "--out", tmp_path / "c")
    assert both.exit_code == 2 and "--eval is the old name of --dev" in both.stderr
    early = ok(*base[:-4], "--max-steps", "40", "--eval-every", "1", "--patience", "1", "--dev", data_dir / "dev.jsonl",
               "--out", tmp_path / "d", "--max-new-tokens", "4", "--learning-rate", "1e-6")
    record = json.loads((tmp_path / "d" / "run.json").read_text())
    assert "stopping early" in early.output and record["stopped_early"] and record["steps"] < 40
    evals = [h for h in json.loads((tmp_path / "d" / "metrics.json").read_text())["history"] if "eval" in h]
    assert len(evals) == record["steps"] and evals[-1]["eval"]["strict_accuracy"] <= evals[0]["eval"]["strict_accuracy"]


def test_annotate_and_mixed_strategies(cache_dir, t5_dir, data_dir, tmp_path):
    ok("train-student", "--task", "fever", "--student", t5_dir, "--train", data_dir / "train.jsonl",
       "--out", tmp_path / "annotate", "--max-steps", "3")
    record = json.loads((tmp_path / "annotate" / "run.json").read_text())
    assert record["strategy"] == "annotate" and record["kd_loss"] == "none" and record["gold_examples"] == 48
    ok("train-student", "--task", "fever", "--student", t5_dir, "--train", data_dir / "train.jsonl",
       "--cache", cache_dir, "--out", tmp_path / "mixed", "--max-steps", "3", "--alpha", "0.5")
    record = json.loads((tmp_path / "mixed" / "run.json").read_text())
    assert record["strategy"] == "mixed" and record["cache_rows"] == 40


def test_decoder_only_teacher_teaches_through_every_kd_loss(llama_dir, t5_dir, data_dir, tmp_path):
    cache = tmp_path / "llama-cache"
    ok("teacher-label", "--task", "fever", "--teacher", llama_dir, "--train", data_dir / "train.jsonl",
       "--pool", data_dir / "pool.jsonl", "--out", cache, "--max-steps", "3", "--top-k", "5", "--max-new-tokens", "6")
    m = LabelCache.open(cache).manifest
    assert m.teacher.kind == "causal" and m.teacher.architecture == "LlamaForCausalLM" and m.rows == 40
    assert m.generation.label_set == ["SUPPORTS", "REFUTES"]
    result = ok("train-student", "--task", "fever", "--student", t5_dir, "--cache", cache,
                "--out", tmp_path / "auto", "--max-steps", "2")
    assert result.output.count("tokenizer differs") == 1 and "aligned top-k KL" in result.output
    record = json.loads((tmp_path / "auto" / "run.json").read_text())
    assert record["kd_loss"] == "aligned"
    assert 0 < record["alignment"]["vocab_coverage"] < 1 and 0 < record["alignment"]["aligned_positions"] <= 1
    assert list((tmp_path / "auto").glob("vocab-map-*.npz"))  # kept next to the run
    first_losses = {}
    for loss in ("aligned", "uld", "labels", "sequence"):
        ok("train-student", "--task", "fever", "--student", t5_dir, "--cache", cache, "--out", tmp_path / loss,
           "--max-steps", "2", "--kd-loss", loss, "--alpha", "0.3", "--dev", data_dir / "dev.jsonl",
           "--temperature", "1")  # a vLLM-style cache stores tails at T = 1 here too
        assert json.loads((tmp_path / loss / "run.json").read_text())["kd_loss"] == loss
        history = json.loads((tmp_path / loss / "metrics.json").read_text())["history"]
        first_losses[loss] = next(h["loss"] for h in history if "loss" in h)
    # Each loss trained on a signal of its own (same data, seed and model: only the loss differs).
    assert len(set(first_losses.values())) == 4, first_losses
    bad = invoke("train-student", "--task", "fever", "--student", t5_dir, "--cache", cache,
                 "--out", tmp_path / "s2", "--kd-loss", "topk")
    assert bad.exit_code == 2 and "needs the teacher's tokenizer" in bad.stderr


def test_lora_teacher_is_merged_and_labels(t5_dir, data_dir, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    out = tmp_path / "cache"
    ok("teacher-label", "--task", "fever", "--teacher", t5_dir, "--train", data_dir / "train.jsonl",
       "--pool", data_dir / "pool.jsonl", "--out", out, "--lora", "--lora-r", "4", "--max-steps", "2",
       "--top-k", "4", "--max-new-tokens", "4")
    teacher = tmp_path / "cache.teacher"
    model = AutoModelForSeq2SeqLM.from_pretrained(teacher)  # plain weights: no adapter files needed
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert json.loads((teacher / "dora_finetune.json").read_text())["lora"]["r"] == 4
    assert LabelCache.open(out).manifest.complete


def test_rerun_skips_finished_work_and_refills_a_lost_shard(cache_dir, t5_dir, data_dir, tmp_path):
    cache = tmp_path / "fever"
    shutil.copytree(cache_dir, cache)
    shutil.copytree(cache_dir.with_name(cache_dir.name + ".teacher"), tmp_path / "fever.teacher")
    before = LabelCache.open(cache).read()
    # Simulate a crash after shard 1: shard 2 never listed, a temp file left behind.
    manifest = json.loads((cache / "manifest.json").read_text())
    lost = manifest["shards"].pop()
    manifest["complete"] = False
    (cache / "manifest.json").write_text(json.dumps(manifest))
    (cache / lost["file"]).rename(cache / "shards" / ".part-00002.parquet.tmp-123")
    with pytest.raises(Exception, match="incomplete"):
        LabelCache.open(cache)
    args = ["teacher-label", "--task", "fever", "--teacher", t5_dir, "--train", data_dir / "train.jsonl",
            "--pool", data_dir / "pool.jsonl", "--out", cache, *CACHE_OPTIONS]
    result = ok(*args)
    assert "already fine-tuned" in result.output and "2 of 3 shards already complete" in result.output
    after = LabelCache.open(cache)
    assert after.read().equals(before)
    assert after.manifest.shards[2].sha256 == lost["sha256"]  # same bytes: greedy labeling is deterministic
    assert sorted(p.name for p in (cache / "shards").iterdir()) == [f"part-0000{i}.parquet" for i in range(3)]


def _totals(cost: dict) -> tuple:
    return tuple(cost[k] for k in ("wall_seconds", "device_hours", "examples", "tokens", "steps"))


def test_a_rerun_with_nothing_to_do_adds_zero_to_every_total(cache_dir, t5_dir, data_dir, tmp_path):
    """teacher-label on a complete cache and train-student on a finished run: an entry of zero
    work in each ledger, no engine and no training started, and the report's totals unchanged."""
    cache = tmp_path / "fever"
    shutil.copytree(cache_dir, cache)
    shutil.copytree(cache_dir.with_name(cache_dir.name + ".teacher"), tmp_path / "fever.teacher")
    before = LabelCache.open(cache).manifest
    result = ok("teacher-label", "--task", "fever", "--teacher", t5_dir, "--train", data_dir / "train.jsonl",
                "--pool", data_dir / "pool.jsonl", "--out", cache, *CACHE_OPTIONS)
    assert "nothing to label" in result.output and "labeling engine" not in result.output
    after = LabelCache.open(cache).manifest
    assert after.shards == before.shards
    for stage in ("teacher_finetune", "labeling"):
        assert _totals(after.costs[stage]) == _totals(before.costs[stage])
        assert after.costs[stage]["invocations"] == before.costs[stage]["invocations"] + 1
        noop = after.costs[stage]["entries"][-1]
        assert noop["status"] == "nothing to do" and noop["wall_seconds"] == noop["examples"] == 0

    run = tmp_path / "run"
    args = ["train-student", "--task", "fever", "--student", t5_dir, "--cache", cache, "--dev", data_dir / "dev.jsonl",
            "--test", data_dir / "test.jsonl", "--out", run, "--max-steps", "4", "--max-new-tokens", "12"]
    ok(*args)
    record, weights = json.loads((run / "run.json").read_text()), (run / "model.safetensors").read_bytes()
    report = json.loads(ok("report", run, "--out", tmp_path / "r1", "--gpu-hour-usd", "2", "--json").stdout)
    again = ok(*args)
    assert "already trained with these settings" in again.output and "train student" not in again.output
    rerun = json.loads((run / "run.json").read_text())
    assert _totals(rerun["cost"]) == _totals(record["cost"]) and rerun["cost"]["invocations"] == 2
    assert (run / "model.safetensors").read_bytes() == weights
    assert json.loads(ok("report", run, "--out", tmp_path / "r2", "--gpu-hour-usd", "2", "--json").stdout) == report
    other = invoke(*args[:-4], "--max-steps", "5", "--max-new-tokens", "12")
    assert other.exit_code == 2 and "holds a finished student run with other settings" in other.stderr


TASK_DATA = {
    "fever": lambda: [(r["source"], r["target"]) for r in fever_rows()[:12]],
    "multipit_id": lambda: [(f"sentence1: the game was {w} sentence2: it was a {w} game", "YES" if i % 2 else "NO")
                            for i, w in enumerate(["great", "bad", "fun", "long", "close", "wild"] * 2)],
    "stanceosaurus": lambda: [(f"claim: vaccines cause {w} tweet: I think {w} is real", lab) for w, lab in
                              zip(["autism", "flu", "fever", "rash", "pain", "cold"] * 2,
                                  ["Irrelevant", "Supporting", "Refuting", "Discussing", "Querying", "Supporting"] * 2)],
    "wlp": lambda: _shared("wlp/wlp_test_all.json"),
    "nq": lambda: _shared("nq/nq_dev_all.json"),
    "multipit_gen": lambda: [(f"the {w} game was amazing tonight", f"tonight's {w} game was incredible")
                             for w in ["football", "chess", "tennis", "hockey", "golf", "rugby"] * 2],
}


def _shared(rel: str) -> list[tuple[str, str]]:
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"{path} is not present")
    rows = [json.loads(line) for line in path.read_text().splitlines()[:12]]
    return [(r["source"], r["target"]) for r in rows]


@pytest.mark.parametrize("task", sorted(TASK_DATA))
def test_every_paper_task_runs_both_stages(task, t5_dir, tmp_path):
    pairs = TASK_DATA[task]()
    train = write_jsonl(tmp_path / "train.jsonl", [{"source": s, "target": t} for s, t in pairs[:8]])
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"source": s} for s, _ in pairs[8:]])
    test = write_jsonl(tmp_path / "test.jsonl", [{"source": s, "target": t} for s, t in pairs[8:]])
    ok("teacher-label", "--task", task, "--teacher", t5_dir, "--train", train, "--pool", pool,
       "--out", tmp_path / "cache", "--max-steps", "1", "--top-k", "3", "--max-new-tokens", "5")
    ok("train-student", "--task", task, "--student", t5_dir, "--cache", tmp_path / "cache", "--test", test,
       "--out", tmp_path / "student", "--max-steps", "1", "--max-new-tokens", "5")
    metrics = json.loads((tmp_path / "student" / "metrics.json").read_text())
    from dora.pipeline.tasks.catalog import get_task
    from dora.pipeline.tasks.metrics import TaskScorer

    rows = [json.loads(x) for x in (tmp_path / "student" / "test_predictions.jsonl").read_text().splitlines()]
    assert [(r["source"], r["target"]) for r in rows] == pairs[8:]
    scorer = TaskScorer(get_task(task), [r["target"] for r in rows], sources=[r["source"] for r in rows])
    expected = scorer([r["prediction"] for r in rows])
    assert metrics["task"] == task and metrics["test"] == expected and metrics["eval"] == expected["strict"]
    assert metrics["reported_on"]["model"] == "the final model"  # no --dev: nothing selected


# --- bad input: one line on stderr, exit code 2, no traceback, nothing half-written -----------------


def _bad_cases(t5_dir: Path, llama_cache: Path | None, data: Path, tmp: Path, cache_dir: Path) -> dict[str, tuple]:
    (tmp / "broken.jsonl").write_text('{"source": "a"}\n{"source": \n')
    (tmp / "empty.jsonl").write_text("")
    (tmp / "latin1.jsonl").write_bytes('{"source": "caf\u00e9", "target": "x"}\n'.encode("latin-1"))
    (tmp / "notarget.jsonl").write_text('{"source": "a"}\n')
    (tmp / "preds.jsonl").write_text('{"prediction": "SUPPORTS"}\n')
    (tmp / "occupied").mkdir(exist_ok=True)
    (tmp / "occupied" / "thesis.tex").write_text("precious")
    base = ["teacher-label", "--task", "fever", "--teacher", t5_dir, "--max-steps", "1"]
    return {
        "invalid JSON in pool": ([*base, "--train", data / "train.jsonl", "--pool", tmp / "broken.jsonl"],
                                 "broken.jsonl, line 2: invalid JSON"),
        "empty pool": ([*base, "--train", data / "train.jsonl", "--pool", tmp / "empty.jsonl"], "no examples"),
        "non-UTF-8 train": ([*base, "--train", tmp / "latin1.jsonl", "--pool", data / "pool.jsonl"], "not UTF-8"),
        "train without targets": ([*base, "--train", tmp / "notarget.jsonl", "--pool", data / "pool.jsonl"],
                                  "missing field 'target'"),
        "unknown task": (["teacher-label", "--task", "sentiment", "--teacher", t5_dir, "--train",
                          data / "train.jsonl", "--pool", data / "pool.jsonl"], "unknown task 'sentiment'"),
        "missing teacher": ([*base[:3], "--teacher", tmp / "no-such-model", "--train", data / "train.jsonl",
                             "--pool", data / "pool.jsonl"], "no such model directory"),
        "top-k above vocab": ([*base, "--train", data / "train.jsonl", "--pool", data / "pool.jsonl",
                               "--top-k", "100000"], "exceeds the vocabulary"),
        "no train, no --no-finetune": (["teacher-label", "--task", "fever", "--teacher", t5_dir,
                                        "--pool", data / "pool.jsonl"], "--no-finetune"),
        "out dir holds other files": ([*base, "--train", data / "train.jsonl", "--pool", data / "pool.jsonl",
                                       "--out", tmp / "occupied"], "is not empty and is not a dora cache"),
        "student without data": (["train-student", "--task", "fever", "--student", t5_dir], "give --cache"),
        "cache of another task": (["train-student", "--task", "nq", "--student", t5_dir, "--cache", cache_dir],
                                  "labeled for task 'fever'"),
        "negative temperature": (["train-student", "--task", "fever", "--student", t5_dir, "--cache", cache_dir,
                                  "--temperature", "-1"], "--temperature must be a finite number above 0"),
        "missing cache": (["train-student", "--task", "fever", "--student", t5_dir, "--cache", tmp / "nocache"],
                          "no such cache directory"),
        "predictions without target": (["evaluate", "--task", "fever", "--predictions", tmp / "preds.jsonl"],
                                       "line 1: missing or non-string field 'target'"),
        "evaluate both modes": (["evaluate", "--task", "fever", "--model", t5_dir, "--predictions",
                                 tmp / "preds.jsonl"], "not both"),
    }


def test_bad_inputs_fail_cleanly(t5_dir, data_dir, cache_dir, tmp_path):
    cases = _bad_cases(t5_dir, None, data_dir, tmp_path, cache_dir)
    assert len(cases) >= 10
    for name, (args, needle) in cases.items():
        out = tmp_path / f"out-{abs(hash(name))}"
        has_out = "--out" in [str(a) for a in args]
        full = [*args] if has_out or args[0] == "evaluate" else [*args, "--out", out]
        result = invoke(*full)
        assert result.exit_code == 2, f"{name}: {result.output}"
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{name}: {result.stderr!r}"
        assert needle in lines[0], f"{name}: {lines[0]}"
        assert "Traceback" not in result.output
        assert not (out / "manifest.json").exists() and not (out / "shards").exists(), name
        assert not out.with_name(out.name + ".teacher").exists(), name
    assert (tmp_path / "occupied" / "thesis.tex").read_text() == "precious"


def test_a_different_pool_cannot_join_an_existing_cache(cache_dir, t5_dir, data_dir, tmp_path):
    cache = tmp_path / "fever"
    shutil.copytree(cache_dir, cache)
    before = (cache / "manifest.json").read_bytes()
    other = write_jsonl(tmp_path / "other.jsonl", [{"source": "a new claim"}])
    result = invoke("teacher-label", "--task", "fever", "--teacher", cache_dir.with_name("fever.teacher"),
                    "--no-finetune", "--pool", other, "--out", cache, "--top-k", "8", "--max-new-tokens", "12")
    assert result.exit_code == 2 and "holds a cache made with a different" in result.stderr
    assert (cache / "manifest.json").read_bytes() == before


@pytest.mark.parametrize(("args", "most"), [([], "4"), (["--pretrained"], "2"), (["--pretrained", "--quick"], "2")])
def test_demo_refuses_more_budgets_than_its_preset_has(args, most, tmp_path):
    result = CliRunner().invoke(app, ["demo", *args, "--budgets", "5", "--workdir", str(tmp_path / "d")])
    assert result.exit_code != 0 and f"--budgets must be 1 to {most}" in result.output
    assert not (tmp_path / "d").exists()


def test_demo_quick_runs_both_strategies(tmp_path):
    result = ok("demo", "--quick", "--budgets", "2", "--seeds", "1", "--workdir", tmp_path / "demo")
    rows = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert [(r["strategy"], r["gold_labels"], r["seed"]) for r in rows] == [
        ("annotate", 60, 0), ("distill", 60, 0), ("annotate", 120, 0), ("distill", 120, 0)]
    assert all(0 <= r["accuracy"] <= 1 and r["wall_seconds"] > 0 for r in rows)
    assert rows[0]["examples_seen"] == rows[1]["examples_seen"]  # equal student compute
    assert result.stderr.count("verdict: At ") == 2 and "with one seed per strategy" in result.stderr
    assert "annotate" in result.output and "distill" in result.output
    for n in (60, 120):
        assert LabelCache.open(tmp_path / "demo" / f"cache-{n}").manifest.complete
    report = (tmp_path / "demo" / "report" / "report.csv").read_text()
    assert report.count("annotate") >= 2 and (tmp_path / "demo" / "report" / "report.png").is_file()
    # The demo's runs are ordinary run records: `dora report` prices them with the user's price.
    priced = json.loads(ok("report", *sorted((tmp_path / "demo" / "runs").iterdir()), "--out", tmp_path / "r",
                           "--gpu-hour-usd", "2", "--json").stdout)
    assert len(priced) == 4 and all(r["total_usd"] > r["label_usd"] for r in priced)


def test_console_script_reports_errors_without_traceback(tmp_path):
    """The installed entry point, in a real process: a user mistake is one line and exit code 2."""
    import subprocess
    import sys

    bad = tmp_path / "pool.jsonl"
    bad.write_text('{"source": "ok"}\nnot json\n')
    proc = subprocess.run([sys.executable, "-m", "dora", "teacher-label", "--task", "fever", "--teacher", "t5-small",
                           "--no-finetune", "--pool", str(bad), "--out", str(tmp_path / "cache")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {bad}, line 2: invalid JSON (Expecting value at column 1); "
                                   "write one JSON object per line")
    assert not (tmp_path / "cache").exists()
    version = subprocess.run([sys.executable, "-m", "dora", "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("dora ")


def test_engine_errors_are_one_line(t5_dir, llama_dir, data_dir, tmp_path, monkeypatch):
    import dora.pipeline.engines.registry as engines

    base = ["teacher-label", "--task", "fever", "--no-finetune", "--pool", data_dir / "pool.jsonl"]
    t5 = invoke(*base, "--teacher", t5_dir, "--out", tmp_path / "a", "--engine", "vllm")
    assert t5.exit_code == 2 and "vLLM has no T5ForConditionalGeneration (encoder-decoder) support" in t5.stderr
    monkeypatch.setattr(engines, "vllm_available", lambda: False)
    missing = invoke(*base, "--teacher", llama_dir, "--out", tmp_path / "b", "--engine", "vllm")
    assert missing.exit_code == 2 and missing.stderr.count("\n") == 1
    assert "vLLM is not installed; install it with `pip install 'dora-distill[vllm]'`" in missing.stderr
    auto = ok(*base, "--teacher", llama_dir, "--out", tmp_path / "c", "--engine", "auto", "--max-new-tokens", "3")
    assert "labeling engine: transformers (vLLM is not installed)" in auto.output
    bad_arg = invoke(*base, "--teacher", llama_dir, "--out", tmp_path / "d", "--engine-arg", "no_equals_sign")
    assert bad_arg.exit_code == 2 and "is not key=value" in bad_arg.stderr
    tp = invoke(*base, "--teacher", llama_dir, "--out", tmp_path / "e", "--tensor-parallel-size", "2")
    assert tp.exit_code == 2 and "need --engine vllm" in tp.stderr


def test_the_cli_starts_without_heavy_libraries():
    """cli.py's promise: heavy libraries load inside the commands, so `dora --help` stays fast (the
    --kd-loss help comes from the objectives registry, which must not import torch to give it)."""
    import subprocess
    import sys

    code = ("import sys, dora.cli; "
            "print(sorted(m for m in ('torch', 'transformers', 'pyarrow', 'accelerate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
