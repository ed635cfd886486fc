"""Hostile inputs to report, budget, prices, evaluate, demo and the CLI's option parsing (issue 13).

Every case must end in one line on stderr (``error: ...``, exit 2) or click's usage box, never a
traceback or a silent success, and must change nothing outside its declared outputs. Nothing
here trains: run directories are written by hand in the shape ``dora train-student`` writes them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from adversarial import Case, run_case

DEEP = "[" * 200_000 + "]" * 200_000  # json and yaml recurse once per level: RecursionError
HUGE_INT = "7" * 5000  # past Python's 4,300-digit limit on int(str): ValueError


def cost(hours: float = 0.01, **extra: Any) -> dict[str, Any]:
    entry = {"run_id": "r1", "device": "cpu (x86_64, 2 threads)", "device_count": 1, "wall_seconds": 36.0,
             "device_hours": hours, "examples": 40, "tokens": 400, "steps": 5}
    return {"stage": "x", "device": entry["device"], "device_count": 1, "wall_seconds": 36.0, "device_hours": hours,
            "examples": 40, "tokens": 400, "steps": 5, "invocations": 1, "entries": [entry], **extra}


def run_record(**changes: Any) -> dict[str, Any]:
    record = {"stage": "train-student", "strategy": "distill", "cache": "/caches/fever", "gold_examples": 0,
              "cost": cost(), "upstream_costs": {"teacher_finetune": cost(0.02, gold_labels=48),
                                                 "labeling": cost(0.005)}}
    return {**record, **changes}


def metrics_record(**changes: Any) -> dict[str, Any]:
    scores = {"strict": {"accuracy": 0.5}, "paper": {"accuracy": 0.5}}
    return {"task": "fever", "metric": "accuracy", "primary": "accuracy", "test": scores, "dev": scores, **changes}


def write_run(root: Path, run: Any = None, metrics: Any = None, *, run_text: str | bytes | None = None,
              metrics_text: str | None = None, curves: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    text = run_text if run_text is not None else json.dumps(run_record() if run is None else run)
    (root / "run.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    (root / "metrics.json").write_text(metrics_text if metrics_text is not None
                                       else json.dumps(metrics_record() if metrics is None else metrics))
    if curves is not None:
        (root / "curves.csv").write_text(curves)
    return root


def run_dir(**kwargs: Any):
    """A setup writing one run directory ``{tmp}/run`` (``kwargs`` as for ``write_run``)."""
    def setup(tmp: Path, **_: Any) -> dict[str, Any]:
        return {"run": write_run(tmp / "run", **kwargs)}
    return setup


def file(name: str, text: str | bytes):
    """A setup writing ``{tmp}/name``, known to args as ``{f}``."""
    def setup(tmp: Path, **_: Any) -> dict[str, Any]:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return {"f": path}
    return setup


REPORT = ["report", "{run}", "--out", "{tmp}/out", "--gpu-hour-usd", "2"]
BUDGET = ["budget", "--task", "fever", "--budget", "100"]
RATES = ["--pool-rows", "1000", "--device", "H100", "--finetune-hours", "1", "--label-rows-per-hour", "1000",
         "--student-rows-per-hour", "1000"]
PRICED = [*BUDGET, *RATES, "--prices", "{f}"]
STUDENT = ["train-student", "--task", "fever", "--train", "{data}/train.jsonl", "--out", "{tmp}/student"]
TEACHER = ["teacher-label", "--task", "fever", "--teacher", "{t5}", "--train", "{data}/train.jsonl", "--pool",
           "{data}/pool.jsonl", "--out", "{tmp}/cache"]
PREDICTIONS = '{"prediction": "SUPPORTS", "target": "SUPPORTS"}\n{"prediction": "REFUTES", "target": "SUPPORTS"}\n'


def copied_data(tmp: Path, data: Path, **_: Any) -> dict[str, Any]:
    """The labeled test file copied under tmp, so the snapshot sees any write to it."""
    copy = tmp / "test.jsonl"
    copy.write_bytes((data / "test.jsonl").read_bytes())
    return {"copy": copy}


def linked_input(kind: str):
    def setup(tmp: Path, **_: Any) -> dict[str, Any]:
        preds = tmp / "preds.jsonl"
        preds.write_text(PREDICTIONS)
        alias = tmp / "alias.json"
        (os.symlink if kind == "symlink" else os.link)(preds, alias)
        return {"preds": preds, "alias": alias}
    return setup


def predictions_and(name: str, text: str):
    def setup(tmp: Path, **_: Any) -> dict[str, Any]:
        (tmp / "preds.jsonl").write_text(PREDICTIONS)
        (tmp / name).write_text(text)
        return {"preds": tmp / "preds.jsonl", "target": tmp / name}
    return setup


def earlier_report(tmp: Path, **_: Any) -> dict[str, Any]:
    """A run and a report of it made by dora: a rerun may replace that report."""
    from typer.testing import CliRunner

    from dora.cli import app

    run = write_run(tmp / "run")
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp / "out"), "--json"])
    assert result.exit_code == 0, result.output
    return {"run": run}


def user_report_csv(tmp: Path, **_: Any) -> dict[str, Any]:
    (tmp / "out").mkdir()
    (tmp / "out" / "report.csv").write_text("my,own,spreadsheet\n1,2,3\n")
    return {"run": write_run(tmp / "run")}


def busy_dir(tmp: Path, **_: Any) -> dict[str, Any]:
    (tmp / "home").mkdir()
    (tmp / "home" / "thesis.tex").write_text("precious")
    return {}


CASES = [
    # --- A: report validates every record it reads, naming the file and the field -----------------------
    Case("report-run-json-is-a-list", REPORT, 2, "run.json: expected a run record", setup=run_dir(run=[1, 2])),
    Case("report-run-json-lacks-cost", REPORT, 2, "run.json: no field 'cost'",
         setup=run_dir(run={k: v for k, v in run_record().items() if k != "cost"})),
    Case("report-cost-is-a-string", REPORT, 2, "run.json: field 'cost' must be a cost record",
         setup=run_dir(run=run_record(cost="lots"))),
    Case("report-device-hours-is-text", REPORT, 2, "field 'cost.device_hours' must be a number",
         setup=run_dir(run=run_record(cost=cost(hours="1h")))),  # type: ignore[arg-type]
    Case("report-device-hours-negative", REPORT, 2, "field 'upstream_costs.labeling.device_hours'",
         setup=run_dir(run=run_record(upstream_costs={"labeling": cost(-3.0)}))),
    Case("report-ledger-entry-not-an-object", REPORT, 2, "'upstream_costs.teacher_finetune.entries[0]' must be an object",
         setup=run_dir(run=run_record(upstream_costs={"teacher_finetune": cost(entries=["x"])}))),
    Case("report-gold-examples-is-a-float", REPORT, 2, "field 'gold_examples' must be a whole number",
         setup=run_dir(run=run_record(gold_examples=1.5))),
    Case("report-strategy-is-a-list", REPORT, 2, "field 'strategy' must be a string",
         setup=run_dir(run=run_record(strategy=["distill"]))),
    Case("report-broken-metrics-json-names-metrics-json", REPORT, 2, "metrics.json, line 1: not valid JSON",
         setup=run_dir(metrics_text='{"task": "fever",')),
    Case("report-score-is-text", REPORT, 2, "metrics.json: field 'test.strict.accuracy' must be a number",
         setup=run_dir(metrics=metrics_record(test={"strict": {"accuracy": "high"}}))),
    Case("report-run-json-200000-levels", REPORT, 2, "run.json: not valid JSON for dora: nested too deeply",
         setup=run_dir(run_text=DEEP)),
    Case("report-metrics-json-5000-digit-integer", REPORT, 2, "metrics.json: not valid JSON for dora (Exceeds the limit",
         setup=run_dir(metrics_text='{"task": "fever", "gold": ' + HUGE_INT + "}")),
    Case("report-run-json-not-utf8", REPORT, 2, "run.json: not UTF-8", setup=run_dir(run_text=b'{"strategy": "caf\xe9"}')),
    Case("report-curves-csv-garbage", REPORT, 2, "curves.csv, line 3: a step, loss or score that is not a number",
         setup=run_dir(curves="step,loss\n1,0.5\nlots,0.4\n")),
    Case("report-run-not-a-directory", ["report", "{f}", "--out", "{tmp}/out"], 2, "not a directory",
         setup=file("run.json", json.dumps(run_record()))),
    # Text from the records is shown, never interpreted: rich markup and matplotlib formulas.
    Case("report-markup-and-formula-in-records-are-text", REPORT, 0, "",
         setup=run_dir(run=run_record(strategy="[/]$\\frac{"), metrics=metrics_record(
             primary="acc$uracy", test={"strict": {"acc$uracy": 0.5}}), curves="step,loss\n1,0.5\n"),
         outputs=("out",)),
    # --- A: --prices files: every price finite and non-negative, every key known -------------------------
    Case("prices-string-price", PRICED, 2, "p.json: gpu_hour_usd['cpu'] must be a non-negative number",
         setup=file("p.json", '{"gpu_hour_usd": {"cpu": "cheap"}}')),
    Case("prices-string-annotation-price", PRICED, 2, "p.json: annotation_usd must be a non-negative number",
         setup=file("p.json", '{"annotation_usd": "cheap"}')),
    Case("prices-negative-price", PRICED, 2, "gpu_hour_usd['h100'] must be a non-negative number",
         setup=file("p.json", '{"gpu_hour_usd": {"h100": -2}}')),
    Case("prices-nan-price", PRICED, 2, "p.json: gpu_hour_usd['cpu'] must be a non-negative number of USD per device-hour",
         setup=file("p.json", '{"gpu_hour_usd": {"cpu": NaN}}')),
    Case("prices-yaml-infinite-annotation", PRICED, 2, "p.yaml: annotation_usd must be a non-negative number",
         setup=file("p.yaml", "annotation_usd: .inf\n")),
    Case("prices-boolean-price", PRICED, 2, "gpu_hour_usd['cpu'] must be a non-negative number",
         setup=file("p.json", '{"gpu_hour_usd": {"cpu": true}}')),
    Case("prices-misspelt-key", PRICED, 2, "p.json: unknown key 'gpu_hours_usd'",
         setup=file("p.json", '{"gpu_hours_usd": {"H100": 2}}')),
    Case("prices-empty-device-kind-prices-everything", PRICED, 2, "empty device kind",
         setup=file("p.json", '{"gpu_hour_usd": {" ": 2}}')),
    Case("prices-200000-levels", PRICED, 2, "p.json: not valid JSON for dora: nested too deeply",
         setup=file("p.json", DEEP)),
    Case("prices-yaml-200000-levels", PRICED, 2, "p.yaml, line 1: not valid YAML", setup=file("p.yaml", DEEP)),
    Case("prices-5000-digit-integer", PRICED, 2, "p.json: not valid JSON for dora (Exceeds the limit",
         setup=file("p.json", '{"annotation_usd": ' + HUGE_INT + "}")),
    Case("prices-yaml-syntax-error-is-one-line", PRICED, 2, "p.yaml, line 3: not valid YAML (did not find expected ',' or ']' at column 1)",
         setup=file("p.yaml", "gpu_hour_usd:\n  h100: [2.5\n")),
    Case("prices-json-syntax-error-line-and-column", PRICED, 2, "p.json, line 2: not valid JSON (Expecting value at column 11)",
         setup=file("p.json", '{"gpu_hour_usd":\n {"h100": }}\n')),
    Case("prices-yaml-alias-bomb", PRICED, 2, "p.yaml: not valid YAML for dora: more than",
         setup=file("p.yaml", "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
             f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
             for p, c in zip("abcdefg", "bcdefgh")) + "gpu_hour_usd: {cpu: 1}\n")),
    Case("prices-yaml-date-value", PRICED, 2, "p.yaml: not valid YAML for dora: a date value",
         setup=file("p.yaml", "annotation_usd: 2024-01-01\n")),
    Case("prices-is-a-directory", [*BUDGET, *RATES, "--prices", "{tmp}"], 2, "is a directory, not a file"),
    Case("prices-report-bad-file-before-any-output", [*REPORT, "--prices", "{f}"], 2, "p.json: expected",
         setup=lambda tmp, **_: {"run": write_run(tmp / "run"), **file("p.json", "[]")(tmp)}),
    Case("engine-config-200000-levels", [*TEACHER, "--engine-config", "{f}"], 2, "e.json: not valid JSON for dora",
         setup=file("e.json", DEEP)),
    # --- A/B: every float option finite and in range ---------------------------------------------------
    Case("budget-nan", [*BUDGET[:-1], "nan", *RATES, "--gpu-hour-usd", "1"], 2, "--budget must be a finite number"),
    Case("budget-inf", [*BUDGET[:-1], "inf", *RATES, "--gpu-hour-usd", "1"], 2, "--budget must be a finite number"),
    Case("budget-too-large", [*BUDGET[:-1], "1e300", *RATES, "--gpu-hour-usd", "1"], 2, "--budget must be a finite number"),
    Case("budget-gpu-hour-nan", [*BUDGET, *RATES, "--gpu-hour-usd", "nan"], 2, "--gpu-hour-usd must be a finite number"),
    Case("budget-annotation-nan", [*BUDGET, *RATES, "--gpu-hour-usd", "1", "--annotation-usd", "nan"], 2,
         "--annotation-usd must be a finite number"),
    Case("budget-annotation-price-near-zero", [*BUDGET, *RATES, "--gpu-hour-usd", "1", "--annotation-usd", "1e-300"],
         2, "check --annotation-usd"),
    Case("budget-rate-infinite", [*BUDGET, *RATES[:-1], "inf", "--gpu-hour-usd", "1"], 2,
         "--student-rows-per-hour must be a finite number"),
    Case("budget-hours-nan", [*BUDGET, *RATES[:5], "nan", *RATES[6:], "--gpu-hour-usd", "1"], 2,
         "--finetune-hours must be a finite number"),
    Case("report-gpu-hour-inf", [*REPORT[:-1], "inf"], 2, "--gpu-hour-usd must be a finite number", setup=run_dir()),
    Case("student-epochs-nan", [*STUDENT, "--epochs", "nan"], 2, "--epochs must be a finite number"),
    Case("student-weight-decay-nan", [*STUDENT, "--weight-decay", "nan"], 2, "--weight-decay must be a finite number"),
    Case("student-learning-rate-inf", [*STUDENT, "--learning-rate", "inf"], 2, "--learning-rate must be a finite number"),
    Case("student-warmup-nan", [*STUDENT, "--warmup-ratio", "nan"], 2, "--warmup-ratio must be a finite number"),
    Case("student-temperature-inf", [*STUDENT, "--temperature", "inf"], 2, "--temperature must be a finite number"),
    Case("student-seed-negative", [*STUDENT, "--seed", "-1"], 2, "--seed must be an integer from 0"),
    Case("teacher-epochs-nan", [*TEACHER, "--epochs", "nan"], 2, "--epochs must be a finite number"),
    Case("teacher-temperature-nan", [*TEACHER, "--temperature", "nan"], 2, "--temperature must be a finite number"),
    Case("teacher-kd-temperatures-nan", [*TEACHER, "--kd-temperatures", "1,nan"], 2, "every number must be finite"),
    Case("cache-filter-nan-threshold", ["cache", "filter", "{tmp}/nocache", "{tmp}/kept", "--min-seq-logprob", "nan"],
         2, "--min-seq-logprob must be a finite number"),
    # --- B: integer options in range, at parse time ------------------------------------------------------
    Case("pull-negative-rows", ["cache", "pull", "{tmp}/src", "{tmp}/dest", "--rows", "-1"], 2, "--rows", usage=True),
    Case("pull-zero-rows", ["cache", "pull", "{tmp}/src", "{tmp}/dest", "--rows", "0"], 2, "--rows", usage=True),
    Case("pull-negative-shard", ["cache", "pull", "{tmp}/src", "{tmp}/dest", "--shards", "0,-1"], 2,
         "give distinct shard numbers from 0"),
    Case("merge-negative-shard-size", ["cache", "merge", "{tmp}/a", "{tmp}/b", "--out", "{tmp}/m", "--shard-size", "-5"],
         2, "--shard-size", usage=True),
    Case("budget-negative-pool-rows", [*BUDGET, *RATES[2:], "--pool-rows", "-5", "--gpu-hour-usd", "1"], 2,
         "--pool-rows", usage=True),
    Case("budget-negative-labels-owned", [*BUDGET, *RATES, "--labels-owned", "-1", "--gpu-hour-usd", "1"], 2,
         "--labels-owned", usage=True),
    Case("filter-negative-length", ["cache", "filter", "{tmp}/c", "{tmp}/k", "--max-length", "-1"], 2, "--max-length",
         usage=True),
    # --- B: CSV that a lenient reader would merge or shift silently --------------------------------------
    Case("csv-unterminated-quote", ["evaluate", "--task", "fever", "--predictions", "{f}"], 2,
         "p.csv, line 2: a quoted field opened on this line is never closed",
         setup=file("p.csv", 'prediction,target\n"SUPPORTS,SUPPORTS\nREFUTES,REFUTES\n')),
    Case("csv-quote-swallows-the-next-row", ["evaluate", "--task", "fever", "--predictions", "{f}"], 2,
         "p.csv, line 2: field 'prediction' runs over several lines",
         setup=file("p.csv", 'prediction,target\n"SUPPORTS,SUPPORTS\nREFUTES",REFUTES\n')),
    Case("csv-quote-closes-mid-field", ["evaluate", "--task", "fever", "--predictions", "{f}"], 2,
         "p.csv, line 3: a quoted field closes mid-field",
         setup=file("p.csv", 'prediction,target\nREFUTES,REFUTES\n"SUPPORTS,SUPPORTS\n"REFUTES",REFUTES\n')),
    Case("csv-unquoted-comma-shifts-fields", ["evaluate", "--task", "fever", "--predictions", "{f}"], 2,
         "p.csv, line 2: 3 fields, but the header has 2",
         setup=file("p.csv", "prediction,target\nSUPPORTS, mostly,SUPPORTS\n")),
    Case("csv-repeated-column", ["evaluate", "--task", "fever", "--predictions", "{f}"], 2,
         "column 'target' appears more than once",
         setup=file("p.csv", "prediction,target,target\nSUPPORTS,SUPPORTS,REFUTES\n")),
    Case("jsonl-200000-levels", ["evaluate", "--task", "fever", "--predictions", "{f}"], 2,
         "p.jsonl, line 1: invalid JSON for dora: nested too deeply", setup=file("p.jsonl", DEEP + "\n")),
    Case("jsonl-5000-digit-integer", ["evaluate", "--task", "fever", "--predictions", "{f}"], 2,
         "p.jsonl, line 2: invalid JSON for dora (Exceeds the limit",
         setup=file("p.jsonl", PREDICTIONS.splitlines()[0] + '\n{"prediction": ' + HUGE_INT + "}\n")),
    # --- C: dora never writes over an input or a file it did not write ----------------------------------
    Case("evaluate-out-is-the-data", ["evaluate", "--task", "fever", "--model", "{t5}", "--data", "{copy}",
                                      "--out", "{copy}"], 2, "would overwrite the input file", setup=copied_data),
    Case("evaluate-out-is-the-model-dir", ["evaluate", "--task", "fever", "--model", "{t5}", "--data", "{copy}",
                                           "--out", "{t5}"], 2, "would overwrite the input file", setup=copied_data),
    Case("evaluate-out-is-a-model-file", ["evaluate", "--task", "fever", "--model", "{t5}", "--data", "{copy}",
                                          "--out", "{t5}/config.json"], 2, "is not a file dora wrote", setup=copied_data),
    Case("evaluate-out-symlinks-to-the-input", ["evaluate", "--task", "fever", "--predictions", "{preds}", "--out",
                                                "{alias}"], 2, "would overwrite the input file",
         setup=linked_input("symlink")),
    Case("evaluate-out-hard-links-to-the-input", ["evaluate", "--task", "fever", "--predictions", "{preds}", "--out",
                                                  "{alias}", "--overwrite"], 2, "would overwrite the input file",
         setup=linked_input("hardlink")),
    Case("evaluate-out-is-a-users-file", ["evaluate", "--task", "fever", "--predictions", "{preds}", "--out", "{target}"],
         2, "exists and is not a file dora wrote", setup=predictions_and("notes.json", '{"mine": 1}')),
    Case("evaluate-out-replaces-its-own-scores", ["evaluate", "--task", "fever", "--predictions", "{preds}", "--out",
                                                  "{target}"], 0, '"accuracy": 0.5',
         setup=predictions_and("scores.json", json.dumps({"task": "fever", "metric": "accuracy", "scores": {},
                                                          "scores_by_mode": {}})), outputs=("scores.json",)),
    Case("evaluate-out-users-file-with-overwrite", ["evaluate", "--task", "fever", "--predictions", "{preds}", "--out",
                                                    "{target}", "--overwrite"], 0, "",
         setup=predictions_and("notes.json", "mine"), outputs=("notes.json",)),
    Case("evaluate-out-parent-is-a-file", ["evaluate", "--task", "fever", "--predictions", "{preds}", "--out",
                                           "{target}/scores.json"], 2, "is a file, not a directory",
         setup=predictions_and("notes.txt", "mine")),
    Case("report-out-holds-a-users-csv", REPORT, 2, "out/report.csv exists and is not a file dora wrote",
         setup=user_report_csv),
    Case("report-out-replaces-its-own-report", REPORT, 0, "", setup=earlier_report, outputs=("out",)),
    Case("report-out-is-a-file", ["report", "{run}", "--out", "{f}"], 2, "is a file, not a directory",
         setup=lambda tmp, **_: {"run": write_run(tmp / "run"), **file("out.txt", "mine")(tmp)}),
    Case("demo-workdir-holds-users-files", ["demo", "--quick", "--workdir", "{tmp}/home"], 2,
         "holds files the demo did not write", setup=busy_dir),
    Case("demo-workdir-is-a-file", ["demo", "--quick", "--workdir", "{f}"], 2, "is not a directory",
         setup=file("home", "mine")),
    # --- D: the environment's errors explained right -----------------------------------------------------
    Case("disk-full-says-free-space", ["evaluate", "--task", "fever", "--predictions", "{preds}", "--out", "/dev/full",
                                       "--overwrite"], 2, "no space left on device; free disk space",
         setup=predictions_and("unused", "")),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_case(case: Case, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if case.id.startswith("disk-full") and not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    needs = {name for name in ("t5", "data") if any(f"{{{name}" in a for a in case.args)}
    if case.setup is copied_data:
        needs.add("data")
    fixtures = {"t5": "t5_dir", "data": "data_dir"}
    run_case(case, tmp_path, **{name: request.getfixturevalue(fixtures[name]) for name in needs})


def test_there_are_enough_cases_and_ids_are_unique() -> None:
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


def test_a_valid_hand_written_run_reports_and_plans(tmp_path: Path) -> None:
    """The control: the records above fail only by what each case changes."""
    from typer.testing import CliRunner

    from dora.cli import app

    run = write_run(tmp_path / "run", curves="step,loss,eval_strict_accuracy\n1,0.5,0.4\n2,nan,\n")
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "out"), "--gpu-hour-usd", "2",
                                      "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["score"] == 0.5 and row["gold_labels"] == 48 and row["total_usd"] > row["label_usd"]
    assert (tmp_path / "out" / "curves.png").is_file()
    plans = CliRunner().invoke(app, [*BUDGET, "--from", str(run), "--gpu-hour-usd", "2", "--json"])
    assert plans.exit_code == 0, plans.output
    assert {p["option"] for p in json.loads(plans.stdout)} >= {"annotate", "distill"}
