"""What each stage cost: an append-only ledger with one entry per invocation.

A stage that is interrupted and rerun (kill -9, a pre-empted node, Ctrl-C) is paid for every
time it runs, but its work is done once. So every invocation of a stage appends its own entry
to the stage's ledger (``dora-ledger.jsonl`` in the directory the stage writes: the fine-tuned
teacher, the cache, the student run) and readers sum the entries:

* ``wall_seconds`` and ``device_hours``: the time this invocation ran, on the devices it used
  (processes x devices per process), whether or not its work survived;
* ``examples``, ``tokens``, ``steps``: the work this invocation added to the result (training
  steps up to its last checkpoint, shards it listed), so work redone after a crash is counted
  once;
* a rerun with nothing left to do adds an entry of zero work and zero time: totals do not move.

The entry of a running invocation is re-appended as it goes (every 2 s at first, then every
``elapsed / 20`` s, at most every minute), so a process killed without warning loses at most
that much of its record. The last line of each run id wins; a new invocation compacts the file.

>>> entries = [{"run_id": "a", "device": "cpu", "device_count": 1, "wall_seconds": 3600.0, "device_hours": 1.0,
...             "examples": 10, "tokens": 100, "steps": 2},
...            {"run_id": "b", "device": "cpu", "device_count": 2, "wall_seconds": 1800.0, "device_hours": 1.0,
...             "examples": 5, "tokens": 50, "steps": 1}]
>>> s = summarise("labeling", entries)
>>> s["device_hours"], s["examples"], s["invocations"]
(2.0, 15, 2)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dora.errors import InputError, Interrupted

LEDGER = "dora-ledger.jsonl"
_COUNTS = ("examples", "tokens", "steps")


@dataclass(frozen=True, kw_only=True)
class Devices:
    """The devices an invocation computes on: ``processes`` x ``per_process`` of kind ``name``."""

    name: str
    processes: int = 1
    per_process: int = 1

    @property
    def count(self) -> int:
        return self.processes * self.per_process

    @classmethod
    def here(cls, *, processes: int = 1, per_process: int = 1) -> Devices:
        """This process's device kind (the GPU it uses, else the CPU) for a job of ``processes``."""
        import torch

        if torch.cuda.is_available():
            return cls(name=torch.cuda.get_device_name(torch.cuda.current_device()), processes=processes,
                       per_process=per_process)
        cpu = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        return cls(name=cpu, processes=processes, per_process=1)


def _entry_ok(entry: Any) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("run_id"), str):
        return False
    numbers = ("wall_seconds", "device_hours", "device_count", "t0", *_COUNTS)
    return all(isinstance(entry.get(k, 0), (int, float)) and not isinstance(entry.get(k, 0), bool)
               and math.isfinite(entry.get(k, 0)) and entry.get(k, 0) >= 0 for k in numbers)


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """The ledger's entries, the last record of each run id, in the order the runs started.

    A torn last line (a crash while appending) is ignored; any other line that is not an entry
    is an error naming the line.
    """
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")
    latest: dict[str, dict[str, Any]] = {}
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):  # also a 5,000-digit number or deep nesting
            if number == len(lines):  # no newline after it: the append was cut short
                continue
            raise InputError(path, "not a ledger entry (invalid JSON)", line=number,
                             fix="dora writes this file; restore it, or delete the line to drop that record") from None
        if not _entry_ok(entry):
            raise InputError(path, "not a ledger entry (needs run_id and non-negative numbers)", line=number,
                             fix="dora writes this file; restore it, or delete the line to drop that record")
        latest.pop(entry["run_id"], None)  # keep insertion order of the newest record
        latest[entry["run_id"]] = entry
    return sorted(latest.values(), key=lambda e: e.get("t0", 0))


