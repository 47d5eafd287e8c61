"""Situation 3: workers that raise; the exception reaches the main process.

Four workers run their loop inside ``with coord.stop_on_exception():``. Worker 2 raises
``ValueError`` on its third unit. The block passes it to ``coord.request_stop``, which carries it
(pickled with dill) to every process holding the coordinator; the other workers see
``should_stop()`` and exit, and ``join`` in the main process re-raises the ``ValueError``, with
worker 2's traceback attached as a note. Only the first requested exception is kept.

Bound: ``join`` returns about one unit (0.1 s) after the failure; nothing is signalled.

Run: ``python examples/coordinator/exceptions.py`` (exits 0).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import multiprocess

from supervisor.compat import Coordinator


def worker(coord: Coordinator, worker_id: int) -> None:
    with coord.stop_on_exception():
        units = 0
        while not coord.should_stop():
            units += 1  # one unit of work
            if worker_id == 2 and units == 3:
                raise ValueError(f"worker {worker_id} hit bad data on unit {units}")
            coord.wait_for_stop(0.1)
        print(f"worker {worker_id}: saw the stop after {units} units, exiting", flush=True)


def main() -> None:
    coord = Coordinator()
    workers = [multiprocess.Process(target=worker, args=(coord, i), name=f"worker-{i}") for i in range(4)]
    for w in workers:
        w.start()
    start = time.monotonic()
    try:
        coord.join(workers, stop_grace_period_secs=5.0)
    except ValueError as exc:
        print(f"join re-raised {exc!r} after {time.monotonic() - start:.2f} s")
        print("with the note:", *getattr(exc, "__notes__", []), sep="\n")
    else:
        sys.exit("unexpected: join did not re-raise the worker's exception")
    print(f"exit codes {[w.exitcode for w in workers]}; coord.joined = {coord.joined}")


if __name__ == "__main__":
    main()
