"""Progress on stderr (so stdout stays data): rich bars on a terminal, plain lines in a log.

Piped, redirected, ``nohup`` or CI output is not a terminal, and a bar there shows nothing
until it ends: a 16-minute fine-tune looks hung. So off a terminal every progress display
prints one plain line each time it crosses a tenth of its total (after its first two seconds:
a short evaluation prints only its end) and at least every 30 seconds (``DORA_PROGRESS_SECONDS``
sets the interval)::

    train student: step 40/76 (53%), 3.1 step/s, ETA 12s, loss 0.4321
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Any

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

PROGRESS_SECONDS = "DORA_PROGRESS_SECONDS"
"""Environment variable: seconds between plain progress lines when stderr is not a terminal (default 30)."""
QUIET_START_SECONDS = 2.0
"""A display prints its tenths only once it has run this long (or the interval, if shorter): a
0.5 s evaluation on dev logs its final count, not ten lines."""


def progress_bar(*, enabled: bool = True) -> Any:
    """A progress display for long loops: ``add_task(description, total=, completed=, info=,
    unit=)``, ``advance(task, n)``, ``update(task, completed=, advance=, info=)``.

    On a terminal: description, bar, done/total, elapsed, remaining. Elsewhere: plain lines
    (:class:`LineProgress`). ``enabled=False`` on all but the first process of a multi-process run.
    """
    if not on_terminal():
        return LineProgress(enabled=enabled)
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


def on_terminal() -> bool:
    """Whether stderr is a live terminal: a real TTY (``FORCE_COLOR``, common in CI, makes rich call
    a log a terminal; a bar there is escape codes) that rich treats as interactive (``TTY_INTERACTIVE=0``
    turns that off)."""
    try:
        tty = console.file.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        tty = False
    return tty and console.is_interactive


class LineProgress:
    """Progress as plain log lines: at each tenth of the total (once the display has run
    ``QUIET_START_SECONDS``), every ``seconds`` (default ``$DORA_PROGRESS_SECONDS`` or 30), and
    once at the end if the last line was not there. The interval holds while nothing advances too
    (a step, a shard or an engine start longer than it): a timer thread prints the line then, so
    a slow run is told from a hung one by its count.

    The rate and ETA count only this process's work (a resumed run starts its clock at the step
    it resumed from). Same calls as rich's ``Progress``, so a stage does not care which it has."""

    def __init__(self, *, enabled: bool = True, seconds: float | None = None) -> None:
        self.enabled = enabled
        self.seconds = _interval() if seconds is None else seconds
        self.tasks: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # the timer thread prints too
        self._closed = threading.Event()
        self._timer: threading.Thread | None = None

    def __enter__(self) -> LineProgress:
        if self.enabled and self.seconds > 0:
            self._timer = threading.Thread(target=self._tick, name="dora-progress", daemon=True)
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        if self._timer is not None:
            self._timer.join()
        if exc[0] is None:  # a clean end: the final count, unless already printed
            for task in self.tasks:
                if task["printed"] != task["completed"]:
                    self._print(task)

    def _tick(self) -> None:
        """Every few seconds: print each unfinished task whose last line is an interval old."""
        while not self._closed.wait(min(max(self.seconds / 6, 0.05), 5.0)):
            with self._lock:
                now = time.monotonic()
                for t in self.tasks:
                    unfinished = t["total"] is None or t["completed"] < t["total"]
                    if unfinished and now - t["last"] >= self.seconds:
                        self._print(t)

    def add_task(self, description: str, *, total: float | None = None, completed: float = 0, info: str = "",
                 unit: str = "", **_: Any) -> int:
        now = time.monotonic()
        with self._lock:
            self.tasks.append({"description": description, "total": total, "completed": completed, "info": info,
                               "unit": unit, "start": now, "start_completed": completed, "last": now,
                               "printed": completed, "tenth": self._tenth(total, completed)})
            return len(self.tasks) - 1

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def update(self, task: int, *, completed: float | None = None, advance: float | None = None,
               info: str | None = None, **_: Any) -> None:
        with self._lock:
            self._update(self.tasks[task], completed, advance, info)

    def _update(self, t: dict[str, Any], completed: float | None, advance: float | None, info: str | None) -> None:
        if completed is not None:
            t["completed"] = completed
        if advance:
            t["completed"] += advance
        if info is not None:
            t["info"] = info
        tenth, now = self._tenth(t["total"], t["completed"]), time.monotonic()
        settled = now - t["start"] >= min(QUIET_START_SECONDS, self.seconds)
        if (tenth > t["tenth"] and settled) or now - t["last"] >= self.seconds:
            t["tenth"] = tenth
            self._print(t)

    @staticmethod
    def _tenth(total: float | None, completed: float) -> int:
        return int(10 * completed // total) if total else 0

    def _print(self, t: dict[str, Any]) -> None:
        t["last"], t["printed"] = time.monotonic(), t["completed"]
        if self.enabled:
            console.print(line(t["description"], t["completed"], t["total"], t["unit"],
                               t["completed"] - t["start_completed"], t["last"] - t["start"], t["info"]),
                          soft_wrap=True, highlight=False, markup=False)


def line(description: str, completed: float, total: float | None, unit: str, done_here: float, seconds: float,
         info: str = "") -> str:
    """``train student: step 40/76 (53%), 3.1 step/s, ETA 12s, loss 0.4321``: done/total, the
    rate since this process started, the time left at that rate, and the stage's own note."""
    name = f"{unit} " if unit else ""
    parts = [f"{description}: {name}{completed:,.0f}" + (f"/{total:,.0f} ({completed / total:.0%})" if total else "")]
    if seconds > 0 and done_here > 0:
        rate = done_here / seconds
        parts.append(f"{rate:,.3g} {unit or 'it'}/s")
        if total:
            parts.append(f"ETA {_duration(max(total - completed, 0) / rate)}")
    if info:
        parts.append(info)
    return ", ".join(parts)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _interval() -> float:
    raw = os.environ.get(PROGRESS_SECONDS, "")
    try:
        value = float(raw) if raw else 30.0
    except ValueError:
        value = 30.0  # a bad value must not stop a training run; the default is what the docs promise
    return value if math.isfinite(value) and value >= 0 else 30.0


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
