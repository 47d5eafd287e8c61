"""The harness's ends of the ready and stop FIFOs (see ``behaviours``)."""

from __future__ import annotations

import os
import select
import struct
import time

from . import behaviours


class Fifos:
    """Creates both FIFOs in ``folder`` and exports their paths to every process started later.

    The harness holds each open read-write, so a worker's ``open()`` never blocks and a stop byte
    written before a worker opens the FIFO is still there for it.
    """

    def __init__(self, folder: str) -> None:
        self.ready_path = os.path.join(folder, "ready")
        self.stop_path = os.path.join(folder, "stop")
        os.mkfifo(self.ready_path, 0o600)
        os.mkfifo(self.stop_path, 0o600)
        self._ready = os.open(self.ready_path, os.O_RDWR | os.O_NONBLOCK)
        self._stop = os.open(self.stop_path, os.O_RDWR | os.O_NONBLOCK)
        os.environ[behaviours.READY_ENV] = self.ready_path
        os.environ[behaviours.STOP_ENV] = self.stop_path
        self._buf = b""

    def wait_ready(self, count: int, timeout: float) -> list[int] | None:
        """The pids of the next ``count`` workers to report ready, or None after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        need = 4 * count
        while len(self._buf) < need:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._ready], [], [], left)[0]:
                return None
            try:
                self._buf += os.read(self._ready, 1 << 16)
            except BlockingIOError:
                continue
        chunk, self._buf = self._buf[:need], self._buf[need:]
        return [struct.unpack_from("<i", chunk, i)[0] for i in range(0, need, 4)]

    def buffered(self) -> int:
        """How many workers reported ready without being collected by ``wait_ready`` yet."""
        return len(self._buf) // 4

    def request_stop(self, count: int) -> None:
        """One stop byte per worker (a single write, atomic for up to PIPE_BUF bytes)."""
        os.write(self._stop, b"s" * count)
