"""One ``bench run`` per output folder at a time.

The lock is an ``flock`` on ``OUT/.bench.lock``: the kernel releases it when its
process ends, however it ends, so a killed run never holds the folder forever.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from .errors import BenchError

__all__ = ["OutputLock", "OutputBusy"]

LOCK_NAME = ".bench.lock"


class OutputBusy(BenchError):
    """Another live ``bench run`` holds the output folder."""


class OutputLock:
    """Exclusive use of an output folder for the duration of a ``with`` block.

    Args:
        out_dir: the output folder (created if needed).
        wait_s: how long to wait for another run to finish before refusing. Defaults to 0.
    """

    def __init__(self, out_dir: Path, wait_s: float = 0.0):
        self.path = Path(out_dir) / LOCK_NAME
        self.wait_s = wait_s
        self._handle = None

    def __enter__(self) -> OutputLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+")
        except OSError as exc:
            raise BenchError(f"cannot create the output folder lock {self.path}: {exc.strerror or exc}") from None
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    handle.close()
                    raise OutputBusy(
                        f"{self.path.parent} is in use by another bench run ({holder}); wait for it to finish "
                        "or choose another --out. Finished cells are never run twice."
                    ) from None
                time.sleep(0.5)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
