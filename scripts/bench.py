#!/usr/bin/env python3
"""Benchmarks: our figures next to the floors (and peers) measured in the same run.

    python scripts/bench.py [--quick] [--only NAME] [--json] [--runs K]

Each figure is the median of K runs (min and max shown). Metrics:
- ``startup``: spawn() to N workers running, per start method, vs ``multiprocess`` fork/spawn
  Process start loops and a raw ``os.fork`` loop (children signal readiness over a pipe);
- ``cooperative``: request_stop() to the last worker reaped, N workers blocked in ``ctx.wait()``,
  vs ``multiprocess`` children blocked in ``Event.wait()`` (set, then join all);
- ``crash``: a worker SIGKILLed from outside (N = 8): time until the manager notices, and until its
  replacement runs, vs a parent woken by a pidfd;
- ``teardown``: stop() of N mixed workers (cooperative, sleeping, SIGTERM-ignoring, done) with
  grace 0.5 s and term 0.5 s; the overshoot past grace + term, vs the floor of SIGKILLing and
  reaping N raw children.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import multiprocess as mp

from supervisor import Supervisor, WorkerContext

GRACE, TERM = 0.5, 0.5


# -- worker targets ------------------------------------------------------------------------------


def _coop(ctx: WorkerContext) -> None:
    ctx.wait()


def _sleeper(ctx: WorkerContext) -> None:
    time.sleep(3600)


def _deaf(ctx: WorkerContext) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(3600)


def _done(ctx: WorkerContext) -> None:
    return


def _mp_ready(conn: Any) -> None:
    conn.send_bytes(b"x")


def _mp_wait(ev: Any, conn: Any) -> None:
    conn.send_bytes(b"x")
    ev.wait()


# -- helpers -------------------------------------------------------------------------------------


def _read_n(r: int, n: int) -> None:
    got = 0
    while got < n:
        got += len(os.read(r, n - got))


def _all_running(sup: Supervisor, n: int) -> None:
    with sup._cond:  # benchmark-only peek at the status mirror: wakes on every state change
        sup._cond.wait_for(lambda: sum(s.state == "running" for s in sup._statuses.values()) >= n, 120)


def _median(fn: Callable[[], float], runs: int) -> dict[str, float]:
    values = [fn() for _ in range(runs)]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# -- measurements (each returns seconds) ---------------------------------------------------------


def ours_startup(n: int, method: str) -> float:
    sup = Supervisor(grace_period=0, term_timeout=0)
    try:
        t0 = time.perf_counter()
        sup.spawn(_coop, replicas=n, start_method=method)
        _all_running(sup, n)
        return time.perf_counter() - t0
    finally:
        sup.stop()


def mp_startup(n: int, method: str) -> float:
    ctx = mp.get_context(method)
    r, w = ctx.Pipe(duplex=False)
    t0 = time.perf_counter()
    procs = [ctx.Process(target=_mp_ready, args=(w,)) for _ in range(n)]
    for p in procs:
        p.start()
    for _ in range(n):
        r.recv_bytes()
    took = time.perf_counter() - t0
    for p in procs:
        p.join()
    return took


def raw_fork_startup(n: int) -> float:
    r, w = os.pipe()
    t0 = time.perf_counter()
    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os.write(w, b"x")
            os._exit(0)
        pids.append(pid)
    _read_n(r, n)
    took = time.perf_counter() - t0
    for pid in pids:
        os.waitpid(pid, 0)
    os.close(r)
    os.close(w)
    return took


def ours_cooperative(n: int) -> float:
    sup = Supervisor(grace_period=30, term_timeout=30)
    try:
        sup.spawn(_coop, replicas=n)
        _all_running(sup, n)
        time.sleep(0.2)
        t0 = time.perf_counter()
        sup.request_stop()
        sup.wait()
        return time.perf_counter() - t0
    finally:
        sup.stop()


def mp_cooperative(n: int) -> float:
    ctx = mp.get_context("fork")
    ev = ctx.Event()
    r, w = ctx.Pipe(duplex=False)
    procs = [ctx.Process(target=_mp_wait, args=(ev, w)) for _ in range(n)]
    for p in procs:
        p.start()
    for _ in range(n):
        r.recv_bytes()
    time.sleep(0.2)
    t0 = time.perf_counter()
    ev.set()
    for p in procs:
        p.join()
    return time.perf_counter() - t0


def ours_teardown(n: int) -> float:
    """Returns the overshoot: stop() wall time minus grace + term."""
    sup = Supervisor(grace_period=GRACE, term_timeout=TERM)
    try:
        for target in (_coop, _sleeper, _deaf, _done):
            sup.spawn(target, replicas=n // 4)
        _all_running(sup, n // 4 * 3)
        time.sleep(0.3)
        t0 = time.perf_counter()
        report = sup.stop()
        took = time.perf_counter() - t0
        assert report.counts().get("killed") == n // 4, report.counts()
        return took - (GRACE + TERM)
    finally:
        sup.stop()


def raw_forced_stop(n: int) -> float:
    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            time.sleep(3600)
            os._exit(0)
        pids.append(pid)
    time.sleep(0.2)
    t0 = time.perf_counter()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for pid in pids:
        os.waitpid(pid, 0)
    return time.perf_counter() - t0


def _crash(n: int, until: str) -> float:
    """SIGKILL one of N running workers from outside; seconds until the manager noticed it
    (``until="notice"``: its exit event's timestamp) or its replacement runs (``"replacement"``)."""
    sup = Supervisor(strategy="one_for_one", grace_period=0, term_timeout=0)
    try:
        sup.spawn(_coop, replicas=n, restart="always")
        _all_running(sup, n)
        time.sleep(0.1)
        victim = sup.status()[0]
        assert victim.pid is not None
        t0 = time.time()
        os.kill(victim.pid, signal.SIGKILL)
        if until == "notice":
            with sup._cond:
                sup._cond.wait_for(lambda: any(e["event"] == "exited" for e in sup._events), 30)
                return float(next(e["time"] for e in sup._events if e["event"] == "exited")) - t0
        with sup._cond:
            sup._cond.wait_for(
                lambda: sup._statuses[victim.name].restarts == 1 and sup._statuses[victim.name].state == "running", 30
            )
        return time.time() - t0
    finally:
        sup.stop()


def raw_pidfd_notice(n: int) -> float:
    """Floor: SIGKILL a raw child; time until a pidfd poll in the parent wakes."""
    import select

    pid = os.fork()
    if pid == 0:
        time.sleep(3600)
        os._exit(0)
    fd = os.pidfd_open(pid)
    time.sleep(0.05)
    t0 = time.time()
    os.kill(pid, signal.SIGKILL)
    select.select([fd], [], [])
    took = time.time() - t0
    os.waitpid(pid, 0)
    os.close(fd)
    return took


def _per_call(fn: Callable[[], object], calls: int = 200_000) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def _context() -> WorkerContext:
    from supervisor._shm import ControlBlock, create_fd

    r, _w = os.pipe()
    return WorkerContext(
        name="b.0", pool="b", index=0, slot=0, control=ControlBlock(create_fd()), stop_fd=r, result_fd=_w
    )


def context_op(op: str) -> float:
    """Seconds per call of a WorkerContext method, or of its floor."""
    if op == "heartbeat":
        return _per_call(_context().heartbeat)
    if op == "should_stop":
        return _per_call(_context().should_stop)
    if op == "event":
        return _per_call(mp.get_context("fork").Event().is_set)
    import mmap
    import struct

    mem = mmap.mmap(-1, 4096)
    if op == "raw_flag":
        return _per_call(lambda: mem[0] == 1)
    pack, clock = struct.Struct("d").pack_into, time.monotonic
    return _per_call(lambda: pack(mem, 8, clock()))


# -- the runner ----------------------------------------------------------------------------------


def suite(sizes: list[int]) -> dict[str, list[tuple[str, int, Callable[[], float]]]]:
    def cases(
        label: str, fn: Callable[[int], float], max_n: int = 1 << 30
    ) -> list[tuple[str, int, Callable[[], float]]]:
        return [(f"{label} (N={n})", n, lambda n=n: fn(n)) for n in sizes if n <= max_n]  # type: ignore[misc]

    return {
        "startup (ms)": [
            *cases("ours fork", lambda n: ours_startup(n, "fork")),
            *cases("ours spawn", lambda n: ours_startup(n, "spawn"), 64),
            *cases("floor: raw os.fork", raw_fork_startup),
            *cases("peer: multiprocess fork", lambda n: mp_startup(n, "fork")),
            *cases("peer: multiprocess forkserver", lambda n: mp_startup(n, "forkserver"), 64),
            *cases("peer: multiprocess spawn", lambda n: mp_startup(n, "spawn"), 8),
        ],
        "cooperative (ms)": [
            *cases("ours request_stop -> all reaped", ours_cooperative),
            *cases("floor: multiprocess Event.set -> all joined", mp_cooperative),
        ],
        "crash (ms)": [
            *cases("ours SIGKILL -> manager notices", lambda n: _crash(n, "notice"), 8),
            *cases("ours SIGKILL -> replacement running", lambda n: _crash(n, "replacement"), 8),
            *cases("floor: SIGKILL -> pidfd wakes the parent", raw_pidfd_notice, 8),
        ],
        "context (ns per call)": [
            ("ours ctx.heartbeat()", 0, lambda: context_op("heartbeat") * 1e6),
            ("ours ctx.should_stop()", 0, lambda: context_op("should_stop") * 1e6),
            ("floor: struct.pack_into(mmap, monotonic())", 0, lambda: context_op("raw_beat") * 1e6),
            ("floor: mmap byte read", 0, lambda: context_op("raw_flag") * 1e6),
            ("peer: multiprocess Event.is_set()", 0, lambda: context_op("event") * 1e6),
        ],
        "teardown (ms)": [
            *cases("ours overshoot past grace+term", ours_teardown),
            *cases("floor: SIGKILL + reap raw children", raw_forced_stop),
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 8 and 64 only, 3 runs")
    parser.add_argument("--only", help="one metric only: startup, cooperative, crash, context or teardown")
    parser.add_argument("--runs", type=int, default=None, help="repetitions per figure (default 7, quick 3)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args()
    sizes = [8, 64] if args.quick else [8, 64, 256]
    runs = args.runs or (3 if args.quick else 7)
    results: dict[str, list[dict[str, Any]]] = {}
    for metric, cases in suite(sizes).items():
        if args.only and not metric.startswith(args.only):
            continue
        rows = []
        for label, n, fn in cases:
            stats = _median(fn, runs)
            rows.append({"case": label, "n": n, **{k: round(v * 1000, 2) for k, v in stats.items()}})
            if not args.json:
                print(f"  {metric:12s} {label:55s} {rows[-1]['median']:9.2f} ms", file=sys.stderr, flush=True)
        results[metric] = rows
    if args.json:
        print(json.dumps({"runs": runs, "cpus": os.cpu_count(), "results": results}, indent=2))
        return
    for metric, rows in results.items():
        print(f"\n## {metric}: median of {runs} [min, max]")
        for row in rows:
            ratio = _ratio(row, rows)
            print(f"  {row['case']:55s} {row['median']:9.2f}  [{row['min']:.2f}, {row['max']:.2f}]{ratio}")


def _ratio(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """For our rows: our median over each floor/peer median at the same N."""
    if not row["case"].startswith("ours"):
        return ""
    parts = []
    for other in rows:
        if other["n"] == row["n"] and not other["case"].startswith("ours") and other["median"] > 0:
            name = other["case"].split(" (N=")[0]
            parts.append(f"{row['median'] / other['median']:.2f}x {name}")
    return "   = " + ", ".join(parts) if parts else ""


if __name__ == "__main__":
    main()
