"""Finding and ending the processes a benchmark started: by an environment marker, by pid.

Every scenario runs with ``LADDER_BENCH=<run>:<scenario>`` in its environment, which every process
it starts inherits (workers, their subprocesses, double-forked daemons, supervisord's programs).
Survivors are found by scanning ``/proc/*/environ`` for it and are killed by pid, never by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
import uuid

from supervisor._platform import is_zombie

MARKER_ENV = "LADDER_BENCH"
RUN_ID = uuid.uuid4().hex[:10]


def marker(scenario: int) -> str:
    """The marker value for one scenario of this benchmark run."""
    return f"{RUN_ID}:{scenario}"


def _environ_has(pid: int, needle: bytes, prefix: bool) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            entries = f.read().split(b"\0")
    except OSError:
        return False
    if prefix:
        return any(e.startswith(needle) for e in entries)
    return needle in entries


def marked(value: str | None = None) -> set[int]:
    """Live (non-zombie) pids carrying this scenario's marker, or any marker of this run."""
    if value is None:
        needle, prefix = f"{MARKER_ENV}={RUN_ID}:".encode(), True
    else:
        needle, prefix = f"{MARKER_ENV}={value}".encode(), False
    me = os.getpid()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me and _environ_has(int(entry), needle, prefix):
            found.add(int(entry))
    return {pid for pid in found if not is_zombie(pid)}


def survivors(value: str, exclude: set[int], settle: float = 0.3) -> list[int]:
    """Marked processes alive now and still alive ``settle`` seconds later (not merely dying)."""
    first = marked(value) - exclude
    if not first:
        return []
    time.sleep(settle)
    return sorted(first & marked(value))


def describe(pid: int) -> str:
    """A process's command line, shortened (for reports of what was left behind)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return f"{pid}: gone"
    return f"{pid}: " + " ".join(a.decode(errors="replace") for a in argv if a)[:100]


def kill_marked(value: str | None = None, keep: frozenset[int] = frozenset(), rounds: int = 20) -> int:
    """SIGKILL every marked process by pid (again, for ones forked meanwhile); how many were killed.

    ``keep``: our own ``Popen`` children, which their ``Popen`` object reaps."""
    killed: set[int] = set()
    for _ in range(rounds):
        pids = marked(value)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        killed |= pids
        time.sleep(0.05)
        reap(keep)
    return len(killed)


def become_subreaper() -> None:
    """Orphans of our scenarios are re-parented to us (and reaped by ``reap``), not to init."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def reap(keep: frozenset[int] = frozenset()) -> None:
    """Reap adopted orphans that have exited (not the ``keep`` pids: our own Popen children)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if fields[0] == b"Z" and int(fields[1]) == os.getpid() and pid not in keep:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
