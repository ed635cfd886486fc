"""Hostile checkpoints and teacher directories (issue 13), through the CLI.

Planted pickle files and damaged files in ``checkpoints/last`` of an interrupted run, a
``--teacher-out`` onto the user's own model or another run's teacher, damaged
``dora_finetune.json`` records, a teacher directory locked by another process, and a full disk
while saving. Every case ends in exactly one ``error:`` line (exit 2), never a traceback, never
code from a planted file, and changes nothing outside its declared outputs.

Two interrupted runs are made once per module (a student and a teacher, each stopped right after
its step-2 checkpoint); each case copies one and damages the copy.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from adversarial import Case, run_case
from typer.testing import CliRunner

from dora.cli import app

DEEP = "[" * 200_000 + "]" * 200_000  # json recurses once per level: RecursionError
HUGE_INT = "7" * 5000  # past Python's 4,300-digit limit on int(str): ValueError

STUDENT = ["train-student", "--task", "fever", "--student", "{t5}", "--train", "{data}/train.jsonl", "--out", "{run}",
           "--max-steps", "4", "--save-every", "2", "--batch-size", "4", "--max-new-tokens", "4"]
TEACHER = ["teacher-label", "--task", "fever", "--teacher", "{t5}", "--train", "{data}/train.jsonl", "--pool",
           "{data}/pool.jsonl", "--out", "{tmp}/cache", "--teacher-out", "{teacher}", "--max-steps", "4",
           "--save-every", "2", "--top-k", "4", "--max-new-tokens", "4"]


def _interrupted(args: list[str]) -> None:
    """Run the CLI and stop it (as Ctrl-C would) right after its first checkpoint."""
    import dora.pipeline.train.loop as training

    real = training.write_curves

    def stop(*a: Any) -> None:
        real(*a)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "write_curves", stop)
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 130, result.output


@pytest.fixture(scope="module")
def partial_runs(tmp_path_factory, t5_dir, data_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("interrupted")
    values = {"t5": t5_dir, "data": data_dir, "tmp": root, "run": root / "student", "teacher": root / "teacher"}
    _interrupted([a.format(**values) for a in STUDENT])
    _interrupted([a.format(**values) for a in TEACHER])
    for run in (root / "student", root / "teacher"):
        state = json.loads((run / "checkpoints" / "last" / "trainer_state.json").read_text())
        assert state["step"] == 2, run
    assert json.loads((root / "teacher" / "dora_finetune.json").read_text())["complete"] is False
    return {"student": root / "student", "teacher": root / "teacher"}


def _copy(which: str):
    def setup(tmp: Path, partial_runs: dict[str, Path], **fixtures: Any) -> dict[str, Any]:
        target = tmp / which
        shutil.copytree(partial_runs[which], target)
        if which == "student":
            _adopt(target, {**fixtures, "tmp": tmp, "run": target})
        return {"run" if which == "student" else "teacher": target, "last": target / "checkpoints" / "last"}
    return setup


def _adopt(run: Path, values: dict[str, Any]) -> None:
    """Make a copied student run this command's own: a student run's identity includes its --out,
    so the copy's marker is rewritten with the identity ``train-student`` computes for the copy."""
    import dora.pipeline.stages.train_student as student

    marker = getattr(student, "RUN_MARKER", None)
    if marker is None or not (run / marker).is_file():
        return
    from dora.rundir import RunDir

    seen: dict[str, str] = {}

    def capture(run: RunDir) -> None:
        seen["identity"] = run.identity
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RunDir, "claim", capture)
        CliRunner().invoke(app, [a.format(**values) for a in STUDENT])
    data = json.loads((run / marker).read_text())
    (run / marker).write_text(json.dumps(data | {"identity": seen["identity"]}) + "\n")


