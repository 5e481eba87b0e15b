"""One writer per folder: an exclusive `flock` on a lock file inside the folder a stage writes.

Two processes writing one run folder corrupt it quietly (settings of one run, predictions of the
other; the same work done twice and its timings counted twice), so every stage that writes a
folder holds its lock for as long as it writes. `flock` locks belong to the open file, so the
kernel drops them when the process exits in any way, kill -9 included: a lock file left behind
after a crash is never stale. The file also says who holds it, for the second process's message.

A forked child shares the parent's open file, so it would keep the lock alive after the parent
dies: vLLM forks its engine process, and after `kill -9` of evaluation.py that orphan held the
folder for a while and the rerun was refused, naming a dead pid. Forked children therefore close
their copies at once; a lock is the writer's alone.

A run that ends, well or not, leaves the tree as it found it apart from what it wrote: the lock file
goes on release, and so do the folders the lock created that are still empty (a run refused before
its first write leaves no empty `Truncation/0.5/samples/`). Because the file is removed, a process
that opened it just before could lock the removed file: acquiring therefore checks, once locked, that
the path still names the file it locked, and starts again if not.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from tokenskip.core.errors import UsageError
from tokenskip.core.layout import LOCK_FILE

_HELD: set[int] = set()  # this process's lock fds, closed in every forked child


def _drop_inherited_locks() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)  # only the child's copy: the parent's fd keeps the flock
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


class FolderLock:
    """Hold `folder/.lock` exclusively; a second holder gets a one-line UsageError naming the first."""

    def __init__(self, folder: str | os.PathLike, what: str = "folder") -> None:
        self.folder = Path(folder)
        self.what = what
        self._fd: int | None = None
        self._created: list[Path] = []  # the folders acquire() made, deepest first

    def acquire(self) -> FolderLock:
        if self.folder.exists() and not self.folder.is_dir():
            raise UsageError(f"{self.folder} is a file, not a folder; choose another output folder")
        missing = [self.folder, *self.folder.parents]
        self._created = [folder for folder in missing[:next(i for i, f in enumerate(missing) if f.exists())]]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot write in {self.folder} ({exc.strerror}); choose another output folder") from None
        while True:
            fd = self._lock_file()
            if _same_file(fd, self.folder / LOCK_FILE):
                break
            os.close(fd)  # the file was removed (its holder released it) between our open and our lock
        _write_holder(fd)
        self._fd = fd
        _HELD.add(fd)
        return self

    def _lock_file(self) -> int:
        try:
            fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            self._remove_created()
            raise UsageError(f"cannot write in {self.folder} ({exc.strerror}); choose another output folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise UsageError(f"{self.folder} is in use by another run ({holder}); wait for it to finish, "
                             f"or use another output folder") from None
        return fd

    def release(self) -> None:
        if self._fd is not None:
            _HELD.discard(self._fd)
            with contextlib.suppress(OSError):
                os.unlink(self.folder / LOCK_FILE)  # still locked: no one else can hold this file now
            os.close(self._fd)  # closing drops the flock
            self._fd = None
            self._remove_created()

    def _remove_created(self) -> None:
        """Remove the folders acquire() made that are still empty, deepest first."""
        for folder in self._created:
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (the run wrote there), or gone: the folders above it stay too
        self._created = []

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def locked(*folders: str | os.PathLike) -> Iterator[None]:
    """Hold the locks of several folders (each once, in a fixed order), or none if one is taken."""
    with contextlib.ExitStack() as stack:
        for folder in sorted({Path(f).resolve() for f in folders}):
            stack.enter_context(FolderLock(folder))
        yield


def _same_file(fd: int, path: Path) -> bool:
    try:
        mine, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def _write_holder(fd: int) -> None:
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])[:300]}
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {holder['pid']} on {holder['host']} since {holder['since']}: {holder['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
