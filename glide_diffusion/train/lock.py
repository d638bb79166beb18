"""One training run per folder: an OS lock on ``out_dir/train.lock``.

:func:`lock_run_dir` takes an exclusive, non-blocking ``flock`` on the lock file and
writes the holder's PID and host into it; a second run on the same folder gets
:class:`RunLockedError` naming them, instead of writing beside the first. The OS
drops the lock when the holding process dies, however it dies, so a killed run
never leaves a stale lock: its resume starts at once. The file itself stays (empty
once released); it is the lock, not a marker.

Processes forked while the lock is held (DataLoader workers) close their copy of
the lock's file at once, so that they cannot keep the lock after the run itself is
killed. Where ``fcntl`` does not exist (Windows) there is no lock.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]  # tested before each use

__all__ = ["LOCK_FILE", "RunLockedError", "lock_run_dir"]

LOCK_FILE = "train.lock"

_held: set[int] = set()  # descriptors of the locks this process holds


class RunLockedError(RuntimeError):
    """Another process holds the run folder's lock."""


def _close_in_child() -> None:
    for fd in _held:
        try:
            os.close(fd)  # this process's reference only: the parent keeps its lock
        except OSError:
            pass
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def _holder(fd: int) -> str:
    """'pid N on host H' as the holder wrote it, or a phrase saying it is unknown."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    except OSError:
        text = []
    if len(text) == 4 and text[0] == "pid" and text[2] == "host":
        return f"pid {text[1]} on host {text[3]}"
    return "holder unknown"


@contextlib.contextmanager
def lock_run_dir(out_dir: str | os.PathLike[str]) -> Iterator[Path | None]:
    """Hold ``out_dir``'s lock (creating the folder) for the ``with`` block; yields the lock
    file (None where there is no lock).

    Raises:
        RunLockedError: another process holds it.
        NotADirectoryError, FileExistsError, PermissionError (OSError): the folder cannot
            be created or the lock file opened.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover - Windows
        yield None
        return
    path = out_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            unsupported = None
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLockedError(
                    f"{out_dir} is in use by another training run ({_holder(fd)}); wait for it to end or "
                    f"stop it, or train into another out_dir"
                ) from None
            unsupported = e
        if unsupported is not None:  # a file system without locks (some network mounts): unprotected
            warnings.warn(f"cannot lock {path} ({unsupported}); nothing stops a second run on {out_dir}")
            yield path
            return
        _held.add(fd)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} host {socket.gethostname()}\n".encode(), 0)
            yield path
        finally:
            _held.discard(fd)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
