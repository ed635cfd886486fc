"""Rich progress bars and console output shared by the stages (stderr, so stdout stays data)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def progress_bar(*, enabled: bool = True) -> Progress:
    """A progress display for long loops: description, bar, done/total, elapsed, remaining
    (``enabled=False`` on all but the first process of a multi-process run)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
        disable=not enabled,
    )


def warn(message: str) -> None:
    """A one-line warning on stderr; never wrapped, so a log line can be searched for whole."""
    console.print(f"[yellow]warning:[/] {message}", soft_wrap=True, highlight=False)


def note(message: str) -> None:
    """A one-line note on stderr (something the user may want to act on, not a problem)."""
    console.print(f"[yellow]note:[/] {message}", soft_wrap=True, highlight=False)


def quiet_libraries() -> None:
    """Silence library progress bars and info logs; dora draws its own. Every command that loads a
    model calls this first, and so do the benchmarks."""
    import logging
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
