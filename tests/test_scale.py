"""Scale and survive: streaming pools, one writer per cache, kill -9 at random moments, Ray,
and several processes (gloo) for the student and the FSDP teacher."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CACHE_STEPS, fever_rows, write_jsonl
from typer.testing import CliRunner

from dora.cache import LabelCache
from dora.cache.writer import cache_lock
from dora.cli import app
from dora.errors import CacheError, InputError
from dora.lock import LOCK_FILE
from dora.pipeline.data.inputs import Fields, fingerprint, read_examples
from dora.pipeline.data.pool import Pool
from dora.pipeline.train.batches import Blocks

runner = CliRunner()
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def _rows(cache: Path) -> dict[str, dict]:
    """Every cached row by id (asserting there are no duplicates)."""
    table = LabelCache.open(cache).read()
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "duplicate rows in the cache"
    return {r["id"]: r for r in table.to_pylist()}


def _same_rows(got: Path, want: Path, *, logprob_tol: float = 0.0) -> None:
    a, b = _rows(got), _rows(want)
    assert a.keys() == b.keys()
    for key, row in b.items():
        other = a[key]
        for col in ("row", "source", "target", "target_ids", "topk_ids"):
            assert other[col] == row[col], (key, col)
        np.testing.assert_allclose(np.array(other["topk_logprobs"], float), np.array(row["topk_logprobs"], float),
                                   atol=logprob_tol)


# --- the pool streams --------------------------------------------------------------------------

def test_pool_scan_matches_read_examples_and_streams_shards(data_dir, tmp_path):
    pool = Pool.scan(data_dir / "pool.jsonl")
    examples = read_examples(data_dir / "pool.jsonl", require_target=False)
    assert (pool.rows, pool.fingerprint) == (len(examples), fingerprint(examples))
    got = list(pool.shards(16, wanted=[2, 0]))
    assert [i for i, _ in got] == [0, 2]
    assert [ex.row for ex in got[0][1]] == list(range(16)) and [ex.row for ex in got[1][1]] == list(range(32, 40))
    rows = [{"id": str(i % 7 if i == 9 else i), "source": f"s{i}"} for i in range(12)]
    with pytest.raises(InputError, match=r"dup\.jsonl, line 10: duplicate id '2' \(first at row 3\)"):
        Pool.scan(write_jsonl(tmp_path / "dup.jsonl", rows), fields=Fields())


def test_blocks_visit_every_row_once_per_epoch_and_hold_a_window():
    loads: list[int] = []

    def load(b: int) -> list[dict]:
        loads.append(b)
        return [{"b": b, "r": r} for r in range(10)]

    data = Blocks([10] * 20, load, window=2)
    order = data.order(seed=1, epoch=0)
    assert sorted(order.tolist()) == list(range(200))
    assert order.tolist() != data.order(seed=1, epoch=1).tolist()
    assert order.tolist() == data.order(seed=1, epoch=0).tolist()  # a resumed run sees the same order
    got = [f for i in range(0, 200, 8) for f in data.take(order[i : i + 8])]
    assert sorted((f["b"], f["r"]) for f in got) == [(b, r) for b in range(20) for r in range(10)]
    assert len(loads) == 20 and len(data._held) <= 3  # each block featurised once per epoch; a window held


# --- one writer per cache ---------------------------------------------------------------------

def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_broken(tmp_path):
    root = tmp_path / "cache"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from dora.cache.writer import cache_lock; cache_lock(sys.argv[1]).acquire(); "
        "print('locked', flush=True); time.sleep(60)"), str(root)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CacheError, match=rf"another dora process is writing this cache \(pid {holder.pid} on "):
            cache_lock(root).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (root / LOCK_FILE).exists()  # left behind by the crash, but no longer held
    with cache_lock(root):
        pass
    assert not (root / LOCK_FILE).exists()


def test_unwritable_out_and_full_disk_give_one_line_and_keep_complete_shards(t5_dir, data_dir, tmp_path, monkeypatch):
    args = ["teacher-label", "--task", "fever", "--teacher", str(t5_dir), "--no-finetune", "--pool",
            str(data_dir / "pool.jsonl"), "--top-k", "4", "--shard-size", "8", "--max-new-tokens", "4"]
    result = runner.invoke(app, [*args, "--out", "/proc/dora-cache"])
    assert result.exit_code == 2 and "error: /proc" in result.output and "writable --out" in result.output
    assert "Traceback" not in result.output

    import dora.cache.writer as writer

    real, calls = writer.pq.write_table, []

    def fill_disk_after_two(table, where, **kw):
        calls.append(where)
        if len(calls) > 2:
            raise OSError(28, "No space left on device", str(where))
        return real(table, where, **kw)

    monkeypatch.setattr(writer.pq, "write_table", fill_disk_after_two)
    out = tmp_path / "cache"
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith(f"error: {out}/shards/part-00002.parquet: could not write the shard (No space left on device)")
    assert "rerun" in line
    partial = LabelCache.open(out, require_complete=False)
    assert [s.index for s in partial.manifest.shards] == [0, 1] and not partial.manifest.complete
    assert partial.verify_checksums() == []
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    monkeypatch.setattr(writer.pq, "write_table", real)  # space freed: the rerun finishes the rest
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert LabelCache.open(out).num_rows == 40


# --- kill -9 at random moments ----------------------------------------------------------------

PHASES = ("start", "finetune", "label")


def _phase(out: Path, pid: int) -> str:
    """How far process ``pid`` has got, from its cost ledgers: "finetune" once it has saved a
    checkpoint of its own, "label" once it has started labeling."""
    def entries(ledger: Path) -> list[dict]:
        found = []
        for line in (ledger.read_text().splitlines() if ledger.is_file() else []):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being appended
            if entry.get("pid") == pid:
                found.append(entry)
        return found

    if entries(out / "dora-ledger.jsonl"):
        return "label"
    tuning = entries(out.with_name(out.name + ".teacher") / "dora-ledger.jsonl")
    return "finetune" if any(e["status"] == "running" and e.get("steps", 0) > 0 for e in tuning) else "start"


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(t5_dir, tmp_path, request):
    """SIGKILL `dora teacher-label` 12 times (6 while fine-tuning, 6 while labeling), rerunning
    after each; the result equals an uninterrupted run row for row."""
    rows = fever_rows()
    write_jsonl(tmp_path / "train.jsonl", rows[:64])
    write_jsonl(tmp_path / "pool.jsonl", [{"id": r["id"], "source": r["source"]} for r in rows[300:420]])
    args = ["teacher-label", "--task", "fever", "--teacher", str(t5_dir), "--train", str(tmp_path / "train.jsonl"),
            "--pool", str(tmp_path / "pool.jsonl"), "--top-k", "4", "--max-steps", "150", "--save-every", "10",
            "--batch-size", "4", "--shard-size", "6", "--max-new-tokens", "8", "--label-batch-size", "2"]
    reference = tmp_path / "reference"  # same environment (thread count) as the killed runs: bit-equal floats
    # It runs beside the killed runs (one thread each, so the two cores serve both) and is compared at the end.
    with open(tmp_path / "reference.log", "w") as log:
        uninterrupted = subprocess.Popen([sys.executable, "-m", "dora", *args, "--out", str(reference)],
                                         stdout=subprocess.DEVNULL, stderr=log, env=ENV)
    request.addfinalizer(lambda: (uninterrupted.kill(), uninterrupted.wait()))  # never left running after a failure

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "dora", *args, "--out", str(out)]
    rng = random.Random(int(os.environ.get("DORA_KILL_SEED", "7")))  # another seed: another set of moments
    kills: list[str] = []
    logs: list[str] = []
    ended: dict[int, float] = {}  # pid -> when it died
    for target in ["finetune"] * 6 + ["label"] * 6:
        log = tmp_path / f"run{len(logs)}.log"
        with open(log, "w") as stderr:
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=ENV)
            while proc.poll() is None and PHASES.index(_phase(out, proc.pid)) < PHASES.index(target):
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.4))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills.append(_phase(out, proc.pid))
            proc.wait()
            ended[proc.pid] = time.time()
        logs.append(log.read_text())
        if (out / "manifest.json").exists() and json.loads((out / "manifest.json").read_text())["complete"]:
            break
    assert len(kills) >= 10, kills
    assert {"finetune", "label"} <= set(kills), kills
    assert any("resuming from step" in text for text in logs), "fine-tuning never resumed from a checkpoint"

    done = subprocess.run(command, capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr
    assert uninterrupted.wait(timeout=600) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    _same_rows(out, reference)
    assert LabelCache.open(out).verify_checksums() == []
    leftovers = [p.name for p in [*out.iterdir(), *(out / "shards").iterdir()] if p.name.startswith(".")]
    assert leftovers == []

    # The cost ledger: every invocation's time is kept, each example is counted once.
    costs = LabelCache.open(out).manifest.costs
    finetune, labeling = costs["teacher_finetune"], costs["labeling"]
    want = json.loads((reference / "manifest.json").read_text())["costs"]
    assert (finetune["steps"], finetune["examples"]) == (150, 600) == (want["teacher_finetune"]["steps"],
                                                                      want["teacher_finetune"]["examples"])
    assert (labeling["examples"], labeling["steps"]) == (120, 20)
    assert labeling["tokens"] == LabelCache.open(out).manifest.stats["tokens"] == want["labeling"]["tokens"]
    entries = finetune["entries"] + labeling["entries"]
    for stage in (finetune, labeling):  # totals are the sum of the parts
        assert stage["wall_seconds"] == pytest.approx(sum(e["wall_seconds"] for e in stage["entries"]), abs=0.01)
        assert stage["device_hours"] == pytest.approx(sum(e["device_hours"] for e in stage["entries"]), abs=1e-5)
    by_pid: dict[int, list[dict]] = {}
    for e in entries:
        by_pid.setdefault(e["pid"], []).append(e)
    killed = [pid for pid in ended if pid in by_pid and pid != done_pid(entries)]
    assert len(killed) >= 10  # every kill landed inside a stage
    for pid in killed:  # a killed process's record covers its time from its first stage to its death
        recorded = sum(e["wall_seconds"] for e in by_pid[pid])
        lived = ended[pid] - min(e["t0"] for e in by_pid[pid])
        assert lived - 3.0 <= recorded <= lived + 0.5, (pid, recorded, lived)
    assert sum(len(v) for v in by_pid.values()) == finetune["invocations"] + labeling["invocations"]


def test_ctranslate2_labeling_killed_at_random_moments_resumes_to_the_same_cache(cache_dir, tmp_path):
    """SIGKILL `dora teacher-label --engine ctranslate2` while it labels, rerun after each: the
    result equals an uninterrupted CTranslate2 run row for row, with every row counted once."""
    pytest.importorskip("ctranslate2")
    rows = fever_rows()
    write_jsonl(tmp_path / "pool.jsonl", [{"id": r["id"], "source": r["source"]} for r in rows[:600]])
    teacher = cache_dir.with_name(cache_dir.name + ".teacher")
    args = ["teacher-label", "--task", "fever", "--teacher", str(teacher), "--no-finetune", "--engine", "ctranslate2",
            "--pool", str(tmp_path / "pool.jsonl"), "--top-k", "4", "--shard-size", "4", "--max-new-tokens", "8",
            "--label-batch-size", "2"]
    done = subprocess.run([sys.executable, "-m", "dora", *args, "--out", str(tmp_path / "reference")],
                          capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "killed"
    rng = random.Random(11)
    kills, listed = 0, []
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-m", "dora", *args, "--out", str(out)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=ENV)
        while proc.poll() is None and _phase(out, proc.pid) != "label":
            time.sleep(0.02)
        time.sleep(rng.uniform(0.05, 0.35))  # the engine's start, or some shards in
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        listed.append(len(LabelCache.open(out, require_complete=False).manifest.shards))
        if listed[-1] == 150 or kills == 4:
            break
    assert kills >= 3 and any(0 < n < 150 for n in listed), listed  # kills landed mid-labeling
    done = subprocess.run([sys.executable, "-m", "dora", *args, "--out", str(out)], capture_output=True, text=True,
                          env=ENV)
    assert done.returncode == 0, done.stderr
    _same_rows(out, tmp_path / "reference")
    assert LabelCache.open(out).verify_checksums() == []
    assert [p.name for p in [*out.iterdir(), *(out / "shards").iterdir()] if p.name.startswith(".")] == []
    labeling = LabelCache.open(out).manifest.costs["labeling"]
    assert (labeling["examples"], labeling["steps"]) == (600, 150) and labeling["invocations"] >= kills + 1


def done_pid(entries: list[dict]) -> int:
    """The pid of the invocation that finished (status done and the latest start)."""
    return max((e for e in entries if e["status"] == "done"), key=lambda e: e["t0"])["pid"]


# --- Ray ----------------------------------------------------------------------------------------

def test_ray_labeled_cache_equals_the_single_process_cache(cache_dir, t5_dir, data_dir, tmp_path):
    pytest.importorskip("ray")
    import ray

    from dora.pipeline.data.inputs import Fields
    from dora.pipeline.stages.teacher_label import TeacherLabelConfig, teacher_label

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "ray-cache"
        teacher_label(TeacherLabelConfig(
            task="fever", teacher=str(t5_dir), train=data_dir / "train.jsonl", pool=data_dir / "pool.jsonl",
            out=out, teacher_out=cache_dir.with_name(cache_dir.name + ".teacher"), top_k=8, max_steps=CACHE_STEPS, learning_rate=3e-3,
            shard_size=16, max_new_tokens=12, label_batch_size=7, batch_size=8, fields=Fields(),
            ray="local", ray_workers=2,
        ))
    finally:
        ray.shutdown()
    # Same rows and pseudo-labels; logprobs to float rounding (the workers use other thread counts).
    _same_rows(out, cache_dir, logprob_tol=1e-5)
    got, want = (json.loads((p / "manifest.json").read_text()) for p in (out, cache_dir))
    timing = {"stats", "costs", "shards"}
    assert {k: v for k, v in got.items() if k not in timing | {"generation"}} == \
        {k: v for k, v in want.items() if k not in timing | {"generation"}}
    assert {**got["generation"], "engine": None} == {**want["generation"], "engine": None}
    assert got["generation"]["engine"]["ray_workers"] == 2
    assert [(s["index"], s["rows"]) for s in got["shards"]] == [(s["index"], s["rows"]) for s in want["shards"]]
    assert got["costs"]["labeling"]["device_count"] == 2


def test_ray_workers_label_with_ctranslate2_as_one_process_does(cache_dir, data_dir, tmp_path):
    """Two Ray workers, each converting (or finding) the teacher's CTranslate2 copy and labeling
    whole shards: the same cache as one process with the same engine, in int8, whose agreement
    with float32 the first worker measures as one process does."""
    pytest.importorskip("ray")
    pytest.importorskip("ctranslate2")
    import ray

    from dora.pipeline.stages.teacher_label import TeacherLabelConfig, teacher_label

    def label(out: Path, **ray_options) -> None:
        teacher_label(TeacherLabelConfig(
            task="fever", teacher=str(cache_dir.with_name(cache_dir.name + ".teacher")), finetune=False,
            pool=data_dir / "pool.jsonl", out=out, engine="ctranslate2", compute_type="int8", top_k=8, shard_size=16,
            max_new_tokens=12, label_batch_size=7, fields=Fields(), **ray_options))

    label(tmp_path / "one")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        label(tmp_path / "ray", ray="local", ray_workers=2)
    finally:
        ray.shutdown()
    _same_rows(tmp_path / "ray", tmp_path / "one", logprob_tol=1e-5)
    got = LabelCache.open(tmp_path / "ray").manifest
    assert got.generation.backend == "ctranslate2" and got.generation.engine["ray_workers"] == 2
    ours = got.generation.engine["agreement"]
    one = LabelCache.open(tmp_path / "one").manifest.generation.engine["agreement"]
    assert ours["rows"] == one["rows"] == 40 and ours["compute_type"] == "int8"
    assert ours["labels_equal"] == one["labels_equal"]
    assert ours["mean_abs_logprob_difference"] == pytest.approx(one["mean_abs_logprob_difference"], abs=1e-5)
    assert got.costs["labeling"]["device_count"] == 2


# --- several processes (gloo) --------------------------------------------------------------------

def _torchrun(args: list[str], log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(29500 + os.getpid() % 1000), "-m", "dora", *args]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(log, "w"), env={**ENV, "COLUMNS": "200"})


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and its workers (torchrun starts them in sessions of their own)."""
    import psutil

    for child in psutil.Process(proc.pid).children(recursive=True):
        child.send_signal(signal.SIGKILL)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path / "model.safetensors"))


