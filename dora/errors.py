"""dora's exceptions. Library code raises these; ``dora.cli`` turns them into one-line messages.

Every message says what is wrong, where (file and row when there is one), and what to do.
"""

from __future__ import annotations


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type when it has none), for one-line errors
    that quote what a library said."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__


class DoraError(Exception):
    """Base class: a problem the user can fix. The CLI prints ``error: <message>`` and exits 2."""

    exit_code = 2


class ConfigError(DoraError):
    """An option value that cannot work (bad range, missing file, conflicting options)."""


class InputError(DoraError):
    """A data file that cannot be read as examples (bad JSON, missing field, empty, ...)."""

    def __init__(self, path: object, message: str, *, line: int | None = None, fix: str = "") -> None:
        where = f"{path}" + (f", line {line}" if line is not None else "")
        text = f"{where}: {message}"
        if fix:
            text += f"; {fix}"
        super().__init__(text)
        self.path, self.line, self.fix = path, line, fix


class CacheError(DoraError):
    """A label cache that is missing, incomplete, corrupt, or does not fit the run."""


class ModelError(DoraError):
    """A model or tokenizer that cannot be loaded or does not fit the stage."""


class TrainingError(DoraError):
    """Training diverged (a non-finite loss); the last checkpoint is kept."""


class Interrupted(DoraError):
    """Ctrl-C or SIGTERM: the message says exactly what was kept and how to continue (exit 130)."""

    exit_code = 130


class CheckpointError(TrainingError):
    """A checkpoint that cannot be resumed safely (foreign files, corrupt, another model) or written."""
