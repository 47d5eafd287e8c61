"""Measurements run inside the benchmark process: the hardware floors, raw queues, and the cost of
our worker context's calls. None of them can hang (raw children, SIGKILL, no peer code).

Each function returns seconds (or a rate) for one repetition.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing
import os
import select
import signal
import struct
import time
from collections.abc import Callable
from typing import Any

import multiprocess as mp

from supervisor import WorkerContext

# -- start-up floors -----------------------------------------------------------------------------


def _mp_ready(conn: Any) -> None:
    conn.send_bytes(b"x")


def _read_n(fd: int, n: int) -> None:
    got = 0
    while got < n:
        got += len(os.read(fd, n - got))


def raw_fork_startup(n: int) -> float:
    """N children from a bare ``os.fork`` loop, each writing one byte to a pipe when running."""
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


def mp_startup(n: int, method: str) -> float:
    """N ``multiprocess`` Processes of a start method, each sending a byte when running."""
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


def stop_helpers() -> None:
    """End the forkserver and resource tracker that the start-up floors started in this process."""
    from multiprocess import forkserver, resource_tracker

    for helper in (forkserver._forkserver, resource_tracker._resource_tracker):
        with contextlib.suppress(Exception):
            helper._stop()


# -- stop floors ---------------------------------------------------------------------------------


def _mp_wait(ev: Any, conn: Any) -> None:
    conn.send_bytes(b"x")
    ev.wait()


def mp_cooperative(n: int) -> float:
    """Children blocked in ``Event.wait()``: set, then join them all."""
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


def raw_forced_stop(n: int) -> float:
    """SIGKILL N sleeping raw children and reap them all."""
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


def raw_pidfd_notice() -> float:
    """SIGKILL a raw child; time until a pidfd poll in the parent wakes."""
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


# -- channels: raw multiprocessing.Queue --------------------------------------------------------


def _produce(q: Any, size: int, count: int) -> None:
    payload = b"x" * size
    for _ in range(count):
        q.put(payload)


def queue_rate(size: int, count: int) -> float:
    """Items per second through a ``multiprocessing.Queue`` from a child to the parent
    (timed from the first item received to the last)."""
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_produce, args=(q, size, count))
    p.start()
    q.get()
    t0 = time.perf_counter()
    for _ in range(count - 1):
        q.get()
    took = time.perf_counter() - t0
    p.join()
    q.close()
    return (count - 1) / took


# -- our worker context's calls -----------------------------------------------------------------


def _per_call(fn: Callable[[], object], calls: int = 200_000) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def _context() -> WorkerContext:
    from supervisor._shm import ControlBlock, create_fd  # benchmark-only: a context without a worker

    r, w = os.pipe()
    return WorkerContext(
        name="b.0", pool="b", index=0, slot=0, control=ControlBlock(create_fd()), stop_fd=r, result_fd=w
    )


def context_op(op: str) -> float:
    """Seconds per call of a WorkerContext method, or of its floor."""
    if op == "heartbeat":
        return _per_call(_context().heartbeat)
    if op == "should_stop":
        return _per_call(_context().should_stop)
    if op == "event":
        return _per_call(mp.get_context("fork").Event().is_set)
    mem = mmap.mmap(-1, 4096)
    if op == "raw_flag":
        return _per_call(lambda: mem[0] == 1)
    pack, clock = struct.Struct("d").pack_into, time.monotonic
    return _per_call(lambda: pack(mem, 8, clock()))