class Payload:
    """Unpickling this creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def planted(which: str, name: str, content: bytes | None = None):
    """A copy of an interrupted run with ``name`` planted in its ``checkpoints/last``; by default a
    pickle whose unpickling creates ``{tmp}/marker``."""
    def setup(tmp: Path, **fixtures: Any) -> dict[str, Any]:
        values = _copy(which)(tmp, **fixtures)
        path = values["last"] / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if content is not None else pickle.dumps(Payload(tmp / "marker")))
        return values
    return setup


def damaged(which: str, name: str, how: Any):
    """A copy of an interrupted run with ``checkpoints/last/name`` damaged: ``how`` is the new
    content (str/bytes) or a function of the old bytes."""
    def setup(tmp: Path, **fixtures: Any) -> dict[str, Any]:
        values = _copy(which)(tmp, **fixtures)
        path = values["last"] / name
        new = how(path.read_bytes()) if callable(how) else how
        path.write_bytes(new if isinstance(new, bytes) else new.encode())
        return values
    return setup


def teacher_dir(record: str | None = None, files: dict[str, str] | None = None, model: bool = False):
    """``{tmp}/teacher`` with a record of this text, other files, or a copy of the user's model."""
    def setup(tmp: Path, t5: Path, **_: Any) -> dict[str, Any]:
        target = tmp / "teacher"
        if model:
            shutil.copytree(t5, target)
        target.mkdir(exist_ok=True)
        if record is not None:
            (target / "dora_finetune.json").write_text(record)
        for name, text in (files or {}).items():
            (target / name).write_text(text)
        return {"teacher": target}
    return setup


def full_disk(target: str, then: Any = None):
    """A setup making writes through ``target`` fail as on a full disk (ENOSPC)."""
    def setup(tmp: Path, monkeypatch: pytest.MonkeyPatch, **fixtures: Any) -> dict[str, Any]:
        def no_space(*args: Any, **kwargs: Any) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(target, no_space)
        return then(tmp, monkeypatch=monkeypatch, **fixtures) if then else {"run": tmp / "run", "teacher": tmp / "teacher"}
    return setup


LEDGER = "{run}/dora-ledger.jsonl"  # a refused resume is still an invocation: the ledger records it
MARKER = "{run}/.dora-run.json"  # rewritten by every invocation (train_student.py)
TEACHER_LEDGER = "{teacher}/dora-ledger.jsonl"
REFUSED = "refusing to resume"

