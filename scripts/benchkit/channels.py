"""Channel throughput: ours against a raw multiprocessing.Queue, one consumer (the parent).

Every producer is a separate process putting ``count / producers`` items; the parent receives
them all and is timed from the first item to the last. Items are ``bytes`` of 1 KiB, or NumPy
arrays of 1 MiB / 16 MiB (the form a pipeline moves).
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

from supervisor import Supervisor, WorkerContext


def _item(size: int) -> Any:
    if size <= 4096:
        return b"x" * size
    import numpy as np

    return np.ones(size, dtype=np.uint8)


def _ours_produce(ctx: WorkerContext, size: int, count: int) -> None:
    out, item = ctx.outputs[0], _item(size)
    for _ in range(count):
        out.put(item)


def channel_rate(size: int, count: int, producers: int = 1) -> float:
    """Items per second through one of our channels into the owner."""
    with Supervisor(grace_period=5, term_timeout=5) as sup:
        ch = sup.channel("bench", capacity=64)
        sup.spawn(_ours_produce, replicas=producers, args=(size, count // producers), outputs=["bench"])
        received = 0
        it = iter(ch)
        next(it)
        t0 = time.perf_counter()
        for _ in it:
            received += 1
        took = time.perf_counter() - t0
        sup.join()
    return received / took


def _queue_produce(q: Any, size: int, count: int) -> None:
    item = _item(size)
    for _ in range(count):
        q.put(item)


def queue_rate(size: int, count: int, producers: int = 1) -> float:
    """Items per second through a raw ``multiprocessing.Queue`` (fork) into the parent."""
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue(maxsize=64)
    procs = [ctx.Process(target=_queue_produce, args=(q, size, count // producers)) for _ in range(producers)]
    for p in procs:
        p.start()
    total = (count // producers) * producers
    q.get()
    t0 = time.perf_counter()
    for _ in range(total - 1):
        q.get()
    took = time.perf_counter() - t0
    for p in procs:
        p.join()
    return (total - 1) / took
