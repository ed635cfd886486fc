"""The shared validators (dora.pipeline.stages.config) and the CLI's error mapping (dora.cli._run), unit by unit."""

from __future__ import annotations

import errno
import json
import math
from pathlib import Path

import pytest
import typer

from dora.checks import check_number
from dora.cli import _run
from dora.errors import ConfigError, InputError
from dora.files import check_output, read_document, read_mapping, read_object, starts_like_json_object
from dora.pipeline.stages.config import Optimisation


def message_of(error: BaseException, capsys: pytest.CaptureFixture[str]) -> str:
    def fail() -> None:
        raise error

    with pytest.raises(typer.Exit) as exit_info:
        _run(fail)
    assert exit_info.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


@pytest.mark.parametrize(("error", "expected", "not_expected"), [
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "cannot reach the server", "free"),
    (OSError(errno.ENETUNREACH, "Network is unreachable"), "HF_HUB_OFFLINE", "permissions"),
    (TimeoutError("timed out"), "check the URL and the network", "free"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/cache/shard.parquet"),
     "/data/cache/shard.parquet: No space left on device; free disk space", "permissions"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/home/x"), "free disk space", "permissions"),
    (PermissionError(errno.EACCES, "Permission denied", "/etc/shadow"), "/etc/shadow: Permission denied; fix the permissions",
     "free"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/x"), "fix the permissions or choose a writable path", "free"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/data/pool"), "/data/pool: is a directory; a file was expected",
     "free"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/data/pool.jsonl/x"),
     "/data/pool.jsonl/x: Not a directory; a directory was expected", "free"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/a", None, "/b"), "/a -> /b: no such file or directory",
     "free"),
    (OSError(errno.EMFILE, "Too many open files"), "ulimit -n", "free"),
])
def test_os_errors_get_the_advice_that_fits(error, expected, not_expected, capsys):
    text = message_of(error, capsys)
    assert expected in text and not_expected not in text, text


def test_network_and_hub_errors_say_the_network(capsys):
    import httpx
    import requests
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    assert "cannot reach the server" in message_of(requests.ConnectionError("Max retries exceeded"), capsys)
    assert "cannot reach the server" in message_of(httpx.ConnectError("[Errno 111] Connection refused"), capsys)
    assert "HF_HUB_OFFLINE is set" in message_of(OfflineModeIsEnabled("offline"), capsys)
    assert "not in the local Hugging Face cache" in message_of(LocalEntryNotFoundError("no"), capsys)


def test_parser_failures_are_one_line_but_dora_bugs_keep_their_traceback(capsys):
    with pytest.raises(RecursionError) as deep:
        json.loads("[" * 200_000)
    assert "nested too deeply" in message_of(deep.value, capsys)
    with pytest.raises(ValueError) as digits:
        json.loads("7" * 5000)
    assert "integer string conversion" in message_of(digits.value, capsys)

    def bug() -> None:
        raise ValueError("a bug in dora")

    with pytest.raises(ValueError, match="a bug in dora"):
        _run(bug)
    with pytest.raises(KeyError):
        _run(lambda: {}["x"])
    cycle: list = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="Circular reference"):  # json's writer: a bug, not a file
        _run(lambda: json.dumps(cycle))


def test_run_rejects_non_finite_floats_among_the_options(capsys):
    assert "--min-seq-logprob must be a finite number, got nan" in message_of_options(
        {"min_seq_logprob": math.nan, "rows": 3}, capsys)
    assert "--kd-temperatures must be a finite number, got inf" in message_of_options(
        {"kd_temperatures": (1.0, math.inf)}, capsys)
    assert _run(lambda: 7, {"x": 1.5, "y": None}) == 7


