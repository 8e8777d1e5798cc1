"""Processes as /proc shows them, for the tests that start clusters and kill drivers (Linux).

``multiprocessing.active_children`` lists only the children multiprocessing started; the
LocalCluster's process is a ``subprocess`` child and its workers are grandchildren.
"""

from __future__ import annotations

import os
import time


def _stat(pid) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, ...), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def live_children(pid: int | None = None) -> list[int]:
    """The children of ``pid`` (default: this process) that have not exited."""
    parent = str(os.getpid() if pid is None else pid)
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(entry)
            if fields is not None and fields[1] == parent and fields[0] != "Z":
                out.append(int(entry))
    return out


def wait_gone(pids, seconds: float = 40.0) -> bool:
    """Wait until none of ``pids`` runs; False if some still do after ``seconds``."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.2)
    return False


def group_gone(pgid: int, seconds: float = 60.0) -> bool:
    """Wait until no process of the process group ``pgid`` is left; False if some still are
    after ``seconds``."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.5)
    return False
