"""Checkpoints without pickle: what they hold, what loading refuses, a full disk while saving, the
non-finite loss message, and the teacher directory (whose it is, its lock, no leftovers)."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from dora.errors import ConfigError, DoraError, ModelError, TrainingError
from dora.lock import LOCK_FILE
from dora.pipeline.data.encoding import collate
from dora.pipeline.train.checkpoint import CheckpointError, check_contents
from dora.pipeline.train.finetune import RECORD, sequence_loss
from dora.pipeline.train.loop import LoopSettings, train_loop

SETTINGS = LoopSettings(epochs=3, max_steps=None, batch_size=4, grad_accum=2, learning_rate=1e-3, warmup_ratio=0.1,
                        weight_decay=0.01, seed=7, eval_every=None, save_every=2)
CHECKPOINT_FILES = {"trainer_state.json", "scheduler.json", "state.safetensors", "state.json", "rng-0.safetensors",
                    "rng-0.json"}


def _model(t5_dir: Path):
    from transformers import AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM.from_pretrained(t5_dir, trust_remote_code=False)


def _features(t5_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(t5_dir)
    feats = [{"input_ids": tok(f"fever: claim number {i}")["input_ids"],
              "labels": tok("SUPPORTS" if i % 2 else "REFUTES")["input_ids"]} for i in range(21)]
    return feats, (lambda f: collate(f, tok.pad_token_id))


def _train(t5_dir: Path, out: Path, *, model=None, loss=None, save_model=None, **kw):
    feats, pad = _features(t5_dir)
    model = model if model is not None else _model(t5_dir)
    result = train_loop(model=model, features=feats, collate=pad, loss_fn=loss or sequence_loss("seq2seq"),
                        settings=SETTINGS, out_dir=out, save_model=save_model or (lambda m, p, sd: None), **kw)
    return model, result


def _crashing(at: int):
    """A loss that interrupts the run at micro-batch ``at`` (11: inside step 6, after the checkpoint at 4)."""
    loss, calls = sequence_loss("seq2seq"), {"n": 0}

    def fn(m, batch):
        calls["n"] += 1
        if calls["n"] == at:
            raise KeyboardInterrupt
        return loss(m, batch)

    return fn


@pytest.fixture(scope="module")
def runs(t5_dir, tmp_path_factory):
    """An uninterrupted run's final weights, and a run interrupted after its step-4 checkpoint."""
    root = tmp_path_factory.mktemp("checkpoint-runs")
    model, whole = _train(t5_dir, root / "whole")
    assert whole.steps == 9
    with pytest.raises(KeyboardInterrupt):
        _train(t5_dir, root / "partial", loss=_crashing(11))
    return {"expected": {k: v.clone() for k, v in model.state_dict().items()}, "partial": root / "partial"}


@pytest.fixture
def partial(runs, tmp_path) -> Path:
    """A fresh copy of the interrupted run (its ``checkpoints/last`` holds step 4)."""
    out = tmp_path / "run"
    shutil.copytree(runs["partial"], out)
    return out


def _last(run: Path) -> Path:
    return run / "checkpoints" / "last"


# --- what a checkpoint holds, and resuming from it --------------------------------------------

