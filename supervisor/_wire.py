"""Length-prefixed pickle frames over a file descriptor: the only wire format between our processes.

Frames carry plain pickles of our own tuples; user objects (targets, exceptions) travel inside
them as opaque dill bytes that only a worker or the owner unpickles.
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any

_LEN = struct.Struct("!I")


def encode(msg: Any) -> bytes:
    body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(body)) + body


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to a blocking fd."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def send(fd: int, msg: Any) -> None:
    write_all(fd, encode(msg))


class Reader:
    """Reassembles frames from chunks read off a non-blocking or blocking fd."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, chunk: bytes) -> list[Any]:
        self.buf += chunk
        out: list[Any] = []
        while len(self.buf) >= _LEN.size:
            (n,) = _LEN.unpack_from(self.buf)
            if len(self.buf) < _LEN.size + n:
                break
            body = bytes(self.buf[_LEN.size : _LEN.size + n])
            del self.buf[: _LEN.size + n]
            out.append(pickle.loads(body))
        return out

    def drain(self, fd: int) -> tuple[list[Any], bool]:
        """Read what is there without blocking (fd must be non-blocking): (messages, at_eof)."""
        msgs: list[Any] = []
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                return msgs, False
            except OSError:
                return msgs, True
            if not chunk:
                return msgs, True
            msgs.extend(self.feed(chunk))