CASES = [
    # --- pickle-like files planted in a student's checkpoint ---
    Case("student-custom-checkpoint-pkl", STUDENT, 2, "custom_checkpoint_0.pkl: a pickle-format file",
         setup=planted("student", "custom_checkpoint_0.pkl"), outputs=(LEDGER, MARKER)),
    Case("student-optimizer-bin", STUDENT, 2, "optimizer.bin: a pickle-format file",
         setup=planted("student", "optimizer.bin"), outputs=(LEDGER, MARKER)),
    Case("student-random-states-pkl", STUDENT, 2, "random_states_0.pkl: a pickle-format file",
         setup=planted("student", "random_states_0.pkl"), outputs=(LEDGER, MARKER)),
    Case("student-rng-pt", STUDENT, 2, "rng-0.pt: a pickle-format file",
         setup=planted("student", "rng-0.pt"), outputs=(LEDGER, MARKER)),
    Case("student-model-pth", STUDENT, 2, "model.pth: a pickle-format file",
         setup=planted("student", "model.pth"), outputs=(LEDGER, MARKER)),
    Case("student-dcp-metadata", STUDENT, 2, "sharded/.metadata: a pickle-format file",
         setup=planted("student", "sharded/.metadata"), outputs=(LEDGER, MARKER)),
    Case("student-unknown-file", STUDENT, 2, "extra.json: not a file dora writes in a checkpoint",
         setup=planted("student", "extra.json", b"{}"), outputs=(LEDGER, MARKER)),
    # --- damaged parts of a student's checkpoint ---
    Case("student-truncated-state", STUDENT, 2, "state.safetensors: not a complete safetensors file",
         setup=damaged("student", "state.safetensors", lambda b: b[: len(b) // 2]), outputs=(LEDGER, MARKER)),
    Case("student-garbage-rng", STUDENT, 2, "rng-0.safetensors: not a complete safetensors file",
         setup=damaged("student", "rng-0.safetensors", b"\x00" * 64), outputs=(LEDGER, MARKER)),
    Case("student-state-not-json", STUDENT, 2, "trainer_state.json: not valid JSON",
         setup=damaged("student", "trainer_state.json", '{"step": 2,'), outputs=(LEDGER, MARKER)),
    Case("student-state-a-list", STUDENT, 2, "trainer_state.json: not a JSON object",
         setup=damaged("student", "trainer_state.json", "[]"), outputs=(LEDGER, MARKER)),
    Case("student-state-huge-int", STUDENT, 2, "trainer_state.json: not valid JSON",
         setup=damaged("student", "trainer_state.json", '{"step": ' + HUGE_INT + "}"), outputs=(LEDGER, MARKER)),
    Case("student-state-deep", STUDENT, 2, "trainer_state.json: not valid JSON",
         setup=damaged("student", "trainer_state.json", DEEP), outputs=(LEDGER, MARKER)),
    Case("student-state-step-string", STUDENT, 2, "trainer_state.json: 'step' is missing or has the wrong type",
         setup=damaged("student", "trainer_state.json",
                       lambda b: json.dumps(json.loads(b) | {"step": "2"})), outputs=(LEDGER, MARKER)),
    Case("student-optimizer-json-tampered", STUDENT, 2, "state.json: does not fit this model",
         setup=damaged("student", "state.json", lambda b: b.replace(b'"lr": ', b'"lr": "x", "was": ')),
         outputs=(LEDGER, MARKER)),
    Case("student-scheduler-not-json", STUDENT, 2, "scheduler.json: not valid JSON",
         setup=damaged("student", "scheduler.json", b"\xff\xfe"), outputs=(LEDGER, MARKER)),
    # --- a teacher's interrupted fine-tune ---
    Case("teacher-custom-checkpoint-pkl", TEACHER, 2, "custom_checkpoint_0.pkl: a pickle-format file",
         setup=planted("teacher", "custom_checkpoint_0.pkl"), outputs=(TEACHER_LEDGER,)),
    Case("teacher-sharded-metadata", TEACHER, 2, "sharded/.metadata: a pickle-format file",
         setup=planted("teacher", "sharded/.metadata"), outputs=(TEACHER_LEDGER,)),
    Case("teacher-truncated-state", TEACHER, 2, "state.safetensors: not a complete safetensors file",
         setup=damaged("teacher", "state.safetensors", lambda b: b[:100]), outputs=(TEACHER_LEDGER,)),
    # --- --teacher-out that is not this run's ---
    Case("teacher-out-onto-a-user-model", TEACHER, 2, "not a teacher directory dora made",
         setup=teacher_dir(model=True)),
    Case("teacher-out-non-empty", TEACHER, 2, "choose a new --teacher-out",
         setup=teacher_dir(files={"thesis.tex": "precious"})),
    Case("teacher-out-a-file", [a.replace("{teacher}", "{tmp}/file") for a in TEACHER], 2, "not a directory",
         setup=lambda tmp, **_: (tmp / "file").write_text("x") and None),
    Case("teacher-out-another-runs-teacher", TEACHER, 2, "holds a teacher dora fine-tuned for another run",
         setup=teacher_dir(record=json.dumps({"key": "0" * 64, "base": "t5", "complete": True, "steps": 3}),
                           files={"model.safetensors": "weights"})),
    Case("teacher-out-another-run-in-progress", TEACHER, 2, "holds a teacher dora fine-tuned for another run",
         setup=teacher_dir(record=json.dumps({"key": "1" * 64, "base": "t5", "complete": False}))),
    # --- damaged dora_finetune.json ---
    Case("record-not-json", TEACHER, 2, "dora_finetune.json: not valid JSON", setup=teacher_dir(record="{")),
    Case("record-a-list", TEACHER, 2, "dora_finetune.json: not a teacher record dora wrote",
         setup=teacher_dir(record="[1, 2]")),
    Case("record-key-a-number", TEACHER, 2, "dora_finetune.json: not a teacher record dora wrote",
         setup=teacher_dir(record='{"key": 12, "steps": 3}')),
    Case("record-steps-a-string", TEACHER, 2, "dora_finetune.json: not a teacher record dora wrote",
         setup=teacher_dir(record='{"key": "k", "steps": "3"}')),
    Case("record-huge-int", TEACHER, 2, "dora_finetune.json: not valid JSON",
         setup=teacher_dir(record='{"key": "k", "steps": ' + HUGE_INT + "}")),
    Case("record-deep", TEACHER, 2, "dora_finetune.json: not valid JSON", setup=teacher_dir(record=DEEP)),
    Case("record-bad-utf8", TEACHER, 2, "dora_finetune.json: not valid JSON",
         setup=lambda tmp, **f: (teacher_dir()(tmp, **f), (tmp / "teacher" / "dora_finetune.json").write_bytes(
             b'{"key": "\xff"}'))[0]),
    # --- a full disk while saving ---
    Case("student-full-disk-at-the-first-checkpoint", STUDENT, 2, "no earlier checkpoint was kept; free space",
         setup=full_disk("safetensors.torch.save_file"), outputs=("{run}",)),
    Case("student-full-disk-on-the-best-model", [*STUDENT, "--dev", "{data}/dev.jsonl", "--eval-every", "2"], 2,
         "could not write the model (No space left on device); the disk may be full",
         setup=full_disk("transformers.modeling_utils.safe_save_file"), outputs=("{run}",)),
    Case("teacher-full-disk-on-the-final-model", TEACHER, 2,
         "could not write the model (No space left on device); the disk may be full; the previous checkpoint is "
         "intact", setup=full_disk("transformers.modeling_utils.safe_save_file"), outputs=("{teacher}",)),
    Case("teacher-full-disk-on-a-resumed-checkpoint", TEACHER, 2,
         "state.safetensors: could not write the checkpoint (No space left on device); the disk may be full; the "
         "previous checkpoint is intact", setup=full_disk("safetensors.torch.save_file", _copy("teacher")),
         outputs=("{teacher}/dora-ledger.jsonl", "{teacher}/curves.csv")),
]


@pytest.fixture
def fixtures(tmp_path, t5_dir, data_dir, partial_runs, monkeypatch) -> dict[str, Any]:
    return {"t5": t5_dir, "data": data_dir, "partial_runs": partial_runs, "monkeypatch": monkeypatch,
            "run": tmp_path / "run", "teacher": tmp_path / "teacher"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_case(case, tmp_path, fixtures):
    result = run_case(case, tmp_path, **fixtures)
    assert not (tmp_path / "marker").exists(), "a planted pickle was loaded"
    if case.outputs in ((LEDGER, MARKER), (TEACHER_LEDGER,)):  # a damaged checkpoint: refused, with the way out
        assert REFUSED in result.output and "delete" in result.output


def test_enough_cases():
    assert len(CASES) >= 15 and len({c.id for c in CASES}) == len(CASES)


def test_a_planted_pickle_never_runs_and_the_resume_is_refused(tmp_path, fixtures):
    """The marker the payload would create stays absent; the planted file is not deleted either."""
    case = Case("payload", STUDENT, 2, "refusing to resume", setup=planted("student", "custom_checkpoint_0.pkl"),
                outputs=(LEDGER, MARKER))
    result = run_case(case, tmp_path, **fixtures)
    assert not (tmp_path / "marker").exists()
    assert (tmp_path / "student" / "checkpoints" / "last" / "custom_checkpoint_0.pkl").exists()
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert "custom_checkpoint_0.pkl" in line and "could run code" in line
    pickle.loads((tmp_path / "student" / "checkpoints" / "last" / "custom_checkpoint_0.pkl").read_bytes())
    assert (tmp_path / "marker").exists()  # the payload was live all along


def test_a_full_disk_on_the_teacher_leaves_no_half_written_model_and_a_rerun_finishes(tmp_path, fixtures,
                                                                                        monkeypatch):
    case = next(c for c in CASES if c.id == "teacher-full-disk-on-the-final-model")
    run_case(case, tmp_path, **fixtures)
    teacher = tmp_path / "teacher"
    assert not (teacher / "final.tmp").exists() and not (teacher / "model.safetensors").exists()
    assert json.loads((teacher / "dora_finetune.json").read_text())["complete"] is False
    assert not (teacher / "checkpoints" / "last.tmp").exists()
    monkeypatch.undo()
    values = {**fixtures, "tmp": tmp_path}
    result = CliRunner().invoke(app, [a.format(**values) for a in TEACHER])
    assert result.exit_code == 0, result.output
    assert "resuming from step 4" in result.output
    assert json.loads((teacher / "dora_finetune.json").read_text())["complete"] is True


HOLDER = textwrap.dedent('''
    import sys, time
    from dora.cache.writer import cache_lock
    lock = cache_lock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(120)
''')


def test_a_teacher_directory_in_use_by_another_run(tmp_path, fixtures):
    teacher = tmp_path / "teacher"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(teacher)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        case = Case("teacher-out-locked", TEACHER, 2, f"another dora process is fine-tuning a teacher in this "
                    f"directory (pid {holder.pid} on")
        run_case(case, tmp_path, **fixtures)
    finally:
        holder.kill()
        holder.wait()
