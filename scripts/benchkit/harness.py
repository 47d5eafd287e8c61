"""One scenario of one system, in its own process: ``python -m benchkit.harness SPEC_JSON``.

The orchestrator (``benchkit.orchestrate``) runs this with a timeout it enforces from outside, so a
peer that hangs cannot hang the benchmark. Progress goes to stdout as lines ``@bench {json}``:

- ``started``: start-up seconds (call to N workers running), the workers' pids, the infrastructure
  pids (not workers, excluded from survivors);
- ``idle`` (``coop`` with an idle window): the supervising processes' CPU (cores) over the window,
  their memory, and an idle worker's USS;
- ``stopping``: the timed stop is about to be called;
- ``done``: its seconds (and the crash figures), after which the orchestrator counts survivors and
  writes ``exit`` to stdin; the harness then cleans up (untimed) and leaves with ``os._exit``.

Scenarios: ``coop`` (start-up, idle, cooperative stop), ``teardown`` (forced teardown of workers
running a behaviour) and ``crash`` (SIGKILL one worker from outside; detection and replacement).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import threading
import time
from typing import Any

import psutil

from . import systems
from .fifo import Fifos
from .systems import Env, System

START_TIMEOUT = float(os.environ.get("LADDER_BENCH_START_TIMEOUT", 180))  # for N workers to report ready
SETTLE = 0.2  # seconds between "all running" and the measured stop
CRASH_TIMEOUT = 10.0  # for a crash to be reported
REPLACE_TIMEOUT = 3.0  # for a replacement to run, after the crash
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_alive: list[System] = []  # nothing is freed before os._exit: a DataLoader iterator's __del__ blocks


def emit(phase: str, **data: Any) -> None:
    sys.stdout.write("@bench " + json.dumps({"phase": phase, **data}) + "\n")
    sys.stdout.flush()


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        t = p.cpu_times()
        total += t.user + t.system
    return total


def measure_idle(system: System, window: float, workers: list[int], rss_before: int) -> dict[str, float]:
    """CPU (cores) of owner + supervising processes over ``window`` s of idling; their memory."""
    me = psutil.Process()
    procs = [me, *(psutil.Process(p) for p in system.supervising_pids())]
    before, t0 = _cpu(procs), time.monotonic()
    time.sleep(window)
    cpu = (_cpu(procs) - before) / (time.monotonic() - t0)
    rss = me.memory_info().rss - rss_before + sum(p.memory_info().rss for p in procs[1:])
    uss = statistics.median(psutil.Process(pid).memory_full_info().uss for pid in workers[:3])
    return {"cpu": cpu, "rss": float(rss), "uss": float(uss)}


def run_crash(system: System, fifos: Fifos, victim: int) -> dict[str, float | None]:
    """SIGKILL ``victim``; seconds until the system reports it, and until a replacement runs."""
    replaced: dict[str, float] = {}

    def wait_replacement() -> None:
        if fifos.wait_ready(1, CRASH_TIMEOUT + REPLACE_TIMEOUT) is not None:
            replaced["at"] = time.time()

    system.before_crash(victim)
    waiter = threading.Thread(target=wait_replacement, daemon=True)
    waiter.start()
    t0 = time.time()
    os.kill(victim, signal.SIGKILL)
    detected = system.detect_crash(victim, CRASH_TIMEOUT)
    waiter.join(REPLACE_TIMEOUT if detected is None else max(0.0, detected + REPLACE_TIMEOUT - time.time()))
    return {
        "detect": None if detected is None else detected - t0,
        "replace": replaced["at"] - t0 if "at" in replaced else None,
    }


def run(spec: dict[str, Any]) -> None:
    fifos = Fifos(spec["folder"])
    system = systems.create(spec["system"], Env(fifos, spec["folder"], spec.get("peers_bin")))
    _alive.append(system)
    n, behaviour, scenario = spec["n"], spec["behaviour"], spec["scenario"]
    rss_before = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    system.start(n, behaviour, crash=scenario == "crash")
    pids = fifos.wait_ready(n, START_TIMEOUT)
    ready = time.perf_counter()
    if pids is None:
        got = fifos.buffered()
        emit("error", message=f"{got} of {n} workers ready after {START_TIMEOUT:g} s; {system.diagnose()}")
        return
    workers_only = None if system.created is None else ready - system.created
    emit("started", startup=ready - t0, workers_only=workers_only, pids=pids, infra=sorted(system.infra_pids()))
    if scenario == "coop" and spec.get("idle"):
        emit("idle", **measure_idle(system, spec["idle"], pids, rss_before))
    time.sleep(SETTLE)
    emit("stopping")
    t1 = time.perf_counter()
    if scenario == "coop":
        system.cooperative_stop(n)
        emit("done", seconds=time.perf_counter() - t1, infra=sorted(system.infra_pids()))
    elif scenario == "teardown":
        system.teardown()
        took = time.perf_counter() - t1
        emit("done", seconds=took, deadline=system.deadline(behaviour), infra=sorted(system.infra_pids()))
    else:
        emit("done", **run_crash(system, fifos, pids[0]), infra=sorted(system.infra_pids()))
    sys.stdin.readline()  # the orchestrator has counted the survivors
    system.close()


def main() -> None:
    spec = json.loads(sys.argv[1])
    sys.path.insert(0, CHECKOUT)  # this checkout's supervisor package, installed or not
    try:
        run(spec)
    except BaseException as exc:  # reported, then the orchestrator kills what is left
        emit("error", message=f"{type(exc).__name__}: {exc}")
    finally:
        sys.stdout.flush()
        os._exit(0)  # no atexit handlers: multiprocessing's would join (and hang on) stray workers


if __name__ == "__main__":
    main()
