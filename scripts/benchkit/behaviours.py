"""What the benchmark's workers do: the same behaviours for us and for every peer.

Standard library only, so that it also runs as a plain program under supervisord
(``python behaviours.py NAME``). Two FIFOs, named by environment variables that every worker
inherits, connect the workers to the scenario harness:

- ``LADDER_BENCH_READY``: each worker writes its pid (4 bytes, one atomic write) once it is running
  and has set up whatever it holds (a grandchild, an escaped daemon);
- ``LADDER_BENCH_STOP``: cooperative workers of the peers block reading one byte from it; the harness
  writes one byte per worker to ask them all to stop.

Behaviours: ``coop`` (waits for the stop request), ``sleeper`` (``time.sleep(3600)``), ``deaf``
(ignores SIGTERM, sleeps), ``grandchild`` (starts ``sleep 3600`` with ``subprocess``, sleeps) and
``escaper`` (double fork + ``setsid()``: a forked, never exec'd daemon outside the worker's process
group and session, then sleeps).
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
from typing import Any

READY_ENV = "LADDER_BENCH_READY"
STOP_ENV = "LADDER_BENCH_STOP"
BEHAVIOURS = ("coop", "sleeper", "deaf", "grandchild", "escaper")
_stopped = False  # per worker process: set once this worker saw the stop request


def signal_ready() -> None:
    """Tell the harness this worker runs (its pid, in one write of 4 bytes: atomic on a FIFO)."""
    fd = os.open(os.environ[READY_ENV], os.O_WRONLY)
    try:
        os.write(fd, struct.pack("<i", os.getpid()))
    finally:
        os.close(fd)


def wait_stop_byte() -> None:
    """Block until the harness asks for a stop (one byte of the stop FIFO per worker)."""
    global _stopped
    if _stopped:
        return
    fd = os.open(os.environ[STOP_ENV], os.O_RDONLY)
    try:
        os.read(fd, 1)
    finally:
        os.close(fd)
    _stopped = True


def _escape() -> None:
    """Double fork + setsid(): leave a forked (never exec'd) daemon behind, then return."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                time.sleep(3600)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def prepare(name: str) -> None:
    """Set up the behaviour's process tree and signal handling, then report ready."""
    if name == "deaf":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif name == "grandchild":
        subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL)
    elif name == "escaper":
        _escape()
    elif name not in BEHAVIOURS:
        raise ValueError(f"unknown behaviour {name!r}")
    signal_ready()


def task(name: str) -> int:
    """A peer's task (pool, executor, dataset item): run the behaviour; returns once stopped."""
    if name == "coop" and _stopped:
        return os.getpid()  # a later task of a worker that has already seen the stop request
    prepare(name)
    if name == "coop":
        wait_stop_byte()
    else:
        time.sleep(3600)
    return os.getpid()


def ours(ctx: Any, name: str) -> None:
    """Our target: the same behaviours; ``coop`` waits on our own stop event (``ctx.wait()``)."""
    prepare(name)
    if name == "coop":
        ctx.wait()
    else:
        time.sleep(3600)


def _program(name: str) -> None:
    """supervisord's program: its cooperative step is SIGTERM, which ``coop`` handles by exiting."""
    if name == "coop":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    prepare(name)
    time.sleep(3600)


if __name__ == "__main__":
    _program(sys.argv[1])
