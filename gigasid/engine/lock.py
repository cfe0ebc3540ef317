"""One driver per run directory: an advisory lock that a crashed driver cannot leave stuck.

``gigasid run`` holds an exclusive ``flock`` on ``RUN/driver.lock`` for as long as it drives
the run. The kernel drops the lock when the process ends, however it ends (a ``kill -9``
included), so a new driver can always take over a run whose driver died; while a driver is
alive, a second one is refused at once with the first one's pid. The file's content (pid,
host, start time) only serves that message.

``flock`` is per host on some network filesystems (older NFS): there, two drivers on
different machines are not kept apart.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from gigasid.errors import RunDirError

LOCK_NAME = "driver.lock"


class RunLock:
    """The driver lock of a run directory (held until :meth:`release` or process exit)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunDirError` naming the driver that holds it."""
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunDirError(f"cannot use run directory {self.path.parent}: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            who = (f"pid {holder.get('pid')} on {holder.get('host')}, since "
                   f"{holder.get('started')}") if holder else "another process"
            raise RunDirError(
                f"{self.path.parent} is being run by another gigasid driver ({who}); wait "
                "for it to finish (gigasid status shows where it is) or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


def _read(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        return {}


__all__ = ["LOCK_NAME", "RunLock"]
