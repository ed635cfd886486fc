"""One writer per cache directory.

``<cache>/.dora-lock`` is held with ``flock``: the kernel releases it the moment its owner
dies, even by SIGKILL or a power cut on the writer's machine, so a crash never leaves the
cache locked, and a live writer is never broken. The file also says who holds it, for the error
message. A clean exit removes the file; one left behind by a crash is harmless (unlocked).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from dora.errors import CacheError

LOCK_FILE = ".dora-lock"


class CacheLock:
    """``with CacheLock(root): ...`` or ``lock = CacheLock(root).acquire()`` ... ``lock.release()``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.path = self.root / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> CacheLock:
        while True:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise CacheError(f"{self.root}: cannot create the cache directory or its lock ({e.strerror}); "
                                 "choose a writable --out") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self.holder(fd)
                os.close(fd)
                raise CacheError(f"{self.root}: another dora process is writing this cache ({holder}); wait for "
                                 "it to finish, or stop it: its complete shards are kept and a rerun continues") from None
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
        except (OSError, ValueError, KeyError):
            return "owner unknown"

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # while still locked: nobody can hold the old file
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> CacheLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
