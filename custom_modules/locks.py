"""An exclusive lock on a folder for one writing process, released by the kernel when the process dies."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import weakref
from collections.abc import Iterator
from pathlib import Path

from .errors import RunFolderError

__all__ = ["LOCK_NAME", "FolderLock", "folder_lock"]

#: the lock file inside a locked folder
LOCK_NAME = ".lock"


class FolderLock:
    """``flock`` on ``<folder>/.lock`` (holding the owner's pid); :meth:`acquire` refuses when another process
    (or another lock object of this one) holds it. A process that dies, however it dies, releases its lock; forked
    children (DataLoader workers) close their inherited copy, so the workers of a killed run do not keep it.

    Args:
        folder: the folder to lock (created).
        what: the work it protects, for the error message (e.g. ``"training"``).
        hint: what to do when refused, the end of the error message.
    """

    def __init__(
        self, folder: str | os.PathLike, what: str = "run", hint: str = "wait for it to end or use another folder"
    ) -> None:
        self.folder, self.what, self.hint = Path(folder), what, hint
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        os.register_at_fork(after_in_child=functools.partial(_forget_in_child, weakref.ref(self)))

    def acquire(self) -> FolderLock:
        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunFolderError(
                f"{self.folder}: another {self.what} (pid {holder}) is writing in this folder; {self.hint}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _forget(self) -> None:
        """In a forked child: close the inherited descriptor without unlocking the parent's lock."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _forget_in_child(ref: weakref.ref) -> None:
    lock = ref()
    if lock is not None:
        lock._forget()


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "run") -> Iterator[FolderLock]:
    """Hold :class:`FolderLock` of ``folder`` for the ``with`` block."""
    lock = FolderLock(folder, what).acquire()
    try:
        yield lock
    finally:
        lock.release()
