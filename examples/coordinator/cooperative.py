"""Situation 1: cooperative workers that check ``should_stop()``.

Three worker processes repeat a unit of work and check ``coord.should_stop()`` between units; they
pause with ``coord.wait_for_stop(0.1)``, which returns at once when the stop comes. The main process
asks them to stop after one second.

Bound: ``join`` returns about one unit (0.1 s) after ``request_stop``, far inside the 5 s grace
period, and nothing is signalled: every exit code is 0.

Run: ``python examples/coordinator/cooperative.py`` (exits 0).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import multiprocess

from supervisor.compat import Coordinator


def worker(coord: Coordinator, worker_id: int) -> None:
    units = 0
    while not coord.should_stop():
        units += 1  # one unit of work
        coord.wait_for_stop(0.1)
    print(f"worker {worker_id}: saw the stop after {units} units, exiting", flush=True)


def main() -> None:
    coord = Coordinator(term_timeout=1.0)
    workers = [multiprocess.Process(target=worker, args=(coord, i), name=f"worker-{i}") for i in range(3)]
    for w in workers:
        w.start()
    time.sleep(1.0)
    start = time.monotonic()
    coord.request_stop()
    coord.join(workers, stop_grace_period_secs=5.0)
    took = time.monotonic() - start
    codes = [w.exitcode for w in workers]
    print(f"join returned {took:.2f} s after request_stop; exit codes {codes}")
    if codes != [0, 0, 0] or took >= 5.0:
        sys.exit("unexpected: a worker did not stop by itself")
    print("all workers stopped by themselves; nothing was signalled")


if __name__ == "__main__":
    main()
