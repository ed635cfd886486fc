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


# --- point 1: progress lines when stderr is not a terminal -----------------------------------------------------


def test_progress_lines_appear_while_a_run_goes_when_stderr_is_not_a_terminal(t5_dir, data_dir, tmp_path, monkeypatch):
    from dora import progress

    monkeypatch.setattr(progress, "QUIET_START_SECONDS", 0.0)  # this tiny run's every tenth, however fast
    # CliRunner's stderr is not a terminal: a rich bar there would show only when it ended.
    result = runner.invoke(app, ["train-student", "--task", "fever", "--student", str(t5_dir), "--train",
                                 str(data_dir / "train.jsonl"), "--dev", str(data_dir / "dev.jsonl"), "--out",
                                 str(tmp_path / "s"), "--max-steps", "20", "--batch-size", "4", "--eval-every", "10",
                                 "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    steps = [int(x.split("step ")[1].split("/")[0]) for x in lines if x.startswith("train student: step ") and "/" in x]
    assert steps == [2 * i for i in range(1, 11)]  # each tenth once, in order
    first = next(i for i, x in enumerate(lines) if x.startswith("train student: step 2/20 (10%)"))
    assert first < next(i for i, x in enumerate(lines) if x.startswith("student: saved"))
    assert "step/s, ETA " in lines[first] and ", loss " in lines[first]
    # Evaluation on dev reports its own progress too.
    assert any(x.startswith("predict: row 16/16 (100%)") for x in lines)


def test_line_progress_prints_each_tenth_every_interval_and_the_end(monkeypatch, capsys):
    from dora import progress

    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    with progress.LineProgress(seconds=30) as bar:
        task = bar.add_task("label pool", total=1000, completed=400, unit="row")  # resumed at 400
        for _ in range(9):  # 9 rows in 90 s: no tenth crossed, two intervals passed
            clock[0] += 10
            bar.advance(task, 1)
        bar.update(task, advance=91, info="12 tok/s")  # 500: the next tenth
        clock[0] += 5
        bar.advance(task, 3)  # 503: nothing due; printed at the end
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["label pool: row 403/1,000 (40%), 0.1 row/s, ETA 1h39m",  # 30 s: 3 rows done here
                     "label pool: row 406/1,000 (41%), 0.1 row/s, ETA 1h39m",
                     "label pool: row 409/1,000 (41%), 0.1 row/s, ETA 1h38m",
                     "label pool: row 500/1,000 (50%), 1.11 row/s, ETA 7m30s, 12 tok/s",  # 100 rows in 90 s
                     "label pool: row 503/1,000 (50%), 1.08 row/s, ETA 7m38s, 12 tok/s"]


def test_line_progress_keeps_a_short_display_to_its_last_line(monkeypatch, capsys):
    from dora import progress

    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    with progress.LineProgress(seconds=30) as bar:
        quick = bar.add_task("predict", total=300, unit="row")
        for _ in range(10):  # a dev evaluation: 300 rows in half a second
            clock[0] += 0.05
            bar.advance(quick, 30)
        slow = bar.add_task("train student", total=100, unit="step")
        for _ in range(10):  # 10 steps a second: tenths from the second second on
            clock[0] += 0.1
            bar.advance(slow, 1)
        for _ in range(30):
            clock[0] += 0.1
            bar.advance(slow, 1)
    lines = capsys.readouterr().err.splitlines()
    assert [x.split(",")[0] for x in lines] == ["train student: step 20/100 (20%)", "train student: step 30/100 (30%)",
                                                "train student: step 40/100 (40%)", "predict: row 300/300 (100%)"]


def test_line_progress_speaks_every_interval_while_nothing_advances(capsys):
    import time as real_time

    from dora import progress

    # One step longer than the interval (a slow step, an engine start): the log still shows a line.
    with progress.LineProgress(seconds=0.2) as bar:
        bar.add_task("train teacher", total=10, unit="step")
        real_time.sleep(1.5)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 2 and set(lines) == {"train teacher: step 0/10 (0%)"}


def test_progress_is_plain_lines_on_a_forced_colour_log(monkeypatch):
    from dora import progress

    monkeypatch.setenv("FORCE_COLOR", "1")  # rich then calls any stream a terminal
    monkeypatch.setattr(progress, "console", progress.Console(stderr=True))
    assert progress.console.is_terminal and not progress.on_terminal()
    assert isinstance(progress.progress_bar(), progress.LineProgress)


# --- point 2: dora predict --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher(cache_dir):
    """The tiny T5 teacher the shared cache's run fine-tuned (it emits SUPPORTS / REFUTES)."""
    return cache_dir.with_name(cache_dir.name + ".teacher")


def _greedy(model_dir, sources, max_new_tokens):
    """Predictions made here without dora: transformers' generate, one row at a time."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    out = []
    for s in sources:
        ids = model.generate(**tok(["fever: " + s], return_tensors="pt"), max_new_tokens=max_new_tokens, do_sample=False)
        out.append(tok.decode(ids[0], skip_special_tokens=True).strip())
    return out


def test_predict_round_trips_a_file_without_targets_in_each_format(teacher, data_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(x) | {"n": i, "meta": {"k": [i]}} for i, x in enumerate((data_dir / "pool.jsonl").read_text().splitlines())]
    assert all("target" not in r for r in rows)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["predict", "--task", "fever", "--model", str(teacher), "--max-new-tokens", "6", "--batch-size", "1"]
    result = runner.invoke(app, [*args, "--data", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 0, result.output
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "prediction"} for r in out] == rows  # every column, every row, in order
    expected = _greedy(teacher, [r["source"] for r in rows], 6)
    assert [r["prediction"] for r in out] == expected and {"SUPPORTS", "REFUTES"} & set(expected)
    assert "predict: row 40/40 (100%)" in result.output

    # Parquet in, Parquet out: the input's column types are kept.
    pq.write_table(pa.table({"id": [r["id"] for r in rows], "source": [r["source"] for r in rows],
                             "n": pa.array(range(40), pa.int16())}), tmp_path / "in.parquet")
    assert runner.invoke(app, [*args, "--data", str(tmp_path / "in.parquet"), "--out",
                               str(tmp_path / "out.parquet")]).exit_code == 0
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.field("n").type == pa.int16() and table.column("prediction").to_pylist() == expected
    # CSV in, CSV out, with another source column and prediction column.
    with open(tmp_path / "in.csv", "w", newline="") as f:
        import csv

        writer = csv.writer(f)
        writer.writerow(["claim", "note"])
        writer.writerows([r["source"], f"row {i}"] for i, r in enumerate(rows))
    assert runner.invoke(app, [*args, "--data", str(tmp_path / "in.csv"), "--out", str(tmp_path / "out.csv"),
                               "--source-field", "claim", "--prediction-field", "label"]).exit_code == 0
    import csv

    with open(tmp_path / "out.csv", newline="") as f:
        read = list(csv.DictReader(f))
    assert [r["label"] for r in read] == expected and read[3]["note"] == "row 3" and list(read[0]) == ["claim", "note", "label"]


def test_predict_resumes_from_its_last_finished_chunk(teacher, data_dir, tmp_path, monkeypatch):
    import dora.pipeline.engines.inference as inference

    args = ["predict", "--task", "fever", "--model", str(teacher), "--data", str(data_dir / "pool.jsonl"),
            "--max-new-tokens", "6", "--chunk-rows", "8"]
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "whole.jsonl")]).exit_code == 0
    real, calls, interrupt_at = inference.predict, [], [3]

    def interrupted(*a, **k):
        calls.append(len(a[4]))
        if len(calls) in interrupt_at:  # Ctrl-C during the third chunk, once
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(inference, "predict", interrupted)
    out = tmp_path / "sub" / "preds.jsonl"
    first = runner.invoke(app, [*args, "--out", str(out)])
    assert first.exit_code == 130 and not out.exists()
    parts = out.with_name(".preds.jsonl.dora-predict")
    assert sorted(p.name for p in parts.iterdir()) == ["part-000000.jsonl", "part-000001.jsonl", "predict.json"]
    assert "predict stopped: 2 of 5 chunks of 8 rows are kept in" in " ".join(first.output.split())
    calls.clear()
    interrupt_at.clear()
    # A kept chunk damaged since (one prediction lost) is refused by name, not shifted into the wrong rows.
    kept = (parts / "part-000000.jsonl").read_text()
    (parts / "part-000000.jsonl").write_text(kept.split("\n", 1)[1])
    damaged = runner.invoke(app, [*args, "--out", str(out)])
    assert damaged.exit_code == 2 and not out.exists()
    assert "part-000000.jsonl: is not a finished chunk of 8 predictions" in " ".join(damaged.output.split())
    (parts / "part-000000.jsonl").write_text(kept)
    calls.clear()
    again = runner.invoke(app, [*args, "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert calls == [8, 8, 8] and "2 of 5 chunks already done" in again.output
    assert out.read_text() == (tmp_path / "whole.jsonl").read_text() and not parts.exists()


def test_predict_reads_only_the_source_column_and_a_failed_start_leaves_nothing(teacher, data_dir, tmp_path):
    import csv

    from dora.pipeline.stages.predict import _read_part, chunk_dir

    sources = [json.loads(x)["source"] for x in (data_dir / "pool.jsonl").read_text().splitlines()][:6]
    args = ["predict", "--task", "fever", "--model", str(teacher), "--max-new-tokens", "4"]
    # Excel's "CSV UTF-8" starts with a byte-order mark; new data's other columns (a numeric
    # target, a nested id) are the user's and pass through unread.
    with open(tmp_path / "in.csv", "w", newline="", encoding="utf-8-sig") as f:
        csv.writer(f).writerows([["source", "note"], *([x, str(i)] for i, x in enumerate(sources))])
    rows = [{"source": x, "target": i, "id": {"k": i}} for i, x in enumerate(sources)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("in.csv", "in.jsonl"):
        out = tmp_path / f"out-{name}"
        result = runner.invoke(app, [*args, "--data", str(tmp_path / name), "--out", str(out)])
        assert result.exit_code == 0, result.output
    with open(tmp_path / "out-in.csv", newline="", encoding="utf-8") as f:
        read = list(csv.DictReader(f))
    assert [r["source"] for r in read] == sources and list(read[0]) == ["source", "note", "prediction"]
    out = [json.loads(x) for x in (tmp_path / "out-in.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "prediction"} for r in out] == rows
    assert [r["prediction"] for r in out] == [r["prediction"] for r in read]
    # A run that fails before its first chunk (a typo in --model) leaves no chunk directory behind,
    # so the corrected command starts without --overwrite.
    out = tmp_path / "typo.jsonl"
    typo = [str(tmp_path / "no-such-model") if a == str(teacher) else a for a in args]
    failed = runner.invoke(app, [*typo, "--data", str(tmp_path / "in.jsonl"), "--out", str(out)])
    assert failed.exit_code == 2 and "no-such-model" in failed.output and not chunk_dir(out).exists()
    assert runner.invoke(app, [*args, "--data", str(tmp_path / "in.jsonl"), "--out", str(out)]).exit_code == 0
    # A chunk is one JSON string a line, whatever line breaks Unicode has inside a prediction.
    (tmp_path / "part.jsonl").write_text(json.dumps("a\u2028b\x85c", ensure_ascii=False) + "\n" + json.dumps("d") + "\n")
    assert _read_part(tmp_path / "part.jsonl", 2) == ["a\u2028b\x85c", "d"]


def test_sigterm_stops_predict_with_what_it_kept_and_the_rerun_continues(teacher, data_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    rows = (data_dir / "pool.jsonl").read_text().splitlines() * 50  # 2,000 rows: long enough to stop midway
    (tmp_path / "big.jsonl").write_text("".join(f'{{"source": {json.dumps(json.loads(x)["source"])}}}\n' for x in rows))
    cmd = [sys.executable, "-m", "dora", "predict", "--task", "fever", "--model", str(teacher), "--data",
           str(tmp_path / "big.jsonl"), "--out", str(tmp_path / "big.out.jsonl"), "--max-new-tokens", "4",
           "--chunk-rows", "64", "--batch-size", "8"]
    env = {**os.environ, "DORA_PROGRESS_SECONDS": "0"}  # a line per batch
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    for line in proc.stderr:
        if line.startswith("predict: row ") and int(line.split("row ")[1].split("/")[0].replace(",", "")) >= 200:
            proc.send_signal(signal.SIGTERM)  # a scheduler's pre-emption
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, rest
    message = " ".join(rest.split())
    kept = int(message.split("predict stopped: ")[1].split(" ")[0])
    assert kept >= 3 and f"{kept} of 32 chunks of 64 rows are kept" in message and "Traceback" not in rest
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and f"predict: {kept} of 32 chunks already done" in again.stderr
    assert len((tmp_path / "big.out.jsonl").read_text().splitlines()) == 2000


def test_predict_refuses_what_would_lose_data(teacher, data_dir, tmp_path):
    args = ["predict", "--task", "fever", "--model", str(teacher), "--max-new-tokens", "2"]
    pool = data_dir / "pool.jsonl"
    cases = [
        (["--data", str(pool), "--out", str(pool)], "would overwrite the input file"),
        (["--data", str(data_dir / "test.jsonl"), "--out", str(tmp_path / "x.jsonl"), "--prediction-field", "target"],
         "already has a column 'target'"),
        (["--data", str(pool), "--out", str(tmp_path / "x.txt")], "unknown file type '.txt'"),
    ]
    (tmp_path / "taken.jsonl").write_text("mine\n")
    cases.append((["--data", str(pool), "--out", str(tmp_path / "taken.jsonl")], "pass --overwrite to replace it"))
    for extra, message in cases:
        result = runner.invoke(app, [*args, *extra])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), (extra, result.output)
        assert "Traceback" not in result.output
    assert (tmp_path / "taken.jsonl").read_text() == "mine\n" and not (tmp_path / "x.jsonl").exists()
    # Another run's chunks are neither reused nor deleted without --overwrite; a foreign directory never.
    parts = tmp_path / ".y.jsonl.dora-predict"
    parts.mkdir()
    (parts / "predict.json").write_text(json.dumps({"model": "another"}))
    (parts / "part-000000.jsonl").write_text('"REFUTES"\n')
    (parts / "notes.txt").write_text("a user's file")
    result = runner.invoke(app, [*args, "--data", str(pool), "--out", str(tmp_path / "y.jsonl")])
    assert result.exit_code == 2 and "pass --overwrite to discard them" in " ".join(result.output.split())
    result = runner.invoke(app, [*args, "--data", str(pool), "--out", str(tmp_path / "y.jsonl"), "--overwrite"])
    assert result.exit_code == 0 and len((tmp_path / "y.jsonl").read_text().splitlines()) == 40
    # dora's own chunk files go; a file it did not write stays, and the run says so.
    assert [p.name for p in parts.iterdir()] == ["notes.txt"] and "did not write; they are left there" in result.output
    (parts / "notes.txt").unlink()
    parts.rmdir()
    foreign = tmp_path / ".z.jsonl.dora-predict"
    foreign.mkdir()
    (foreign / "keep").write_text("x")
    result = runner.invoke(app, [*args, "--data", str(pool), "--out", str(tmp_path / "z.jsonl"), "--overwrite"])
    assert result.exit_code == 2 and "was not written by dora predict" in result.output and (foreign / "keep").exists()


# --- point 3 and 7: the demo states its verdict, and gives the same numbers twice -------------------------------


@pytest.fixture(scope="module")
def quick_demos(tmp_path_factory):
    """Two quick demos in separate directories: one here, one in another process with another hash
    seed (what differs between two runs of `dora demo` a user starts)."""
    import os
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("demos")
    here = runner.invoke(app, ["demo", "--quick", "--workdir", str(root / "a")])
    assert here.exit_code == 0, here.output
    seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    there = subprocess.run([sys.executable, "-m", "dora", "demo", "--quick", "--workdir", str(root / "b")],
                           capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONHASHSEED": seed})
    assert there.returncode == 0, there.stderr[-3000:]
    return root, [here]


def test_two_quick_demos_give_identical_metrics(quick_demos):
    root, _ = quick_demos
    keep = ("strategy", "gold_labels", "seed", "accuracy", "examples_seen", "label_usd")
    a, b = ([{k: r[k] for k in keep} for r in json.loads((root / d / "summary.json").read_text())] for d in ("a", "b"))
    assert a == b and len(a) == 4
    for run in ("annotate-seed0", "distill-seed1"):
        assert ((root / "a" / "runs" / run / "metrics.json").read_text()
                == (root / "b" / "runs" / run / "metrics.json").read_text().replace(str(root / "b"), str(root / "a")))


def test_the_demo_prices_compute_and_ends_with_a_verdict(quick_demos):
    from dora.pipeline.stages.demo.tiny import verdict

    root, results = quick_demos
    rows = json.loads((root / "a" / "summary.json").read_text())
    assert all(r["compute_usd"] > 0 and r["total_usd"] == pytest.approx(r["label_usd"] + r["compute_usd"], abs=1e-3)
               for r in rows)
    text = " ".join(results[0].output.split())
    assert "compute at 0.1 USD per device-hour (about a 2-vCPU cloud machine" in text
    assert f"verdict: {verdict(120, rows)}" in text
    assert "the majority class, REFUTES, scores" in text


@pytest.mark.parametrize(("scores", "expected"), [
    ({"annotate": (0.60, 0.62), "distill": (0.50, 0.52)},
     "At 100 gold labels annotate scored higher: 0.610 against distill's 0.510 (means of 2 seeds), at 12.90 USD in "
     "all against 13.10; the gap (0.100) is larger than the spread between seeds (0.020 annotate, 0.020 distill)."),
    ({"annotate": (0.50, 0.60), "distill": (0.56, 0.58)},
     "At 100 gold labels distill scored higher: 0.570 against annotate's 0.550 (means of 2 seeds), at 13.10 USD in "
     "all against 12.90; the gap (0.020) is not larger than the spread between seeds (0.100 annotate, 0.020 distill): "
     "too close to call on this data."),
    ({"annotate": (0.5,), "distill": (0.6,)},
     "At 100 gold labels distill scored higher: 0.600 against annotate's 0.500, at 13.10 USD in all against 12.90; "
     "with one seed per strategy the spread between seeds is not measured, so the gap may be noise."),
])
def test_the_verdict_compares_the_gap_with_the_spread_between_seeds(scores, expected):
    from dora.pipeline.stages.demo.tiny import verdict

    usd = {"annotate": 12.9, "distill": 13.1}
    rows = [{"strategy": s, "accuracy": a, "total_usd": usd[s]} for s, values in scores.items() for a in values]
    assert verdict(100, rows) == expected


def test_the_demo_plot_marks_the_majority_class_and_names_each_strategy_once(tmp_path, monkeypatch):
    import matplotlib.axes

    from dora.pipeline.stages import report as report_module

    labels = []
    real = matplotlib.axes.Axes.legend

    def legend(ax, *a, **k):
        labels.append(ax.get_legend_handles_labels()[1])
        return real(ax, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "legend", legend)
    rows = [{"strategy": s, "gold_labels": 10, "score": v, "total_usd": 1.0 + i, "label_usd": 1.0, "task": "fever",
             "metric": "accuracy"} for i, (s, v) in enumerate([("annotate", 0.5), ("annotate", 0.6), ("distill", 0.7),
                                                               ("distill", 0.8)])]
    report_module._plot(rows, tmp_path / "r.png", ("majority class (REFUTES)", 0.52))
    assert labels == [["majority class (REFUTES): 0.520", "annotate (mean of seeds; bar: their range)",
                       "distill (mean of seeds; bar: their range)"]]


@pytest.mark.parametrize(("usd", "least"), [((77.401, 77.403), 7.7), ((10.0, 90.0), None)])
def test_the_dollar_axis_is_not_zoomed_into_fractions_of_a_cent(usd, least, tmp_path, monkeypatch):
    import matplotlib.figure

    from dora.pipeline.stages import report as report_module

    limits = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: limits.append(fig.axes[0].get_xlim()))
    rows = [{"strategy": s, "gold_labels": 600, "score": v, "total_usd": x, "label_usd": 77.4, "task": "fever",
             "metric": "accuracy"} for s, v, x in [("annotate", 0.60, usd[0]), ("distill", 0.53, usd[1])]]
    report_module._plot(rows, tmp_path / "r.png")
    (low, high), = limits
    assert low < usd[0] and usd[1] < high
    if least is not None:  # a fifth of a cent apart: drawn about where they are, on an axis of dollars
        assert high - low >= least and abs((low + high) / 2 - sum(usd) / 2) < 1e-9
    else:  # costs that differ a lot: matplotlib's own limits, a little past the data
        assert high - low < 1.2 * (usd[1] - usd[0])


def test_the_demo_tokenizer_is_the_same_in_every_process(tmp_path):
    import subprocess
    import sys

    # Rust's hash seeds differ per process: the trained Unigram model must not depend on them.
    code = ("import hashlib, json; from dora.pipeline.stages.demo.tiny import write_splits; from pathlib import Path; "
            "from dora.pipeline.models.scratch import train_tokenizer; "
            f"p = write_splits(Path({str(tmp_path)!r}), gold=600, pool=1800, dev=300, test=300); "
            "texts = [t for n in ('gold', 'pool') for l in p[n].read_text().splitlines() "
            "for t in ('fever: ' + json.loads(l)['source'], json.loads(l).get('target', '')) if t]; "
            "print(hashlib.sha256(train_tokenizer(texts, vocab_size=1000).backend_tokenizer.to_str().encode()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
               for _ in range(3)}
    assert len(digests) == 1


# --- point 4: the teacher's own score on dev ---------------------------------------------------------------------


def test_teacher_label_scores_the_teacher_on_dev_and_records_it(cache_dir, data_dir, tmp_path):
    from dora.pipeline.tasks.catalog import get_task
    from dora.pipeline.tasks.metrics import TaskScorer

    teacher = cache_dir.with_name(cache_dir.name + ".teacher")
    result = runner.invoke(app, ["teacher-label", "--task", "fever", "--teacher", str(teacher), "--no-finetune",
                                 "--dev", str(data_dir / "dev.jsonl"), "--pool", str(data_dir / "pool.jsonl"),
                                 "--out", str(tmp_path / "c"), "--top-k", "4", "--max-new-tokens", "6"])
    assert result.exit_code == 0, result.output
    recorded = LabelCache.open(tmp_path / "c").manifest.stats["teacher_dev"]
    dev = [json.loads(x) for x in (data_dir / "dev.jsonl").read_text().splitlines()]
    preds = _greedy(teacher, [r["source"] for r in dev], 6)
    expected = TaskScorer(get_task("fever"), [r["target"] for r in dev])(preds)
    assert recorded["scores"] == expected and recorded["rows"] == 16 and recorded["primary"] == "accuracy"
    assert f"teacher: dev accuracy (strict) = {expected['strict']['accuracy']:.4f} on 16 rows" in result.output
    shown = " ".join(runner.invoke(app, ["cache", "info", str(tmp_path / "c")]).output.split())
    assert f"teacher on dev │ accuracy {expected['strict']['accuracy']:.4f} (strict) on 16 rows" in shown
    assert "not scored: teacher-label --dev" in runner.invoke(app, ["cache", "info", str(cache_dir)]).output


# --- point 5: Ctrl-C and SIGTERM save a checkpoint ---------------------------------------------------------------


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_an_interrupted_training_run_saves_a_checkpoint_and_resumes_from_it(signal_name, t5_dir, data_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "s"
    # --save-every far past the run: without the interrupt's own checkpoint nothing would be kept.
    cmd = [sys.executable, "-m", "dora", "train-student", "--task", "fever", "--student", str(t5_dir), "--train",
           str(data_dir / "train.jsonl"), "--out", str(out), "--max-steps", "400", "--batch-size", "4",
           "--save-every", "100000", "--max-new-tokens", "2"]
    env = {**os.environ, "DORA_PROGRESS_SECONDS": "0"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    lines = []
    for line in proc.stderr:  # a plain progress line per step: wait for step 20
        lines.append(line)
        if line.startswith("train student: step ") and int(line.split("step ")[1].split("/")[0]) >= 20:
            proc.send_signal(getattr(signal, signal_name))
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, "".join(lines) + rest
    message = next(x for x in rest.splitlines() if x.startswith("interrupted: "))
    step = int(message.split(" at step ")[1].split(" ")[0])
    assert step >= 20 and f"stopped by {signal_name} at step {step} of 400" in message
    assert f"saved a checkpoint at that step in {out / 'checkpoints' / 'last'}" in message
    assert "Traceback" not in rest
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"train student: resuming from step {step}" in again.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["steps"] == 400 and record["cost"]["invocations"] == 2
    assert [e["status"] for e in record["cost"]["entries"]] == ["interrupted", "done"]


def test_a_signal_during_the_last_step_still_saves_its_checkpoint(t5_dir, data_dir, tmp_path, monkeypatch):
    import os
    import signal

    from dora.pipeline.train import loop

    real = loop._Run._optimizer_step

    def step_then_signal(self):
        real(self)
        if self.state["step"] == 3:  # the last step: SIGTERM arrives while it runs
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop._Run, "_optimizer_step", step_then_signal)
    args = ["train-student", "--task", "fever", "--student", str(t5_dir), "--train", str(data_dir / "train.jsonl"),
            "--out", str(tmp_path / "s"), "--max-steps", "3", "--batch-size", "4", "--max-new-tokens", "2"]
    first = runner.invoke(app, args)
    assert first.exit_code == 130 and "stopped by SIGTERM at step 3 of 3" in " ".join(first.output.split())
    assert not (tmp_path / "s" / "run.json").exists()
    monkeypatch.setattr(loop._Run, "_optimizer_step", real)
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "resuming from step 3" in again.output
    assert json.loads((tmp_path / "s" / "run.json").read_text())["steps"] == 3


# --- point 6: no network, no minute of retries -------------------------------------------------------------------


def test_a_hub_id_fails_at_once_when_the_hub_cannot_be_reached(tmp_path, monkeypatch, data_dir):
    import huggingface_hub.constants as hub

    from dora.pipeline.models import loading

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # (not delenv: the probe sets it, and teardown must undo that)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for name in loading._PROXIES:  # a direct connect is what is tested first
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: the connect is refused
    monkeypatch.setattr(loading, "_HUB_PROBED", [])
    start = time.perf_counter()
    result = runner.invoke(app, ["evaluate", "--task", "fever", "--model", "some-org/some-model",
                                 "--data", str(data_dir / "test.jsonl")])
    assert time.perf_counter() - start < 5.0
    assert result.exit_code == 2 and "cannot load a tokenizer from 'some-org/some-model'" in result.output
    assert "the hub did not answer within 3 s, so dora looked in the local Hugging Face cache only" in \
        " ".join(result.output.split())
    assert hub.HF_HUB_OFFLINE and loading._HUB_PROBED == [False]
    # Behind a proxy the hub is reached through it: no direct probe, no switch to offline mode.
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(loading, "_HUB_PROBED", [])
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert loading.offline_unless_reachable() and loading._HUB_PROBED == [] and not hub.HF_HUB_OFFLINE


# --- point 8: help that shows values, and options given once -----------------------------------------------------


@pytest.mark.parametrize("command", [["report"], ["cache", "info"], ["forecast"], ["train-student"], []])
def test_help_shows_flags_as_flags_and_no_python_types(command):
    result = runner.invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    for python in ("<bool>", "list[", "{runs}", "{cache}", "<list", "Path]"):
        assert python not in result.output, (command, python)
    if command == ["report"]:
        assert "Usage: dora report [OPTIONS] PATH..." in result.output
        json_line = next(x for x in result.output.splitlines() if "--json" in x)
        assert "Print the rows as JSON" in json_line and "<" not in json_line


def test_a_scalar_option_given_twice_is_refused(t5_dir, data_dir, tmp_path):
    base = ["train-student", "--task", "fever", "--student", str(t5_dir), "--train", str(data_dir / "train.jsonl"),
            "--out", str(tmp_path / "s"), "--max-steps", "1"]
    for repeat, said in [(["--max-steps", "5"], "given twice (--max-steps, then --max-steps)"),
                         (["--learning-rate=1e-3", "--learning-rate", "2e-3"], "given twice (--learning-rate=1e-3, then --learning-rate)"),
                         (["--no-verify", "--verify"], "given twice (--no-verify, then --verify)")]:
        result = runner.invoke(app, [*base, *repeat])
        assert result.exit_code == 2 and said in " ".join(result.output.replace("│", " ").split()), result.output
    assert not (tmp_path / "s").exists()
    # A list option repeats as documented; a value that looks like an option is a value.
    ok = runner.invoke(app, ["teacher-label", "--task", "fever", "--teacher", str(t5_dir), "--no-finetune",
                             "--pool", str(data_dir / "pool.jsonl"), "--out", str(tmp_path / "c"), "--prefix", "--top-k",
                             "--engine-arg", "a=1", "--engine-arg", "b=2", "--top-k", "4"])
    assert ok.exit_code == 0, ok.output
    manifest = LabelCache.open(tmp_path / "c").manifest
    assert manifest.task["source_prefix"] == "--top-k" and manifest.generation.k == 4
