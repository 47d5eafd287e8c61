"""Worker output, prefixed by worker name, written by the manager without ever blocking it.

Lines are only ever written whole, so two workers never interleave mid-line. The sink never
blocks the manager's loop (a stalled terminal or a full pipe must not stall a teardown): it writes
only what ``poll`` says fits and keeps at most ``LIMIT`` bytes waiting, counting what it drops.
"""

from __future__ import annotations

import os
import select
import stat

LIMIT = 1 << 20  # bytes of output held back at most per destination
CHUNK = 4096  # <= PIPE_BUF: a write this size to a writable pipe neither blocks nor splits
MAX_LINE = 1 << 16  # a longer line without a newline is cut and written anyway
_COLOURS = (36, 33, 32, 35, 34, 31, 96, 93, 92, 95, 94, 91)


class Sink:
    """Bounded, non-blocking writer of whole lines to one fd (shared with the owner)."""

    def __init__(self, fd: int) -> None:
        self.colour = os.isatty(fd) and not os.environ.get("NO_COLOR")  # https://no-color.org
        self.fd = _nonblocking(fd)
        self.buf = bytearray()
        self.dropped = 0  # bytes dropped since the last note about it
        self._poll = select.poll()
        self._poll.register(self.fd, select.POLLOUT)

    def write(self, line: bytes) -> None:
        if len(self.buf) + len(line) > LIMIT:
            self.dropped += len(line)
            return
        if self.dropped:
            self.buf += f"[supervisor: {self.dropped} bytes of worker output dropped]\n".encode()
            self.dropped = 0
        self.buf += line
        self.flush()

    def flush(self) -> None:
        """Write what fits now; what does not stays for the next call."""
        while self.buf:
            events = self._poll.poll(0)
            if not events or events[0][1] & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                if events:  # nobody is reading any more: drop it all
                    self.buf.clear()
                return
            try:
                n = os.write(self.fd, self.buf[:CHUNK])
            except BlockingIOError:
                return
            except OSError:
                self.buf.clear()
                return
            del self.buf[:n]

    @property
    def pending(self) -> bool:
        return bool(self.buf)


def _nonblocking(fd: int) -> int:
    """A descriptor for the same file that never blocks us, and leaves the owner's fd as it is.

    A terminal or pipe is opened again through ``/proc/self/fd`` (a new open file description,
    whose O_NONBLOCK is ours alone); a regular file never blocks for long. Elsewhere (macOS), the
    shared fd is kept and writes go only as far as ``poll`` allows.
    """
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return fd
    if stat.S_ISREG(mode):
        return fd
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return fd


class Splitter:
    """Cuts one worker stream into prefixed lines for a sink."""

    def __init__(self, name: str, colour_index: int, sink: Sink) -> None:
        if sink.colour:
            code = _COLOURS[colour_index % len(_COLOURS)]
            self.prefix = f"\x1b[{code}m{name} |\x1b[0m ".encode()
        else:
            self.prefix = f"{name} | ".encode()
        self.sink = sink
        self.partial = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.partial += chunk
        while True:
            nl = self.partial.find(b"\n")
            if nl < 0:
                if len(self.partial) >= MAX_LINE:
                    nl = MAX_LINE - 1
                else:
                    return
            self.sink.write(self.prefix + bytes(self.partial[: nl + 1]).rstrip(b"\n") + b"\n")
            del self.partial[: nl + 1]

    def close(self) -> None:
        if self.partial:
            self.sink.write(self.prefix + bytes(self.partial) + b"\n")
            self.partial.clear()