def summarise(stage: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over a stage's entries, in the shape every cost record has, with the entries kept.

    ``device`` and ``device_count`` are those of the latest invocation; prices are applied
    entry by entry (``dora.pipeline.costs.pricing``), so a run resumed on another device is priced right.
    """
    last = entries[-1] if entries else {}
    return {
        "stage": stage, "device": last.get("device", "none"), "device_count": last.get("device_count", 0),
        "wall_seconds": round(sum(e.get("wall_seconds", 0.0) for e in entries), 3),
        "device_hours": round(sum(e.get("device_hours", 0.0) for e in entries), 6),
        **{k: int(sum(e.get(k, 0) for e in entries)) for k in _COUNTS},
        "invocations": len(entries), "entries": entries,
    }


def merge_entries(*groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries of several copies of one ledger (a manifest's and the local file's), the newest
    record of each run id winning; in start order."""
    latest: dict[str, dict[str, Any]] = {}
    for group in groups:
        for entry in group:
            old = latest.get(entry["run_id"])
            if old is None or entry.get("wall_seconds", 0) >= old.get("wall_seconds", 0):
                latest[entry["run_id"]] = entry
    return sorted(latest.values(), key=lambda e: e.get("t0", 0))


class Ledger:
    """The ledger of one stage in ``directory``. ``with ledger.invocation(devices) as run: run.progress(...)``."""

    def __init__(self, directory: Path, stage: str) -> None:
        self.path = Path(directory) / LEDGER
        self.stage = stage

    def entries(self) -> list[dict[str, Any]]:
        return [e for e in read_ledger(self.path) if e.get("stage") == self.stage]

    def summary(self, extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return summarise(self.stage, merge_entries(extra or [], self.entries()))

    @contextlib.contextmanager
    def invocation(self, devices: Devices, *, note: str = "") -> Iterator[Invocation]:
        """Record this invocation from now until the block ends (failed or not)."""
        run = Invocation(self, devices, note=note)
        status = "failed"
        try:
            yield run
            status = "done"
        except (KeyboardInterrupt, Interrupted):
            status = "interrupted"
            raise
        finally:
            run.close(status)

    def record_noop(self, devices: Devices, note: str) -> dict[str, Any]:
        """An invocation that found nothing to do: zero time, zero work."""
        run = Invocation(self, devices, note=note, heartbeat=False)
        run.close("nothing to do", seconds=0.0)
        return run.entry

    def reconcile(self, kept: dict[str, int], *, current: str, extra: list[dict[str, Any]] | None = None) -> None:
        """Make the recorded work of earlier invocations equal the work a resumed run finds kept.

        A crash can fall between saving work (a checkpoint, a listed shard) and recording it, or
        between recording and saving; the resumed run knows what was kept and corrects the most
        recent earlier invocation's counts by the difference (a new record of its run id).
        """
        earlier = [e for e in merge_entries(extra or [], self.entries()) if e["run_id"] != current]
        if not earlier:
            return
        recorded = {k: sum(int(e.get(k, 0)) for e in earlier) for k in kept}
        diff = {k: int(kept[k]) - recorded[k] for k in kept}
        if not any(diff.values()):
            return
        fixed = dict(earlier[-1])
        for k, d in diff.items():
            fixed[k] = max(0, int(fixed.get(k, 0)) + d)
        fixed["note"] = (fixed.get("note", "") + " counts corrected on resume: a crash came between saving its "
                         "work and recording it").strip()
        self._append(fixed)

    def _append(self, entry: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")

    def compact(self) -> None:
        """Rewrite the file with one line per run id (called with the directory's lock held)."""
        entries = read_ledger(self.path)
        if not entries:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries), encoding="utf-8")
        os.replace(tmp, self.path)


class Invocation:
    """One run of a stage: its time (a heartbeat re-appends the entry) and the work it added."""

    def __init__(self, ledger: Ledger, devices: Devices, *, note: str = "", heartbeat: bool = True) -> None:
        self.ledger, self.devices = ledger, devices
        self._start = time.perf_counter()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.counts = dict.fromkeys(_COUNTS, 0)
        self.entry: dict[str, Any] = {
            "run_id": uuid.uuid4().hex[:12], "stage": ledger.stage,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "t0": round(time.time(), 3),
            "host": socket.gethostname(), "pid": os.getpid(), "device": devices.name,
            "processes": devices.processes, "devices_per_process": devices.per_process,
            "device_count": devices.count, "status": "running", "note": note,
        }
        self._thread = None
        if heartbeat:
            self._write()
            self._thread = threading.Thread(target=self._beat, name="dora-ledger", daemon=True)
            self._thread.start()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._start

    @property
    def run_id(self) -> str:
        return self.entry["run_id"]

    def set_devices(self, devices: Devices) -> None:
        """The devices once known (an engine says how many it spread over when it has started)."""
        with self._lock:
            self.devices = devices
            self.entry.update(device=devices.name, processes=devices.processes,
                              devices_per_process=devices.per_process, device_count=devices.count)
        self._write()

    def progress(self, **counts: int) -> None:
        """Set the work this invocation has added so far (cumulative within the invocation)."""
        unknown = set(counts) - set(_COUNTS)
        if unknown:
            raise TypeError(f"unknown ledger counts {sorted(unknown)}")
        with self._lock:
            self.counts.update({k: int(v) for k, v in counts.items()})
        self._write()

    def _beat(self) -> None:
        while not self._closed.wait(min(60.0, max(2.0, self.seconds / 20))):
            self._write()

    def _write(self, status: str | None = None, seconds: float | None = None, *, strict: bool = False) -> None:
        with self._lock:
            wall = self.seconds if seconds is None else seconds
            self.entry.update(self.counts, wall_seconds=round(wall, 3),
                              device_hours=round(wall * self.devices.count / 3600, 6))
            if status is not None:
                self.entry["status"] = status
            try:
                self.ledger._append(dict(self.entry))
            except OSError:
                if strict:
                    raise
                # A full disk must not kill the work the record is about; the final write raises.

    def close(self, status: str, seconds: float | None = None) -> None:
        """Write the final record (once: a second close keeps the first status)."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._thread is not None:
            self._thread.join()
        self._write(status, seconds, strict=status in ("done", "nothing to do"))


def one_off(stage: str, devices: Devices, seconds: float, **counts: int) -> dict[str, Any]:
    """The cost record of a single invocation kept with its result instead of in a ledger (``dora evaluate``)."""
    entry = {"run_id": uuid.uuid4().hex[:12], "stage": stage, "device": devices.name, "processes": devices.processes,
             "devices_per_process": devices.per_process, "device_count": devices.count,
             "wall_seconds": round(seconds, 3), "device_hours": round(seconds * devices.count / 3600, 6),
             **dict.fromkeys(_COUNTS, 0), **counts}
    return summarise(stage, [entry])
