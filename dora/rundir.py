"""Run directories: a directory one dora run writes into, and whose it is.

dora writes a run's files only into a directory that is new, empty, or its own for this very run:
a small JSON record written first (the *marker*) names the run's identity. ``RunDir`` holds the
rules every stage that owns a directory shares (the fine-tuned teacher, a student run, predict's
chunks):

- ``recorded()``: read-only, before any work: the marker of this run (None for a new or empty
  directory). A file, a directory holding files but no marker, or a marker naming another run is
  refused with one line (``RunWords``); a damaged marker too.
- ``claim()``: create the directory, lock it (``dora.lock``, one run at a time) and read the
  marker again under the lock: another run may have been first.
- ``write_marker``, ``write_record`` (``run.json``), ``write_metrics`` (``metrics.json``):
  written atomically; the module's ``read_run`` reads a finished run's records back and checks what it
  reads (a run directory may come from anyone).
- ``release(failed=...)``: unlock; after a failure, when the directory was new or empty when this
  run claimed it and holds nothing worth keeping, remove what this run wrote there, then the
  directories it created as far as they are empty. Never anything else.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dora.errors import CacheError, ConfigError, InputError
from dora.files import parse_json, read_object, write_atomic
from dora.lock import LOCK_FILE, DirectoryLock, Guarded

RUN_RECORD = "run.json"
"""What a finished run did, on what, and what it cost; written last: a run with it is finished."""
METRICS = "metrics.json"
"""A finished run's scores."""
MAX_MARKER_BYTES = 1 << 20  # a marker is a few hundred bytes; a planted giant is not read whole


@dataclass(frozen=True, kw_only=True)
class RunWords:
    """How a stage's refusals name its directory. Each is a ``str.format`` template of ``dir`` (the
    directory); ``foreign`` also of ``name`` (one of the files found), ``other`` of ``state`` ("a
    finished" or "an unfinished": whether ``run.json`` is there)."""

    not_dir: str
    """The path is a file (or another non-directory)."""
    foreign: str
    """A directory with files and no marker: someone else's."""
    other: str
    """A marker naming another run."""
    damaged: str
    """The fix ending the message of a marker that cannot be read (its own text says why)."""
    unparsable: str | None = None
    """What a marker that does not parse is called instead of the parser's reason (e.g. "not valid JSON")."""


def first_missing(path: Path) -> Path | None:
    """The highest of ``path`` and its parents that does not exist yet (what mkdir will create)."""
    missing = None
    for p in (path, *path.absolute().parents):
        if p.exists() or p.is_symlink():
            break
        missing = p
    return missing


