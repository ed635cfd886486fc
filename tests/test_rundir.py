"""The run-directory primitive (``dora.rundir``) and the general lock (``dora.lock``): claim, resume,
refuse, clean up after a failure, hostile records, a directory held by another process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dora.errors import ConfigError, InputError
from dora.lock import LOCK_FILE, DirectoryLock, Guarded
from dora.rundir import METRICS, RUN_RECORD, RunDir, RunWords, read_run

GUARDED = Guarded(directory="the run directory", create_fix="choose a writable --out", busy="is using this run directory",
                  wait="wait for it to finish, or choose another --out", mine="this run holds it already")
WORDS = RunWords(not_dir="{dir}: not a directory", foreign="{dir}: someone else's ({name} is there)",
                 other="{dir}: holds {state} run with other settings", damaged="choose a new --out")
MARKER = ".marker.json"


def run_dir(path: Path, identity: str = "a", **kwargs) -> RunDir:
    return RunDir(path, identity=identity, markers=(MARKER, RUN_RECORD), field="identity", words=WORDS,
                  guarded=GUARDED, **kwargs)


def test_a_new_directory_is_claimed_marked_and_recorded(tmp_path):
    out = tmp_path / "new" / "run"
    run = run_dir(out)
    assert run.recorded() is None and not out.exists()  # read-only
    assert run.claim() is None and (out / LOCK_FILE).exists() and run.fresh
    run.write_marker({"identity": "a"})
    run.write_metrics({"score": 1.0})
    run.write_record({"identity": "a", "cost": {}})
    run.release(failed=False)
    assert not (out / LOCK_FILE).exists()
    assert sorted(p.name for p in out.iterdir()) == [MARKER, METRICS, RUN_RECORD]
    assert read_run(out, fix="rerun")[1] == {"score": 1.0}
    assert not list(out.glob(".*.tmp-*"))  # written atomically: no temporaries left


def test_an_earlier_run_of_the_same_identity_is_resumed_and_another_refused(tmp_path):
    out = tmp_path / "run"
    first = run_dir(out)
    first.claim()
    first.write_marker({"identity": "a", "step": 2})
    first.release(failed=True)  # new when claimed, nothing worth keeping: all of it goes
    assert not out.exists()

    first = run_dir(out)
    first.claim()
    first.write_marker({"identity": "a", "step": 2})
    (out / "checkpoint").write_text("worth resuming")
    first.release(failed=True, keep=lambda d: (d / "checkpoint").exists())
    assert (out / "checkpoint").exists()

    again = run_dir(out)
    assert again.claim() == {"identity": "a", "step": 2} and not again.fresh
    again.release(failed=True)  # not new or empty when claimed: nothing of it is removed
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "checkpoint"]

    with pytest.raises(ConfigError, match=r"holds an unfinished run with other settings$"):
        run_dir(out, identity="b").claim()
    (out / RUN_RECORD).write_text(json.dumps({"identity": "a"}))
    with pytest.raises(ConfigError, match=r"holds a finished run with other settings$"):
        run_dir(out, identity="b").recorded()
    assert not (out / LOCK_FILE).exists()  # a refused claim unlocks


def test_the_run_record_names_the_run_when_the_marker_is_gone(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / RUN_RECORD).write_text(json.dumps({"identity": "a", "steps": 4}))
    assert run_dir(out).recorded() == {"identity": "a", "steps": 4}


def test_a_directory_dora_did_not_make_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    with pytest.raises(ConfigError, match=r"someone else's \(notes.txt is there\)"):
        run_dir(out).claim()
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    file = tmp_path / "a-file"
    file.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        run_dir(file).claim()
    assert file.read_text() == "x"
    # An empty directory is taken, unless the stage wants only its own (``adopt_empty=False``)...
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="someone else's"):
        run_dir(empty, adopt_empty=False).claim()
    # ...and after a failure it is emptied of what the run wrote, never removed.
    run = run_dir(empty)
    run.claim()
    run.write_marker({"identity": "a"})
    (empty / "partial").mkdir()
    run.release(failed=True)
    assert empty.is_dir() and list(empty.iterdir()) == []


def test_a_failure_removes_only_the_directories_this_run_created(tmp_path):
    (tmp_path / "kept").mkdir()
    out = tmp_path / "kept" / "new" / "deeper"
    run = run_dir(out)
    run.claim()
    run.write_marker({"identity": "a"})
    run.release(failed=True)
    assert not (tmp_path / "kept" / "new").exists() and (tmp_path / "kept").is_dir()


@pytest.mark.parametrize("content", ["[" * 100_000, "not json", '{"identity": ' + "7" * 5000 + "}",
                                     b"\xff\xfe", "x" * (1 << 21)])
def test_a_hostile_marker_is_one_line_and_nothing_is_touched(tmp_path, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / MARKER).write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError) as e:
        run_dir(out).claim()
    message = str(e.value)
    assert message.startswith(f"{out / MARKER}: ") and message.endswith("; choose a new --out") and "\n" not in message
    assert sorted(p.name for p in out.iterdir()) == [MARKER]


def test_a_marker_failing_the_stage_check_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"identity": "a", "complete": "yes"}))
    run = run_dir(out, valid=lambda r: isinstance(r.get("complete", True), bool), invalid="not a record dora wrote")
    with pytest.raises(ConfigError, match=rf"^{out / MARKER}: not a record dora wrote; choose a new --out$"):
        run.recorded()


@pytest.mark.parametrize("content,message", [("[1, 2]", "expected a run record"), ("{", "not valid JSON"),
                                             ("[" * 100_000, "nested"), ('{"a": ' + "9" * 5000 + "}", "not valid")])
def test_a_hostile_run_record_is_one_error_naming_it(tmp_path, content, message):
    (tmp_path / RUN_RECORD).write_text(content)
    with pytest.raises(InputError) as e:
        read_run(tmp_path, fix="rerun the stage")
    assert str(e.value).startswith(f"{tmp_path / RUN_RECORD}") and message in str(e.value)
    assert str(e.value).endswith("; rerun the stage") and "\n" not in str(e.value)


def test_another_runs_marker_may_be_accepted_or_cleared_by_the_stage(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"identity": "old", "complete": True}))
    accepted = run_dir(out, other=lambda record: record if record["identity"] == "old" else None)
    assert accepted.recorded() == {"identity": "old", "complete": True}

    def clear(record):
        (out / MARKER).unlink()

    cleared = run_dir(out, other=clear)
    assert cleared.claim() is None and not (out / MARKER).exists()
    cleared.release(failed=False)


HOLDER = textwrap.dedent('''
    import sys, time
    from dora.lock import DirectoryLock, Guarded
    DirectoryLock(sys.argv[1], Guarded(directory="d", create_fix="f", busy="b", wait="w")).acquire()
    print("held", flush=True)
    time.sleep(120)
''')


def test_a_directory_locked_by_another_process_is_refused_with_its_holder(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError) as e:
            run_dir(out).claim()
        assert str(e.value).startswith(f"{out}: another dora process is using this run directory (pid {holder.pid} on ")
        assert str(e.value).endswith("; wait for it to finish, or choose another --out")
        assert (out / LOCK_FILE).exists()  # the holder's lock (and directory) are left alone
    finally:
        holder.kill()
        holder.wait()
    run = run_dir(out)  # the holder died: the lock went with it
    assert run.claim() is None
    run.release(failed=False)
    assert not (out / LOCK_FILE).exists()


def test_the_lock_says_when_this_very_process_holds_it(tmp_path):
    with DirectoryLock(tmp_path, GUARDED):
        with pytest.raises(ConfigError, match=rf"^{tmp_path}: this run holds it already$"):
            DirectoryLock(tmp_path, GUARDED).acquire()
    plain = Guarded(directory="the cache directory", create_fix="choose a writable --out", busy="is writing this cache",
                    wait="wait")
    with DirectoryLock(tmp_path, plain):
        with pytest.raises(ConfigError, match="another dora process is writing this cache"):
            DirectoryLock(tmp_path, plain).acquire()
    blocked = tmp_path / "file"
    blocked.write_text("x")
    with pytest.raises(ConfigError, match=r"cannot create the cache directory or its lock .*; choose a writable --out"):
        DirectoryLock(blocked / "sub", plain).acquire()


def test_a_stage_may_name_an_unparsable_marker_its_own_way(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / MARKER).write_text("[" * 100_000)
    words = RunWords(not_dir="", foreign="", other="", damaged="delete it", unparsable="not valid JSON")
    run = RunDir(out, identity="a", markers=(MARKER,), field="identity", words=words, guarded=GUARDED)
    with pytest.raises(ConfigError, match=rf"^{out / MARKER}: not valid JSON; delete it$"):
        run.recorded()


@pytest.mark.parametrize("plant", ["symlink", "hardlink"])
def test_a_planted_lock_file_never_truncates_what_it_points_at(tmp_path, plant):
    """A directory dora did not write may hold a `.dora-lock` that is a symlink or a hard link to
    someone's file: the lock refuses it in one line, and the file keeps every byte."""
    victim = tmp_path / "victim.txt"
    victim.write_text("a user's notes")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).symlink_to(victim) if plant == "symlink" else (out / LOCK_FILE).hardlink_to(victim)
    guarded = Guarded(directory="the run directory", create_fix="choose a writable --out",
                      busy="is using this run directory", wait="wait for it to finish")
    with pytest.raises(ConfigError, match="symlink where dora keeps its lock" if plant == "symlink" else "hard link"):
        DirectoryLock(out, guarded).acquire()
    assert victim.read_text() == "a user's notes"