def message_of_options(options: dict, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(typer.Exit):
        _run(lambda: None, options)
    return capsys.readouterr().err


@pytest.mark.parametrize(("value", "kwargs", "ok"), [
    (0.5, {"low": 0, "high": 1}, True),
    (0, {"low": 0, "low_open": True}, False),
    (1, {"high": 1, "high_open": True}, False),
    (math.nan, {}, False),
    (math.inf, {"low": 0}, False),
    (-math.inf, {}, False),
    (True, {}, False),
    ("1", {}, False),
    (10**400, {"low": 0}, False),  # an int past any float: no OverflowError
    (10**400, {"high": 5}, False),
    (3, {"low": 0}, True),
])
def test_check_number(value, kwargs, ok):
    if ok:
        assert check_number(value, "--x", **kwargs) == float(value)
    else:
        with pytest.raises(ConfigError, match="--x must be a finite number"):
            check_number(value, "--x", **kwargs)


@pytest.mark.parametrize("field", ["epochs", "learning_rate", "warmup_ratio", "weight_decay"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_optimisation_rejects_non_finite_floats(field, value):
    with pytest.raises(ConfigError, match=f"--{field.replace('_', '-')} must be a finite number"):
        Optimisation(**{field: value})


def test_optimisation_ranges():
    Optimisation(epochs=0.0, max_steps=3)  # epochs are ignored with max_steps
    for bad in ({"epochs": -1.0, "max_steps": 3}, {"weight_decay": 2.0}, {"seed": -1}, {"seed": 2**40},
                {"max_steps": 0}, {"learning_rate": 0.0}):
        with pytest.raises(ConfigError):
            Optimisation(**bad)


@pytest.mark.parametrize(("name", "content", "needle"), [
    ("a.json", "[" * 200_000, "nested too deeply"),
    ("a.json", "[" * 100 + "]" * 100, "nested more than 64 levels"),
    ("a.json", '{"x": ' + "9" * 5000 + "}", "Exceeds the limit"),
    ("a.json", '{"x": 1,\n "y": }', "line 2: not valid JSON (Expecting value at column 7)"),
    ("a.yaml", "x: [1,\n", "line 2: not valid YAML"),
    ("a.yaml", "x: !!python/object/apply:os.system [ls]\n", "line 1: not valid YAML"),
    ("a.yaml", "x: 2024-01-01\n", "a date value"),
    ("a.yaml", "x: !!binary aGk=\n", "a bytes value"),
    ("a.yaml", "1: one\n", "key 1 is a int, not a string"),
    ("a.yaml", "on: true\n", "key True is a bool"),
    ("a.json", b"\xff\xfe{}", "not UTF-8"),
])
def test_read_document_names_the_file_for_every_failure(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError) as info:
        read_document(path, fix="give a better file")
    text = str(info.value)
    assert text.startswith(str(path)) and needle in text and text.endswith("; give a better file"), text
    assert "\n" not in text


def test_read_object_and_read_mapping(tmp_path):
    (tmp_path / "ok.yaml").write_text("a: 1\nb: [x, .nan]\n")
    loaded = read_object(tmp_path / "ok.yaml", expected="a mapping", fix="f")
    assert loaded["a"] == 1 and math.isnan(loaded["b"][1])  # NaN parses: callers check the numbers they use
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(InputError, match="expected a mapping, got an array"):
        read_object(tmp_path / "list.json", expected="a mapping", fix="f")
    with pytest.raises(ConfigError, match="is a directory, not a file"):
        read_mapping(tmp_path, option="--prices", expected="a mapping")
    with pytest.raises(ConfigError, match="file not found; check --prices"):
        read_mapping(tmp_path / "nope.json", option="--prices", expected="a mapping")


def test_check_output_never_replaces_inputs_or_strangers(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("{}\n")
    ours = tmp_path / "scores.json"
    ours.write_text(json.dumps({"task": "t", "scores": {}}))
    check_output(tmp_path / "new.json", option="--out", inputs=[data])
    check_output(ours, option="--out", inputs=[data], ours=lambda p: starts_like_json_object(p, ["task", "scores"]))
    with pytest.raises(ConfigError, match="would overwrite the input file"):
        check_output(data, option="--out", inputs=[data], overwrite=True)
    with pytest.raises(ConfigError, match="not a file dora wrote"):
        check_output(data, option="--out", ours=lambda p: starts_like_json_object(p, ["task"]))
    check_output(data, option="--out", overwrite=True)
    with pytest.raises(ConfigError, match="is a directory"):
        check_output(tmp_path, option="--out")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        check_output(data / "x" / "y.json", option="--out")
    (tmp_path / "dangling").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(ConfigError, match="not a file dora wrote"):  # a link is never taken for ours
        check_output(tmp_path / "dangling", option="--out", ours=lambda p: True)


def test_starts_like_json_object(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "1", "prediction": "a"}\nnot json\n')
    assert starts_like_json_object(path, ["id", "prediction"], lines=True)
    assert not starts_like_json_object(path, ["id", "prediction"])  # the whole file is not one object
    path.write_text("[" * 200_000)
    assert not starts_like_json_object(path, ["id"])
    assert not starts_like_json_object(Path(tmp_path / "missing"), ["id"])