def test_a_checkpoint_holds_only_safetensors_and_json(partial):
    last = _last(partial)
    assert {p.name for p in last.iterdir()} == CHECKPOINT_FILES
    for path in last.iterdir():
        head = path.read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK", f"{path.name} looks like a pickle or a torch zip"
        if path.suffix == ".json":
            assert isinstance(json.loads(path.read_text()), dict)
    state = json.loads((last / "state.json").read_text())["state"]
    assert {"model", "optim"} <= set(state) and state["optim"]["param_groups"][0]["lr"] > 0
    scheduler = json.loads((last / "scheduler.json").read_text())["state"]
    assert scheduler["last_epoch"] == 4
    # Tied weights are stored once.
    from safetensors import safe_open

    with safe_open(str(last / "state.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert sum(k.startswith("/model/") and k.endswith("embed_tokens.weight") for k in keys) <= 1


def test_resume_is_bit_identical_to_an_uninterrupted_run(runs, partial, t5_dir):
    model, resumed = _train(t5_dir, partial)
    assert resumed.steps == 9 and resumed.examples_seen == 63
    for k, v in model.state_dict().items():
        assert torch.equal(v, runs["expected"][k]), k


def test_no_torch_load_anywhere_in_dora():
    root = Path(__file__).resolve().parents[1] / "dora"
    files = sorted(root.rglob("*.py"))
    assert {"loop.py", "fsdp.py", "finetune.py", "checkpoint.py"} <= {f.name for f in files}
    for file in files:
        text = file.read_text()
        for unsafe in ("torch.load(", "torch.save(", "import pickle", "save_state(", "load_state(", "dcp."):
            assert unsafe not in text, (file, unsafe)


# --- what loading refuses ---------------------------------------------------------------------

class _Payload:
    """Unpickling this creates ``marker``: proof that a loader ran a planted file's code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def plant_pickle(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(_Payload(marker)))


def test_the_payload_is_live(tmp_path):
    """The planted file would run code if anything unpickled it (so the marker tests can fail)."""
    plant_pickle(tmp_path / "x.pkl", tmp_path / "ran")
    pickle.loads((tmp_path / "x.pkl").read_bytes())
    assert (tmp_path / "ran").exists()


def test_a_planted_pickle_is_never_loaded(partial, t5_dir, tmp_path):
    marker = tmp_path / "payload-ran"
    plant_pickle(_last(partial) / "custom_checkpoint_0.pkl", marker)
    with pytest.raises(CheckpointError) as e:
        _train(t5_dir, partial)
    assert "custom_checkpoint_0.pkl" in str(e.value) and "pickle" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()
    assert (_last(partial) / "custom_checkpoint_0.pkl").exists()  # refused, not deleted behind the user's back


@pytest.mark.parametrize("name", ["optimizer.bin", "random_states_0.pkl", "scheduler.pt", "model.pth",
                                  "sharded/.metadata", "sharded/__0_0.distcp", "pytorch_model.bin", "notes.txt",
                                  "sharded/rank-0.pt", "subdir/state.json"])
def test_files_dora_does_not_write_are_refused(partial, name):
    target = _last(partial) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(CheckpointError, match="refusing to resume") as e:
        check_contents(_last(partial))
    assert str(target) in str(e.value) or str(target.parent) in str(e.value)


def test_a_symlink_in_a_checkpoint_is_refused(partial, tmp_path):
    last = _last(partial)
    real = tmp_path / "elsewhere.safetensors"
    shutil.move(last / "state.safetensors", real)
    (last / "state.safetensors").symlink_to(real)
    with pytest.raises(CheckpointError, match="not a file dora writes"):
        check_contents(last)


def _corrupt(name: str, how: str):
    def apply(last: Path) -> None:
        path = last / name
        data = path.read_bytes()
        if how == "truncate":
            path.write_bytes(data[: len(data) // 2])
        elif how == "garbage":
            path.write_bytes(os.urandom(len(data)))
        elif how == "empty":
            path.write_bytes(b"")
        else:
            path.write_bytes(how.encode("utf-8", "surrogateescape"))
    return apply


def _edit_json(name: str, edit):
    def apply(last: Path) -> None:
        path = last / name
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    return apply


CORRUPTIONS = {
    "truncated state.safetensors": (_corrupt("state.safetensors", "truncate"), "state.safetensors"),
    "garbage state.safetensors": (_corrupt("state.safetensors", "garbage"), "state.safetensors"),
    "empty rng-0.safetensors": (_corrupt("rng-0.safetensors", "empty"), "rng-0.safetensors"),
    "trainer_state not JSON": (_corrupt("trainer_state.json", "{\"step\": 4,"), "trainer_state.json"),
    "trainer_state a list": (_corrupt("trainer_state.json", "[1, 2]"), "trainer_state.json"),
    "trainer_state huge int": (_corrupt("trainer_state.json", '{"step": ' + "9" * 5000 + "}"), "trainer_state.json"),
    "trainer_state deep": (_corrupt("trainer_state.json", "[" * 200_000 + "]" * 200_000), "trainer_state.json"),
    "trainer_state bad UTF-8": (_corrupt("trainer_state.json", "\udcff"), "trainer_state.json"),
    "step is a string": (_edit_json("trainer_state.json", lambda s: s | {"step": "4"}), "trainer_state.json"),
    "negative step": (_edit_json("trainer_state.json", lambda s: s | {"step": -1}), "trainer_state.json"),
    "history of strings": (_edit_json("trainer_state.json", lambda s: s | {"history": ["x"]}), "trainer_state.json"),
    "lr a string": (_edit_json("state.json", lambda s: s | {"state": s["state"] | {"optim": s["state"]["optim"] | {
        "param_groups": [g | {"lr": "0.1"} for g in s["state"]["optim"]["param_groups"]]}}}), "state.json"),
    "tensor key unknown": (_edit_json("state.json", lambda s: json.loads(
        json.dumps(s).replace('"tensor": "/model/shared.weight"', '"tensor": "/nope"'))), "state.json"),
    "another world size": (_edit_json("state.json", lambda s: s | {"world": 2}), "state.json"),
    "lr a 400-digit number": (_edit_json("state.json", lambda s: s | {"state": s["state"] | {"optim": s["state"][
        "optim"] | {"param_groups": [g | {"lr": 10**400} for g in s["state"]["optim"]["param_groups"]]}}}),
        "state.json"),
    "scheduler epoch huge": (_edit_json("scheduler.json", lambda s: s | {"state": s["state"] | {
        "last_epoch": 10**300}}), "scheduler.json"),
    "step huge": (_edit_json("trainer_state.json", lambda s: s | {"step": 10**30}), "trainer_state.json"),
    "scheduler a number": (_corrupt("scheduler.json", "7"), "scheduler.json"),
    "scheduler epoch a float": (_edit_json("scheduler.json", lambda s: s | {"state": s["state"] | {
        "last_epoch": 4.5}}), "scheduler.json"),
    "python rng out of range": (_edit_json("rng-0.json", lambda s: s | {"python": [3, [2**40] * 625, None]}),
                                "rng-0.json"),
    "numpy rng wrong shape": (_edit_json("rng-0.json", lambda s: s | {"numpy": ["MT19937", [1, 2], 0, 0, 0.0]}),
                              "rng-0.json"),
    "trainer_state missing": (lambda last: (last / "trainer_state.json").unlink(), "trainer_state.json"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS), ids=list(CORRUPTIONS))
def test_a_damaged_checkpoint_is_refused_in_one_line(partial, t5_dir, case):
    damage, culprit = CORRUPTIONS[case]
    damage(_last(partial))
    with pytest.raises(CheckpointError) as e:
        _train(t5_dir, partial)
    message = str(e.value)
    assert str(_last(partial) / culprit) in message and "\n" not in message, message
    assert "delete" in message and str(_last(partial)) in message


# --- a full disk while saving -------------------------------------------------------------------

def _full_disk_after(monkeypatch, calls: int, kind: type[BaseException] = OSError):
    """``safetensors.torch.save_file`` works ``calls`` times, then fails as on a full disk."""
    import safetensors.torch as st

    real, seen = st.save_file, {"n": 0}

    def save_file(*args, **kwargs):
        seen["n"] += 1
        if seen["n"] > calls:
            if kind is OSError:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise kind("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")
        return real(*args, **kwargs)

    monkeypatch.setattr(st, "save_file", save_file)
    return real


@pytest.mark.parametrize("kind", ["OSError", "SafetensorError", "RuntimeError"])
def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(t5_dir, tmp_path, monkeypatch, kind):
    from safetensors import SafetensorError

    error = {"OSError": OSError, "SafetensorError": SafetensorError, "RuntimeError": RuntimeError}[kind]
    real = _full_disk_after(monkeypatch, 2, error)  # the step-2 checkpoint (state + rng), then nothing
    out = tmp_path / "run"
    with pytest.raises(CheckpointError) as e:
        _train(t5_dir, out)
    message = str(e.value)
    assert "disk may be full" in message and "previous checkpoint is intact" in message and "free space" in message
    assert str(out / "checkpoints" / "last.tmp" / "state.safetensors") in message and "\n" not in message
    assert not (out / "checkpoints" / "last.tmp").exists()  # nothing half-written left behind
    assert json.loads((_last(out) / "trainer_state.json").read_text())["step"] == 2
    monkeypatch.setattr("safetensors.torch.save_file", real)  # space freed: the rerun resumes and finishes
    _, result = _train(t5_dir, out)
    assert result.steps == 9


def test_a_full_disk_at_the_first_checkpoint_says_none_was_kept(t5_dir, tmp_path, monkeypatch):
    _full_disk_after(monkeypatch, 0)
    with pytest.raises(CheckpointError, match="no earlier checkpoint was kept; free space and rerun"):
        _train(t5_dir, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints" / "last.tmp").exists()
    assert not (tmp_path / "run" / "checkpoints" / "last").exists()


def test_a_full_disk_while_saving_the_final_model_is_one_line(t5_dir, tmp_path):
    from safetensors import SafetensorError

    def save_model(module, path, state_dict):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    out = tmp_path / "run"
    with pytest.raises(CheckpointError) as e:
        _train(t5_dir, out, save_model=save_model, final_dir=out / "final")
    message = str(e.value)
    assert message.startswith(f"{out / 'final'}: could not write the model") and "disk may be full" in message
    assert "previous checkpoint is intact" in message and "\n" not in message
    assert json.loads((_last(out) / "trainer_state.json").read_text())["step"] == 9


# --- a non-finite loss --------------------------------------------------------------------------

def test_a_non_finite_loss_names_the_learning_rate_and_the_inputs(t5_dir, tmp_path):
    loss = sequence_loss("seq2seq")
    with pytest.raises(TrainingError) as e:
        _train(t5_dir, tmp_path / "run", loss=lambda m, b: loss(m, b) * float("nan"))
    message = str(e.value)
    assert "--learning-rate" in message and "non-finite" in message and "dora cache verify" in message
    assert "last checkpoint is kept" in message and "\n" not in message


# --- FSDP: each rank's local shards, refused with another world size ---------------------------

FSDP_SCRIPT = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path
    import torch, torch.distributed as dist
    from dora.pipeline.train.checkpoint import CheckpointError
    from dora.pipeline.train.fsdp import load_sharded, save_sharded, shard_model

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    root, mode = Path(sys.argv[1]), sys.argv[2]

    def build():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
        model = shard_model(model, torch.device("cpu"), bf16=False)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2)

    def steps(model, opt, n):
        for i in range(n):
            torch.manual_seed(100 + i)
            model(torch.randn(6, 8)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()

    def local(model):
        return {k: v.to_local().clone() for k, v in model.state_dict().items()}

    if mode == "save":
        model, opt = build()
        steps(model, opt, 3)
        save_sharded(root, model, opt, rank, world)
        steps(model, opt, 2)
        (root / f"expected-{rank}.json").write_text(json.dumps({k: v.tolist() for k, v in local(model).items()}))
    elif mode == "load":
        model, opt = build()
        load_sharded(root, model, opt, rank, world)
        steps(model, opt, 2)
        want = json.loads((root / f"expected-{rank}.json").read_text())
        got = local(model)
        assert all(torch.equal(got[k], torch.tensor(v)) for k, v in want.items())
        print("IDENTICAL", rank)
    else:  # the checkpoint claims another world size
        model, opt = build()
        try:
            load_sharded(root, model, opt, rank, world)
        except CheckpointError as e:
            print("REFUSED", e)
    dist.destroy_process_group()
''')


def _torchrun(script: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(29600 + os.getpid() % 1000), str(script), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_fsdp_shards_are_safetensors_and_resume_bit_identical(tmp_path):
    script = tmp_path / "fsdp_check.py"
    script.write_text(FSDP_SCRIPT)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    done = _torchrun(script, str(ckpt), "save")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (ckpt / "sharded").iterdir()) == [
        "rank-0.json", "rank-0.safetensors", "rank-1.json", "rank-1.safetensors"]
    assert sorted(p.name for p in ckpt.iterdir()) == ["expected-0.json", "expected-1.json", "sharded"]
    done = _torchrun(script, str(ckpt), "load")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("IDENTICAL") == 2
    for rank in (0, 1):
        path = ckpt / "sharded" / f"rank-{rank}.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | {"world": 4}))
    done = _torchrun(script, str(ckpt), "world")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("REFUSED") == 2 and "saved by 4 processes, this run has 2" in done.stdout


# --- the teacher directory ----------------------------------------------------------------------

def _finetune(t5_dir: Path, examples, out_dir: Path, **overrides):
    from dora.pipeline.models.loading import load_tokenizer
    from dora.pipeline.train.finetune import finetune_teacher

    settings = LoopSettings(epochs=1, max_steps=2, batch_size=8, grad_accum=1, learning_rate=1e-3, warmup_ratio=0.0,
                            weight_decay=0.0, seed=1, eval_every=None, save_every=None)
    return finetune_teacher(base=str(t5_dir), revision=None, trust_remote_code=False,
                            tokenizer=load_tokenizer(str(t5_dir)), examples=examples, prefix="fever: ",
                            max_source_length=32, max_target_length=8, settings=overrides.pop("settings", settings),
                            lora=None, out_dir=out_dir, **overrides)


@pytest.fixture(scope="module")
def examples(data_dir):
    from dora.pipeline.data.inputs import read_examples

    return read_examples(data_dir / "train.jsonl", require_target=True)[:16]


def test_a_teacher_directory_records_its_run_first_and_last(t5_dir, examples, tmp_path, monkeypatch):
    import dora.pipeline.train.finetune as finetune

    out = tmp_path / "teacher"
    seen = {}
    real = finetune.train_loop

    def spy(**kw):
        seen["record"] = json.loads((out / RECORD).read_text())  # written before any training
        seen["locked"] = (out / LOCK_FILE).exists()
        return real(**kw)

    monkeypatch.setattr(finetune, "train_loop", spy)
    model, record = _finetune(t5_dir, examples, out)
    assert seen["record"]["complete"] is False and seen["record"]["key"] == record["key"] and seen["locked"]
    assert record["complete"] is True and json.loads((out / RECORD).read_text())["complete"] is True
    assert not (out / LOCK_FILE).exists() and not (out / "final.tmp").exists()
    assert (out / "model.safetensors").is_file() and not (out / "checkpoints").exists()
    again, reused = _finetune(t5_dir, examples, out)
    assert again is None and reused["key"] == record["key"]


def test_an_interrupted_teacher_run_resumes_in_its_own_directory(t5_dir, examples, tmp_path, monkeypatch):
    import dora.pipeline.train.loop as training

    out = tmp_path / "teacher"
    settings = LoopSettings(epochs=1, max_steps=4, batch_size=4, grad_accum=1, learning_rate=1e-3, warmup_ratio=0.0,
                            weight_decay=0.0, seed=1, eval_every=None, save_every=2)
    real = training.write_curves

    def interrupt(*args):
        real(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "write_curves", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _finetune(t5_dir, examples, out, settings=settings)
    assert json.loads((out / RECORD).read_text())["complete"] is False  # kept: a checkpoint is worth resuming
    assert (out / "checkpoints" / "last" / "trainer_state.json").is_file()
    monkeypatch.setattr(training, "write_curves", real)
    model, record = _finetune(t5_dir, examples, out, settings=settings)
    assert model is not None and record["steps"] == 4 and record["complete"] is True


def test_a_failure_before_anything_of_value_removes_the_directories_it_created(t5_dir, examples, tmp_path,
                                                                                monkeypatch):
    import dora.pipeline.train.finetune as finetune

    def broken(*args, **kwargs):
        raise ModelError("cannot load the teacher (a late bad option)")

    monkeypatch.setattr(finetune, "load_model", broken)
    out = tmp_path / "new" / "deeper" / "teacher"
    with pytest.raises(ModelError):
        _finetune(t5_dir, examples, out)
    assert not (tmp_path / "new").exists()

    empty = tmp_path / "mine"  # the user's empty directory: left empty, never removed
    empty.mkdir()
    with pytest.raises(ModelError):
        _finetune(t5_dir, examples, empty)
    assert empty.is_dir() and list(empty.iterdir()) == []


def test_a_failed_resume_keeps_the_run_it_continues(t5_dir, examples, tmp_path, monkeypatch):
    import dora.pipeline.train.finetune as finetune

    out = tmp_path / "teacher"
    model, record = _finetune(t5_dir, examples, out)
    (out / RECORD).write_text(json.dumps(record | {"complete": False}))  # as if killed before the end
    before = sorted(p.name for p in out.iterdir())

    def broken(**kwargs):
        raise ConfigError("a bad option detected late")

    monkeypatch.setattr(finetune, "train_loop", broken)
    with pytest.raises(ConfigError):
        _finetune(t5_dir, examples, out)
    assert sorted(p.name for p in out.iterdir()) == before  # not this run's to remove


@pytest.mark.parametrize("content", ['{"key": 1}', "[]", '{"key": "k", "complete": "yes"}', "not json",
                                     '{"key": ' + "7" * 5000 + "}", "[" * 200_000 + "]" * 200_000,
                                     '{"key": "k", "cost": []}'])
def test_a_corrupt_record_is_one_line(t5_dir, examples, tmp_path, content):
    out = tmp_path / "teacher"
    out.mkdir()
    (out / RECORD).write_text(content)
    with pytest.raises(ConfigError) as e:
        _finetune(t5_dir, examples, out)
    assert str(e.value).startswith(f"{out / RECORD}: ") and "\n" not in str(e.value)
    assert sorted(p.name for p in out.iterdir()) == [RECORD]


HOLDER = textwrap.dedent('''
    import sys, time
    from dora.cache.writer import cache_lock
    lock = cache_lock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(120)
''')


def test_a_second_run_on_a_locked_teacher_directory_is_refused(t5_dir, examples, tmp_path):
    out = tmp_path / "teacher"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError) as e:
            _finetune(t5_dir, examples, out)
        message = str(e.value)
        assert message.startswith(f"{out}: another dora process is fine-tuning") and f"pid {holder.pid}" in message
        assert "since" in message and "\n" not in message
        assert (out / LOCK_FILE).exists()  # the holder's lock is left alone
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.05)
    _, record = _finetune(t5_dir, examples, out)  # the holder died: the lock went with it
    assert record["complete"] is True and not (out / LOCK_FILE).exists()


def test_every_error_here_is_a_dora_error():
    assert issubclass(CheckpointError, TrainingError) and issubclass(CheckpointError, DoraError)