def test_student_on_two_processes_resumes_mid_epoch(cache_dir, t5_dir, tmp_path):
    args = ["train-student", "--task", "fever", "--student", str(t5_dir), "--cache", str(cache_dir),
            "--max-steps", "120", "--save-every", "7", "--batch-size", "4", "--max-new-tokens", "4"]
    whole = _torchrun([*args, "--out", str(tmp_path / "whole")], tmp_path / "whole.log")
    assert whole.wait(timeout=300) == 0, (tmp_path / "whole.log").read_text()[-3000:]
    record = json.loads((tmp_path / "whole" / "run.json").read_text())
    assert record["steps"] == 120 and record["examples_seen"] == 120 * 4 * 2
    (entry,) = record["cost"]["entries"]  # two processes, one device each: two devices
    assert (entry["processes"], entry["device_count"], record["cost"]["device_count"]) == (2, 2, 2)
    assert entry["device_hours"] == pytest.approx(entry["wall_seconds"] * 2 / 3600, abs=1e-6)

    out = tmp_path / "killed"
    proc = _torchrun([*args, "--out", str(out)], tmp_path / "killed.log")
    state = out / "checkpoints" / "last" / "trainer_state.json"
    while proc.poll() is None and not state.exists():
        time.sleep(0.02)
    _kill_tree(proc)
    step = json.loads(state.read_text())["step"]
    assert 0 < step < 120 and step % 5, "a checkpoint mid-epoch (5 steps per epoch over 2 processes)"
    resumed = _torchrun([*args, "--out", str(out)], tmp_path / "resumed.log")
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    assert f"resuming from step {step}" in (tmp_path / "resumed.log").read_text()
    a, b = _weights(tmp_path / "whole"), _weights(out)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    cost = json.loads((out / "run.json").read_text())["cost"]
    assert cost["invocations"] == 2 and cost["steps"] == 120 and cost["examples"] == 120 * 4 * 2  # counted once
    assert all(e["device_count"] == 2 for e in cost["entries"])


