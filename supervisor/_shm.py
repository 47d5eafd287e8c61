"""The control block: one shared memory page set mapped by the owner, the manager and every worker.

Layout (all offsets in bytes):
- ``0``: the global stop flag; once 1 it never goes back to 0 (a stop is final).
- ``SLOT_BASE + 64 * slot``: a slot of 64 bytes: ``+0`` the slot's own stop flag (reset to 0 only
  by the manager before it starts a new incarnation), ``+8`` the last heartbeat as a
  ``time.monotonic()`` double (0.0 = none yet).
- ``COUNTER_BASE + 32 * (slot * MAX_CHANNELS + channel)``: four signed 64-bit channel counters of
  one worker (see ``channels``); each is written by that worker only, and reset with its slot.

Reading a flag or writing a heartbeat is a plain memory access: no system call.
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile

SLOT_BASE = 64
SLOT_SIZE = 64
MAX_SLOTS = 8192
MAX_CHANNELS = 32
COUNTER_BASE = SLOT_BASE + SLOT_SIZE * MAX_SLOTS
SIZE = COUNTER_BASE + 32 * MAX_SLOTS * MAX_CHANNELS
_HEARTBEAT = struct.Struct("d")
_COUNTER = struct.Struct("q")
_ZERO_COUNTERS = bytes(32 * MAX_CHANNELS)


def create_fd() -> int:
    """A new, zero-filled, unnamed file of ``SIZE`` bytes; inheritable so it can be passed on."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("supervisor-control", 0)
    else:  # macOS: an unlinked temporary file
        fd, path = tempfile.mkstemp(prefix="supervisor-control-")
        os.unlink(path)
    os.ftruncate(fd, SIZE)
    os.set_inheritable(fd, True)
    return fd


class ControlBlock:
    """A view on the control block mapped from ``fd`` (the caller keeps or closes the fd)."""

    __slots__ = ("fd", "mem")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.mem = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    @staticmethod
    def _slot(slot: int) -> int:
        if not 0 <= slot < MAX_SLOTS:
            raise ValueError(f"slot {slot} out of range (at most {MAX_SLOTS} worker slots)")
        return SLOT_BASE + SLOT_SIZE * slot

    def stop_all(self) -> None:
        self.mem[0] = 1

    def all_stopped(self) -> bool:
        return self.mem[0] == 1

    def stop_slot(self, slot: int) -> None:
        self.mem[self._slot(slot)] = 1

    def should_stop(self, slot: int) -> bool:
        mem = self.mem
        return mem[0] == 1 or mem[SLOT_BASE + SLOT_SIZE * slot] == 1

    def reset_slot(self, slot: int) -> None:
        off = self._slot(slot)
        self.mem[off] = 0
        _HEARTBEAT.pack_into(self.mem, off + 8, 0.0)
        base = COUNTER_BASE + 32 * MAX_CHANNELS * slot
        self.mem[base : base + len(_ZERO_COUNTERS)] = _ZERO_COUNTERS

    def count(self, slot: int, channel: int, which: int, delta: int) -> None:
        """Add ``delta`` to one of a worker's channel counters (only that worker writes it)."""
        off = COUNTER_BASE + 32 * (slot * MAX_CHANNELS + channel) + 8 * which
        _COUNTER.pack_into(self.mem, off, _COUNTER.unpack_from(self.mem, off)[0] + delta)

    def counter(self, slot: int, channel: int, which: int) -> int:
        off = COUNTER_BASE + 32 * (slot * MAX_CHANNELS + channel) + 8 * which
        return int(_COUNTER.unpack_from(self.mem, off)[0])

    def beat(self, slot: int, now: float) -> None:
        _HEARTBEAT.pack_into(self.mem, SLOT_BASE + SLOT_SIZE * slot + 8, now)

    def last_beat(self, slot: int) -> float:
        return float(_HEARTBEAT.unpack_from(self.mem, self._slot(slot) + 8)[0])
