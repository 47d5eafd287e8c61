"""The executor-style peers: multiprocessing.Pool, ProcessPoolExecutor, pebble, loky.

Each runs N tasks, one per worker, each task being the behaviour (see ``behaviours.task``).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import sys
import time
from typing import Any

from .. import behaviours
from .base import System


def _first_exception(futures: list[Any], timeout: float) -> float | None:
    """``time.time()`` when the first future failed (a dead worker), or None."""
    done, _ = cf.wait(futures, timeout=timeout, return_when=cf.FIRST_EXCEPTION)
    if any(f.done() and not f.cancelled() and f.exception() is not None for f in done):
        return time.time()
    return None


class MpPool(System):
    def start(self, n: int, behaviour: str, crash: bool) -> None:
        self.pool = multiprocessing.Pool(n)
        self.results = [self.pool.apply_async(behaviours.task, (behaviour,)) for _ in range(n + crash)]

    def cooperative_stop(self, n: int) -> None:
        self.env.fifos.request_stop(n)
        self.pool.close()
        self.pool.join()

    def teardown(self) -> None:
        self.pool.terminate()
        self.pool.join()

    def deadline(self, behaviour: str) -> float | None:
        return 0.0  # terminate(): SIGTERM at once, and no SIGKILL step

    def detect_crash(self, victim: int, timeout: float) -> float | None:
        return None  # Pool reports nothing: the dead worker's task is lost, its result never comes


class Executor(System):
    def start(self, n: int, behaviour: str, crash: bool) -> None:
        self.ex = cf.ProcessPoolExecutor(max_workers=n)
        self.created = time.perf_counter()
        self.futures = [self.ex.submit(behaviours.task, behaviour) for _ in range(n + crash)]

    def cooperative_stop(self, n: int) -> None:
        self.env.fifos.request_stop(n)
        self.ex.shutdown(wait=True)

    def teardown(self) -> None:
        self.ex.shutdown(wait=True, cancel_futures=True)

    def deadline(self, behaviour: str) -> float | None:
        return None  # shutdown waits for running tasks, however long

    def detect_crash(self, victim: int, timeout: float) -> float | None:
        return _first_exception(self.futures, timeout)  # BrokenProcessPool


class Pebble(System):
    def start(self, n: int, behaviour: str, crash: bool) -> None:
        import pebble

        self.pool = pebble.ProcessPool(max_workers=n)
        self.futures = [self.pool.schedule(behaviours.task, args=(behaviour,)) for _ in range(n + crash)]

    def cooperative_stop(self, n: int) -> None:
        self.env.fifos.request_stop(n)
        self.pool.close()  # type: ignore[no-untyped-call]
        self.pool.join()

    def teardown(self) -> None:
        self.pool.stop()  # type: ignore[no-untyped-call]
        self.pool.join()

    def deadline(self, behaviour: str) -> float | None:
        # stop(): SIGTERM, then SIGKILL after pebble's internal term_timeout (3 s, not a public
        # setting), worker after worker.
        from pebble.common.types import CONSTS

        return float(CONSTS.term_timeout) if behaviour == "deaf" else 0.0

    def detect_crash(self, victim: int, timeout: float) -> float | None:
        return _first_exception(self.futures, timeout)  # ProcessExpired


class Loky(System):
    def start(self, n: int, behaviour: str, crash: bool) -> None:
        from loky import get_reusable_executor

        self.ex = get_reusable_executor(max_workers=n)
        self.futures = [self.ex.submit(behaviours.task, behaviour) for _ in range(n + crash)]

    def cooperative_stop(self, n: int) -> None:
        self.env.fifos.request_stop(n)
        self.ex.shutdown(wait=True)

    def teardown(self) -> None:
        self.ex.shutdown(wait=True, kill_workers=True)

    def deadline(self, behaviour: str) -> float | None:
        return 0.0  # kill_workers=True: SIGKILL to each worker's process tree at once

    def detect_crash(self, victim: int, timeout: float) -> float | None:
        return _first_exception(self.futures, timeout)  # TerminatedWorkerError

    def infra_pids(self) -> set[int]:
        pids = super().infra_pids()
        tracker = sys.modules.get("loky.backend.resource_tracker")
        pid = getattr(getattr(tracker, "_resource_tracker", None), "_pid", None)
        if pid:
            pids.add(pid)
        return pids
