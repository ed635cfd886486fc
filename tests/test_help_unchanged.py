"""Every command's options stay as they were before the house's second step (issue 27): the same
names, defaults, flags and required options, read from the click commands that ``--help`` prints.
``tests/data/cli_options.json`` was written from the code before the move; a change to the CLI's
surface is a deliberate edit of that file, never a side effect of moving code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from dora.cli import app

SNAPSHOT = Path(__file__).parent / "data" / "cli_options.json"


def _commands(group: Any, prefix: str = "") -> dict[str, Any]:
    found = {}
    for name, command in sorted(group.commands.items()):
        path = f"{prefix}{name}"
        if hasattr(command, "commands"):
            found.update(_commands(command, path + " "))
        else:
            found[path] = command
    return found


def _default(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_default(v) for v in value]
    return str(value)


def surface() -> dict[str, list[dict[str, Any]]]:
    """Each command's parameters as ``--help`` shows them: names, default, kind."""
    out = {}
    for path, command in _commands(typer.main.get_command(app)).items():
        params = []
        for p in command.params:
            params.append({"name": p.name, "kind": p.param_type_name, "opts": sorted([*p.opts, *p.secondary_opts]),
                           "default": _default(p.default), "required": bool(p.required),
                           "flag": bool(getattr(p, "is_flag", False)), "multiple": bool(getattr(p, "multiple", False)),
                           "hidden": bool(getattr(p, "hidden", False))})
        out[path] = sorted(params, key=lambda x: x["name"])
    return out


def test_every_command_has_the_options_it_had():
    before = json.loads(SNAPSHOT.read_text())
    now = surface()
    assert sorted(now) == sorted(before)
    for command in before:
        assert now[command] == before[command], command


@pytest.mark.parametrize("command", sorted(json.loads(SNAPSHOT.read_text())))
def test_help_lists_every_visible_option(command):
    """The help text itself (not only the click objects) names every option that is not hidden."""
    result = CliRunner().invoke(app, [*command.split(), "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for p in json.loads(SNAPSHOT.read_text())[command]:
        if p["kind"] == "option" and not p["hidden"]:
            assert any(o in result.output for o in p["opts"]), (command, p["opts"])


if __name__ == "__main__":  # rewrite the snapshot: python tests/test_help_unchanged.py
    SNAPSHOT.write_text(json.dumps(surface(), indent=1, sort_keys=True) + "\n")