class RunDir:
    """One run's hold on its directory.

    ``markers``: the files that may name the run, first found wins (the first is the one this run
    writes); ``field``: the marker's key holding the identity (None: the whole marker is the
    identity); ``valid``: a check of the marker's other fields (a marker failing it is refused as
    damaged, ``invalid`` saying what it should be); ``other``: called with a marker naming
    another run, it returns the marker to continue with (an earlier identity still accepted),
    None when it made the directory ready for this run, or raises (``refusal()``: the stage's
    words); without it, another run's marker is refused; ``adopt_empty``: whether an existing
    empty directory without a marker is taken (else only one this run creates)."""

    def __init__(self, path: Path, *, identity: Any, markers: tuple[str, ...], field: str | None, words: RunWords,
                 guarded: Guarded, valid: Callable[[dict[str, Any]], bool] | None = None, invalid: str = "",
                 other: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
                 adopt_empty: bool = True) -> None:
        self.path = Path(path)
        self.identity = identity
        self.markers, self.field, self.words = markers, field, words
        self.valid, self.invalid, self.other, self.adopt_empty = valid, invalid, other, adopt_empty
        self.lock = DirectoryLock(self.path, guarded)
        self.created: Path | None = None  # what this run created, and may remove again if it fails
        self.fresh = False  # new or empty when claimed: all that is in it is this run's

    # --- whose directory -------------------------------------------------------------------

    def recorded(self) -> dict[str, Any] | None:
        """This run's marker (None for a new or empty directory); refuses anything else."""
        if not self.path.exists() and not self.path.is_symlink():
            return None
        if not self.path.is_dir() or not self.adopt_empty and self.path.is_symlink():
            raise ConfigError(self.words.not_dir.format(dir=self.path))
        for name in self.markers:
            path = self.path / name
            if path.is_file() and not path.is_symlink():
                record = self._read_marker(path)
                if self._identity_of(record) == self.identity:
                    return record
                if self.other is None:
                    raise self.refusal()
                return self.other(record)
        others = self._others()
        if others or not (self.adopt_empty or self.created is not None):  # made by claim: this run's
            raise ConfigError(self.words.foreign.format(dir=self.path, name=others[0] if others else ""))
        return None

    def refusal(self) -> ConfigError:
        """The stage's refusal of a directory whose marker names another run."""
        state = "a finished" if (self.path / RUN_RECORD).is_file() else "an unfinished"
        return ConfigError(self.words.other.format(dir=self.path, state=state))

    def _identity_of(self, record: Any) -> Any:
        if self.field is None:
            return record
        return record.get(self.field) if isinstance(record, dict) else None

    def _read_marker(self, path: Path) -> Any:
        """The marker, parsed (any damage: one line naming the file, never a traceback)."""
        fix = self.words.damaged.format(dir=self.path)
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_MARKER_BYTES + 1)
        except OSError as e:
            raise ConfigError(f"{path}: cannot be read ({e.strerror}); {fix}") from None
        if len(raw) > MAX_MARKER_BYTES:
            raise ConfigError(f"{path}: more than {MAX_MARKER_BYTES:,} bytes, not a record dora wrote; {fix}")
        try:
            record = parse_json(raw, str(path))
        except CacheError as e:  # bad JSON or UTF-8, a 5,000-digit integer, nesting too deep
            reason = f"{path}: {self.words.unparsable}" if self.words.unparsable else str(e)
            raise ConfigError(f"{reason}; {fix}") from None
        if self.valid is not None and not self.valid(record):
            raise ConfigError(f"{path}: {self.invalid}; {fix}")
        return record

    def _others(self) -> list[str]:
        """What is in the directory besides what a crashed dora may leave (its lock, a marker being written)."""
        leftovers = tuple(f".{name}.tmp-" for name in self.markers)
        return sorted(p.name for p in self.path.iterdir() if p.name != LOCK_FILE and not p.name.startswith(leftovers))

    # --- one run at a time -----------------------------------------------------------------

    def claim(self) -> dict[str, Any] | None:
        """Create and lock the directory; this run's marker, read again under the lock (None: new or empty)."""
        if (self.path.exists() or self.path.is_symlink()) and not self.path.is_dir():
            raise ConfigError(self.words.not_dir.format(dir=self.path))
        self.created = first_missing(self.path)
        self.lock.acquire()
        try:
            record = self.recorded()
            self.fresh = not self._others()
        except BaseException:
            self.release(failed=True)
            raise
        return record

    def release(self, *, failed: bool, keep: Callable[[Path], bool] = lambda path: False) -> None:
        """Unlock. After a failure (``failed``) in a directory that was new or empty when claimed,
        remove what this run wrote there unless ``keep(dir)`` (something worth resuming or using),
        then the directories it created as far as they are empty. No-op unless claimed."""
        if not self.lock.held:
            return
        try:
            if failed and self.fresh and not keep(self.path):
                for item in self.path.iterdir():
                    if item.name == LOCK_FILE:  # removed with the lock, below
                        continue
                    if item.is_dir() and not item.is_symlink():
                        shutil.rmtree(item, ignore_errors=True)
                    else:
                        item.unlink(missing_ok=True)
        finally:
            self.lock.release()
        if failed and self.created is not None:
            self._remove_empty()

    def _remove_empty(self) -> None:
        """Remove the directory and the parents this run created, as far as they are empty."""
        stop = self.created.absolute().parent  # type: ignore[union-attr]
        for p in (self.path.absolute(), *self.path.absolute().parents):
            if p == stop:
                break
            try:
                p.rmdir()
            except OSError:  # not empty (someone else's files now), or gone
                break

    # --- records -----------------------------------------------------------------------------

    def write_marker(self, record: dict[str, Any]) -> None:
        """Write the marker (the first of ``markers``): this directory is this run's."""
        write_json(self.path / self.markers[0], record)

    def write_record(self, record: dict[str, Any]) -> None:
        """Write ``run.json`` (last: it marks the run finished)."""
        write_json(self.path / RUN_RECORD, record)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.path / METRICS, metrics)


def write_json(path: Path, record: Any) -> None:
    """A record, indented, replaced whole or not at all."""
    write_atomic(path, (json.dumps(record, indent=2) + "\n").encode())


def read_run(path: Path, *, fix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A finished run's ``run.json`` and ``metrics.json``, each one JSON object; a missing, damaged
    or hostile file is one ``InputError`` naming it and ending with ``fix``. Callers check the
    fields they use."""
    run = read_object(path / RUN_RECORD, expected="a run record (a JSON object)", fix=fix, error=InputError)
    metrics = read_object(path / METRICS, expected="a metrics record (a JSON object)", fix=fix, error=InputError)
    return run, metrics
