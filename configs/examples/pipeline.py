"""A synthetic input pipeline: shards are read, decoded by several workers, batched, and consumed.

Each stage iterates its input channel until end-of-stream and writes to its output channel, so the
pipeline finishes by itself, stage by stage, once the readers have read every shard.
"""

from __future__ import annotations

import hashlib
import os
import time

from supervisor import WorkerContext


def read_shards(ctx: WorkerContext, shards: int, records: int, record_bytes: int) -> None:
    """Reader ``i`` of ``n`` reads shards i, i+n, ...: ``records`` random records per shard."""
    out = ctx.outputs[0]
    readers = int(os.environ.get("READERS", "1"))
    for shard in range(ctx.index, shards, readers):
        for record in range(records):
            out.put((shard, record, os.urandom(record_bytes)))
        ctx.heartbeat()
    print(f"read shards {ctx.index}, {ctx.index + readers}, ... of {shards}")


def decode(ctx: WorkerContext) -> None:
    """'Decodes' a record: a little real CPU work per record."""
    out = ctx.outputs[0]
    count = 0
    for shard, record, payload in ctx.inputs[0]:
        digest = hashlib.sha256(payload).digest()
        out.put((shard, record, digest[:8], len(payload)))
        count += 1
    print(f"decoded {count} records")


def batch(ctx: WorkerContext, size: int) -> None:
    """Groups decoded records into batches of ``size`` (the last one may be smaller)."""
    out = ctx.outputs[0]
    pending: list[tuple[int, int, bytes, int]] = []
    for item in ctx.inputs[0]:
        pending.append(item)
        if len(pending) == size:
            out.put(pending)
            pending = []
    if pending:
        out.put(pending)


def train(ctx: WorkerContext) -> None:
    """Consumes batches and reports throughput, as a training loop would."""
    start = time.monotonic()
    batches = records = size = 0
    for items in ctx.inputs[0]:
        batches += 1
        records += len(items)
        size += sum(item[3] for item in items)
    took = max(time.monotonic() - start, 1e-9)
    print(f"consumed {batches} batches, {records} records, {size >> 20} MiB in {took:.2f} s: "
          f"{records / took:,.0f} records/s, {size / took / 2**20:,.1f} MiB/s")  # fmt: skip