def _fsdp_label(t5_dir: Path, data_dir: Path, out: Path, *extra: str) -> subprocess.Popen:
    return _torchrun(["teacher-label", "--task", "fever", "--teacher", str(t5_dir), "--train", str(data_dir / "train.jsonl"),
                      "--pool", str(data_dir / "pool.jsonl"), "--out", str(out), "--fsdp", "--save-every", "7",
                      "--top-k", "4", "--shard-size", "16", "--max-new-tokens", "6", *extra], out.with_suffix(".log"))


def test_fsdp_teacher_on_two_gloo_processes_resumes_from_sharded_checkpoints(t5_dir, data_dir, tmp_path):
    whole = tmp_path / "whole"
    proc = _fsdp_label(t5_dir, data_dir, whole, "--max-steps", "150")
    assert proc.wait(timeout=300) == 0, whole.with_suffix(".log").read_text()[-3000:]
    cache = LabelCache.open(whole)
    assert cache.num_rows == 40 and cache.manifest.teacher.finetuned
    teacher = tmp_path / "whole.teacher"
    assert json.loads((teacher / "dora_finetune.json").read_text())["steps"] == 150
    finetune = cache.manifest.costs["teacher_finetune"]
    assert finetune["device_count"] == 2 and finetune["entries"][0]["processes"] == 2  # both ranks' devices
    assert cache.manifest.costs["labeling"]["device_count"] == 1  # rank 0 labels alone
    trained, base = _weights(teacher), _weights(t5_dir)
    assert any(not np.array_equal(trained[k], base[k]) for k in trained if k in base)
    assert not (teacher / "checkpoints").exists()

    killed = tmp_path / "killed"
    proc = _fsdp_label(t5_dir, data_dir, killed, "--max-steps", "150")
    state = tmp_path / "killed.teacher" / "checkpoints" / "last" / "trainer_state.json"
    while proc.poll() is None and not state.exists():
        time.sleep(0.02)
    _kill_tree(proc)
    step = json.loads(state.read_text())["step"]
    assert (state.parent / "sharded").is_dir() and 0 < step < 150  # each rank wrote its shard
    proc = _fsdp_label(t5_dir, data_dir, killed, "--max-steps", "150")
    assert proc.wait(timeout=300) == 0, killed.with_suffix(".log").read_text()[-3000:]
    assert f"resuming from step {step}" in killed.with_suffix(".log").read_text()
    resumed = _weights(tmp_path / "killed.teacher")
    assert all(np.array_equal(resumed[k], trained[k]) for k in trained)  # bit-identical to the uninterrupted run
    _same_rows(killed, whole)


def test_fsdp_with_lora_saves_merged_plain_weights(t5_dir, data_dir, tmp_path):
    out = tmp_path / "lora"
    proc = _fsdp_label(t5_dir, data_dir, out, "--max-steps", "6", "--lora", "--lora-r", "4")
    assert proc.wait(timeout=300) == 0, out.with_suffix(".log").read_text()[-3000:]
    merged, base = _weights(tmp_path / "lora.teacher"), _weights(t5_dir)
    assert not any("lora" in k for k in merged) and merged.keys() <= base.keys() | {"lm_head.weight"}
    assert any(not np.array_equal(merged[k], base[k]) for k in merged if k in base)
    assert LabelCache.open(out).num_rows == 40
