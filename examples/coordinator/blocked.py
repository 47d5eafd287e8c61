"""Situation 2: workers blocked where ``should_stop()`` is never checked.

Two workers sleep in ``time.sleep(3600)``. The second also ignores SIGTERM and has started a
subprocess that ignores SIGTERM too. With threads, ``join`` would give up after the grace period and
leave both running. Here, once ``stop_grace_period_secs`` (1 s) has run out, both trees get SIGTERM:
the plain sleeper dies of it. After ``term_timeout`` (1 s) more, what is left (the stubborn worker
and its subprocess) gets SIGKILL.

Bound: ``join`` returns within ``stop_grace_period_secs + term_timeout`` = 2 s plus a small margin,
and no process of either tree is left.

Run: ``python examples/coordinator/blocked.py`` (exits 0).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import multiprocess
import psutil

from supervisor.compat import Coordinator

GRACE, TERM = 1.0, 1.0
STUBBORN_CHILD = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"


def sleeper(coord: Coordinator) -> None:
    time.sleep(3600)  # never looks at coord


def stubborn(coord: Coordinator, report: multiprocess.connection.Connection) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", STUBBORN_CHILD])
    report.send(child.pid)
    time.sleep(3600)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # dead, waiting for its reaper
    except psutil.NoSuchProcess:
        return True


def main() -> None:
    logging.basicConfig(format="%(name)s: %(message)s")  # shows join's warning of what it ended
    coord = Coordinator(term_timeout=TERM)
    receive, send = multiprocess.Pipe(duplex=False)
    workers = [
        multiprocess.Process(target=sleeper, args=(coord,), name="sleeper"),
        multiprocess.Process(target=stubborn, args=(coord, send), name="stubborn"),
    ]
    for w in workers:
        w.start()
    child = receive.recv()
    start = time.monotonic()
    coord.request_stop()
    coord.join(workers, stop_grace_period_secs=GRACE)
    took = time.monotonic() - start
    for w in workers:
        how = {-signal.SIGTERM: "SIGTERM", -signal.SIGKILL: "SIGKILL"}.get(w.exitcode or 0, "?")
        print(f"{w.name}: ended by {how} (exit code {w.exitcode})")
    print(f"stubborn's subprocess (pid {child}): {'gone' if gone(child) else 'STILL RUNNING'}")
    print(f"join returned {took:.2f} s after request_stop (bound {GRACE + TERM:.1f} s + a small margin)")
    if not gone(child) or any(w.is_alive() for w in workers) or took > GRACE + TERM + 2.0:
        sys.exit("unexpected: something outlived the bound")


if __name__ == "__main__":
    main()
