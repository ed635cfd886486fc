"""The table-driven harness of the adversarial suites (tests/test_adversarial_*.py).

A ``Case`` is one hostile input: a setup that builds it under a fresh directory, the CLI
arguments, the exit code and a fragment of the one-line message expected, and the paths the
command is allowed to change. ``run_case`` snapshots every file under the case's directory
(sha256 of contents, symlink targets, directory listing) before and after the command and fails
when anything outside the allowed outputs changed, when the command raised instead of exiting
(a traceback), or when the error took more than one line.

    CASES = [
        Case("push-onto-another-cache", setup=two_caches, args=["cache", "push", "{a}", "{b}"],
             code=2, message="holds another cache"),
    ]

    @pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
    def test_case(case, tmp_path, cache_dir):
        run_case(case, tmp_path, cache=cache_dir)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from dora.cli import app

Setup = Callable[..., dict[str, Any] | None]


@dataclass(frozen=True)
class Case:
    """One hostile input and what dora must do with it.

    id: the test id. setup(tmp, **fixtures) builds the input under ``tmp`` and returns
    placeholders for ``args`` (``{name}``; ``{tmp}`` and the fixtures are always there).
    code: the exit code expected (2: a user error; 1: verify found problems; 0: handled).
    message: a fragment of the output, case-insensitive ("" to check nothing).
    outputs: placeholders/paths (relative to tmp) the command may create or change.
    usage: code 2 comes from click's own parsing (an option value out of its declared range):
    click's usage box ("Usage:" and "Invalid value for ...") instead of one ``error:`` line.
    """

    id: str
    args: list[str]
    code: int
    message: str
    setup: Setup | None = None
    outputs: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    input: str | None = None
    usage: bool = False


def snapshot(root: Path, skip: set[Path]) -> dict[str, str]:
    """Every entry under ``root`` except ``skip`` (and what lies below them): sha256, link or dir."""
    state: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        if any(here == s or s in here.parents for s in skip):
            dirnames[:] = []
            continue
        for name in [*dirnames, *filenames]:
            path = here / name
            if path in skip:
                continue
            rel = str(path.relative_to(root))
            if path.is_symlink():
                state[rel] = "link -> " + os.readlink(path)
            elif path.is_dir():
                state[rel] = "dir"
            else:
                state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def run_case(case: Case, tmp: Path, **fixtures: Any) -> Any:
    """Build, snapshot, run, and check one case; returns the CliRunner result."""
    values: dict[str, Any] = {"tmp": tmp, **fixtures}
    if case.setup is not None:
        values.update(case.setup(tmp, **fixtures) or {})
    args = [a.format(**values) for a in case.args]
    outputs = {(tmp / o.format(**values)).absolute() if not Path(o.format(**values)).is_absolute()
               else Path(o.format(**values)) for o in case.outputs}
    before = snapshot(tmp, outputs)
    old_env = {k: os.environ.get(k) for k in case.env}
    os.environ.update(case.env)
    try:
        result = CliRunner().invoke(app, args, input=case.input)
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    shown = f"{case.id}: dora {' '.join(args)}\n{result.output}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        trace = "".join(traceback.format_exception(result.exception))
        raise AssertionError(f"{shown}\nraised instead of a one-line error:\n{trace}")
    assert result.exit_code == case.code, shown
    assert case.message.lower() in " ".join(result.output.split()).lower(), shown
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    if case.usage:
        assert case.code == 2 and "Usage:" in result.output and "Invalid value" in result.output, shown
        assert not errors, shown
    elif case.code == 2:
        assert len(errors) == 1, shown
    after = snapshot(tmp, outputs)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"{shown}\nchanged outside the allowed outputs: {changed}"
    return result
