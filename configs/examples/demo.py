"""Synthetic work for the demo: readers and decoders that end by themselves, or stop when asked."""

from __future__ import annotations

import hashlib
import os
import signal
import time

from supervisor import WorkerContext


def read_shards(ctx: WorkerContext, shards: int, shard_seconds: float) -> None:
    """'Read' ``shards`` synthetic shards, taking ``shard_seconds`` each; stops early if asked."""
    total = 0
    for shard in range(ctx.index, shards * 2, 2)[:shards]:
        data = os.urandom(1 << 20)
        total += len(data)
        ctx.heartbeat()
        print(f"read shard {shard:02d} ({len(data) >> 10} KiB, sha256 {hashlib.sha256(data).hexdigest()[:12]})")
        if ctx.wait(shard_seconds):
            print("asked to stop: leaving early")
            return
    print(f"done: {total >> 20} MiB read")


def decode(ctx: WorkerContext, batches: int, batch_seconds: float) -> None:
    """'Decode' ``batches`` batches of synthetic records with a little real CPU work each."""
    for batch in range(batches):
        deadline = time.monotonic() + batch_seconds / 2
        rounds = 0
        digest = b"seed"
        while time.monotonic() < deadline:
            digest = hashlib.sha256(digest).digest()
            rounds += 1
        ctx.heartbeat()
        print(f"decoded batch {batch} ({rounds} hash rounds)")
        if ctx.wait(batch_seconds / 2):
            return
    print("all batches decoded")


def cooperative(ctx: WorkerContext) -> None:
    """Checks the stop event every 100 ms: ends within the grace period (outcome: stopped)."""
    while not ctx.wait(0.1):
        ctx.heartbeat()
    print("stop seen, cleaning up")


def stubborn(ctx: WorkerContext) -> None:
    """Never looks at the context: SIGTERM ends it (outcome: terminated)."""
    print("sleeping for an hour")
    time.sleep(3600)


def deaf(ctx: WorkerContext) -> None:
    """Ignores SIGTERM: only SIGKILL ends it (outcome: killed)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ignoring SIGTERM")
    while True:
        time.sleep(1)


def stop_everyone_after(ctx: WorkerContext, seconds: float) -> None:
    """Waits ``seconds``, then asks every worker to stop (as a Coordinator thread would)."""
    if not ctx.wait(seconds):
        print(f"{seconds} s are up: requesting a stop for everyone")
        ctx.request_stop()
