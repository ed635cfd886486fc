"""One dora process per directory: a cache being written, a run directory being trained in.

``<dir>/.dora-lock`` is held with ``flock``: the kernel releases it the moment its owner dies,
even by SIGKILL or a power cut on the writer's machine, so a crash never leaves the directory
locked, and a live holder is never broken. The file also says who holds it, for the error message,
which names what the directory is (``Guarded``): a cache, a teacher directory, a run directory.
A clean exit removes the file; one left behind by a crash is harmless (unlocked).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from dora.errors import ConfigError, DoraError

LOCK_FILE = ".dora-lock"


@dataclass(frozen=True, kw_only=True)
class Guarded:
    """What a lock guards, as its messages say it: ``{dir}: cannot create {directory} or its lock
    (why); {create_fix}``, ``{dir}: another dora process {busy} (pid N on HOST since T); {wait}``,
    and, when this very process holds it already, ``{dir}: {mine}``."""

    directory: str
    """e.g. "the cache directory"."""
    create_fix: str
    """e.g. "choose a writable --out"."""
    busy: str
    """e.g. "is writing this cache"."""
    wait: str
    """What to do about the other process, e.g. "wait for it to finish, or choose another --out"."""
    mine: str | None = None
    """The message when this process holds the lock itself (two options naming one directory);
    None: the ``busy`` message."""
    error: type[DoraError] = ConfigError


class DirectoryLock:
    """``with DirectoryLock(root, guarded): ...`` or ``lock = DirectoryLock(root, guarded).acquire()``
    ... ``lock.release()``. ``acquire`` creates ``root`` (and its parents) when missing."""

    def __init__(self, root: str | Path, guarded: Guarded) -> None:
        self.root = Path(root)
        self.path = self.root / LOCK_FILE
        self.guarded = guarded
        self._fd: int | None = None

    def acquire(self) -> DirectoryLock:
        g = self.guarded
        while True:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise g.error(f"{self.path}: a symlink where dora keeps its lock; dora never writes through "
                                  "one: remove it if it is yours, or choose another directory") from None
                raise g.error(f"{self.root}: cannot create {g.directory} or its lock ({e.strerror}); "
                              f"{g.create_fix}") from None
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:  # a planted hard link: truncating hits its twin
                os.close(fd)
                raise g.error(f"{self.path}: not a lock file dora made (a special file or a hard link); dora "
                              "never truncates one: remove it if it is yours, or choose another directory")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self.holder(fd)
                os.close(fd)
                if g.mine is not None and holder.startswith(f"pid {os.getpid()} on {socket.gethostname()} "):
                    raise g.error(f"{self.root}: {g.mine}") from None
                raise g.error(f"{self.root}: another dora process {g.busy} ({holder}); {g.wait}") from None
            try:  # the holder we waited on may have removed the file: lock the one at the path
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())
        self._fd = fd
        return self

    @staticmethod
    def holder(fd: int) -> str:
        """Who holds the lock file open at ``fd``: "pid N on HOST since T" (or "owner unknown")."""
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"{}")
            return f"pid {info['pid']} on {info['host']} since {info['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "owner unknown"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # while still locked: nobody can hold the old file
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
