"""Bounded, stop-aware channels between pools (and the owner): many producers, many consumers.

Built from kernel objects only, so that no process can wedge a channel by dying mid-operation:

- A ``SOCK_SEQPACKET`` socket pair carries the items. Every send and every receive moves exactly
  one whole message, however many producers share one end and consumers the other: no lock.
- A pipe holds one byte per free place (a *credit*). A producer takes one before sending and a
  consumer gives one back after receiving, so at most ``capacity`` items are ever in the channel.
- Items up to ``INLINE`` bytes travel inside the message. Larger ones go into a memfd whose
  descriptor travels with the message (``SCM_RIGHTS``): pickle protocol 5 buffers (NumPy arrays)
  are copied once by the producer and mapped by the consumer without a copy; ``bytes`` are copied
  once on each side. A memfd has no name, so when the last process holding it dies the kernel frees
  it: nothing can pile up in ``/dev/shm``.
- End-of-stream is a marker message the manager sends to each consumer once every producer of the
  channel has ended (and will not be restarted), after the items already sent.
- Each process counts, in the control block, the credits it took and gave and the items it sent
  and received (one writer per counter: the worker's threads take a lock). When a worker dies the
  manager gives back the credits it held. Every counter errs towards "held", so a death can only
  make a channel one place larger (the credit pipe drops credits beyond its room), never smaller.
  Processes a worker forks share its counters: they should not use its channels.

``put`` and ``get`` raise ``Stopped`` as soon as a stop is requested, even while blocked.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import pickle
import queue
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ._shm import ControlBlock
from .errors import Stopped

INLINE = 64 * 1024  # bytes of pickle carried inside a message; more goes through a memfd
MAX_CAPACITY = 65536  # credits are bytes in a pipe
SNDBUF = 4 << 20
_HEADER = struct.Struct("!cII")  # kind, pickle length, buffer count
_BUF = struct.Struct("!QQ")  # offset, length of one out-of-band buffer in the memfd
ITEM, MAPPED, RAW, END = b"I", b"M", b"B", b"E"
TAKEN, GIVEN, SENT, RECEIVED = range(4)  # the per-process counters


class EndOfStream(Exception):
    """Every producer of the channel has ended and every item sent has been received."""


@dataclass(frozen=True)
class ChannelSpec:
    """A channel's name, size and descriptors (the same numbers in every process that has them)."""

    name: str
    index: int
    capacity: int
    send_fd: int  # producers' end of the socket pair
    recv_fd: int  # consumers' end
    credit_r: int  # producers take credits here
    credit_w: int  # consumers give them back here

    @property
    def fds(self) -> tuple[int, int, int, int]:
        return (self.send_fd, self.recv_fd, self.credit_r, self.credit_w)


def create(name: str, index: int, capacity: int) -> ChannelSpec:
    """New descriptors for a channel with ``capacity`` credits."""
    if isinstance(capacity, bool) or not isinstance(capacity, int) or not 1 <= capacity <= MAX_CAPACITY:
        raise ValueError(f"capacity must be a whole number from 1 to {MAX_CAPACITY}, not {capacity!r}")
    send, recv = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (send, recv):
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SNDBUF)
        except OSError:
            pass
    credit_r, credit_w = os.pipe()
    if hasattr(fcntl, "F_SETPIPE_SZ"):  # room for twice the credits: a give-back never blocks
        with contextlib.suppress(OSError):
            fcntl.fcntl(credit_w, fcntl.F_SETPIPE_SZ, max(65536, 2 * capacity))
    os.set_blocking(credit_w, False)  # full means "all credits are home": extra ones are dropped
    try:
        written = os.write(credit_w, b"c" * capacity)
    except BlockingIOError:
        written = 0
    if written != capacity:
        for fd in (credit_r, credit_w):
            os.close(fd)
        send.close()
        recv.close()
        raise OSError(f"channel {name!r}: the system cannot hold {capacity} credits in a pipe")
    return ChannelSpec(name, index, capacity, send.detach(), recv.detach(), credit_r, credit_w)


def send_end_markers(spec: ChannelSpec, count: int) -> int:
    """Send up to ``count`` end-of-stream markers without blocking; how many went."""
    sent = 0
    while sent < count:
        try:
            socket.send_fds(_sock(spec.send_fd), [_HEADER.pack(END, 0, 0)], [], socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        sent += 1
    return sent


_sockets: dict[int, socket.socket] = {}


def _sock(fd: int) -> socket.socket:
    """A socket object for ``fd`` that never closes it (the fd belongs to the channel spec)."""
    s = _sockets.get(fd)
    if s is None:  # kept for the life of the process: closing it would close the channel's fd
        s = _sockets[fd] = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, fileno=fd)
    return s


def encode(item: Any) -> tuple[bytes, int | None]:
    """The message for ``item`` and, for a large one, the memfd holding its data."""
    if isinstance(item, (bytes, bytearray, memoryview)) and memoryview(item).nbytes > INLINE:
        return _HEADER.pack(RAW, 0, 1), _memfd([memoryview(item).cast("B")])
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(item, protocol=5, buffer_callback=buffers.append)
    if not buffers and len(data) <= INLINE:
        return _HEADER.pack(ITEM, len(data), 0) + data, None
    if len(buffers) * _BUF.size > INLINE:  # too many buffers to list in one message: one blob
        data, buffers = pickle.dumps(item, protocol=5), []
    views = [memoryview(data), *(b.raw() for b in buffers)]
    table = b"".join(_BUF.pack(0, v.nbytes) for v in views[1:])
    return _HEADER.pack(MAPPED, len(data), len(buffers)) + table, _memfd(views)


def _memfd(views: list[memoryview]) -> int:
    """A memfd holding ``views`` back to back (one copy, by the kernel: no page faults here)."""
    fd = os.memfd_create("supervisor-item", os.MFD_CLOEXEC)
    try:
        at, total = 0, sum(v.nbytes for v in views)
        while at < total:  # pwritev may write less than asked
            done, skip = at, at
            batch = []
            for v in views:
                if skip >= v.nbytes:
                    skip -= v.nbytes
                    continue
                batch.append(v[skip:])
                skip = 0
            at = done + os.pwritev(fd, batch, done)
        if total == 0:
            os.ftruncate(fd, 1)
    except BaseException:
        os.close(fd)
        raise
    return fd


def decode(message: bytes, fd: int | None) -> Any:
    """The item in ``message`` (its data mapped from ``fd`` when there is one)."""
    kind, length, count = _HEADER.unpack_from(message)
    if kind == ITEM:
        return pickle.loads(memoryview(message)[_HEADER.size : _HEADER.size + length])
    if fd is None:
        raise ValueError("a large item arrived without its data")
    try:
        size = os.fstat(fd).st_size
        mem = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    view = memoryview(mem)
    if kind == RAW:
        return bytes(view)
    buffers, at = [], length
    for i in range(count):
        _, n = _BUF.unpack_from(message, _HEADER.size + i * _BUF.size)
        buffers.append(view[at : at + n])
        at += n
    return pickle.loads(view[:length], buffers=buffers)


class Channel:
    """One process's handle on a channel. Iterating it yields items until end-of-stream.

    ``should_stop`` and ``stop_fd`` make blocking operations stop-aware; ``counters`` (control
    block and slot) are absent in the owner, whose death ends the whole run anyway.
    """

    def __init__(
        self,
        spec: ChannelSpec,
        should_stop: Callable[[], bool],
        stop_fd: int | None,
        counters: tuple[ControlBlock, int] | None = None,
        on_first_get: Callable[[], None] | None = None,
        on_first_put: Callable[[], None] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.capacity = spec.capacity
        self._should_stop = should_stop
        self._stop_fd = stop_fd
        self._counters = counters
        self._on_first_get = on_first_get
        self._on_first_put = on_first_put
        self._on_close = on_close
        self._ended = False
        self._count_lock = threading.Lock()
        for fd in (spec.credit_r, spec.recv_fd):
            os.set_blocking(fd, False)

    def __repr__(self) -> str:
        return f"<Channel {self.name} capacity={self.capacity}>"

    def _count(self, which: int, delta: int) -> None:
        if self._counters is not None:
            control, slot = self._counters
            with self._count_lock:  # threads of one worker share its counters
                control.count(slot, self.spec.index, which, delta)

    def _wait(self, fd: int, event: int, deadline: float | None, timeout_error: type[Exception]) -> None:
        """Block until ``fd`` is ready for ``event``; Stopped or ``timeout_error`` otherwise."""
        poller = select.poll()
        poller.register(fd, event)
        if self._stop_fd is not None:
            poller.register(self._stop_fd, select.POLLIN)
        while True:
            if self._should_stop():
                raise Stopped(f"channel {self.name}: a stop was requested")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise timeout_error(f"channel {self.name}: timed out")
            ready = poller.poll(None if left is None else max(1, int(left * 1000)))
            if any(f == fd for f, _ in ready):
                return
            if ready:  # the stop pipe: this process was asked to stop
                raise Stopped(f"channel {self.name}: a stop was requested")

    def put(self, item: Any, timeout: float | None = None) -> None:
        """Add ``item``, waiting while the channel is full; ``queue.Full`` after ``timeout`` s."""
        if self._on_first_put is not None:
            self._on_first_put()
            self._on_first_put = None
        message, fd = encode(item)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._take_credit(deadline)
            try:
                self._send(message, fd, deadline)
            except BaseException:
                self._give_credit()
                raise
        finally:
            if fd is not None:
                os.close(fd)
        self._count(SENT, 1)

    def _take_credit(self, deadline: float | None) -> None:
        if self._should_stop():
            raise Stopped(f"channel {self.name}: a stop was requested")
        while True:
            self._count(TAKEN, 1)  # counted first: a death in between errs towards "held"
            try:
                if os.read(self.spec.credit_r, 1):
                    return
            except BlockingIOError:
                pass
            self._count(TAKEN, -1)
            self._wait(self.spec.credit_r, select.POLLIN, deadline, queue.Full)

    def _give_credit(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full: every credit is home already
            os.write(self.spec.credit_w, b"c")
        self._count(GIVEN, 1)

    def _send(self, message: bytes, fd: int | None, deadline: float | None) -> None:
        sock = _sock(self.spec.send_fd)
        while True:
            try:
                socket.send_fds(sock, [message], [fd] if fd is not None else [], socket.MSG_DONTWAIT)
                return
            except BlockingIOError:
                self._wait(self.spec.send_fd, select.POLLOUT, deadline, queue.Full)

    def get(self, timeout: float | None = None) -> Any:
        """The next item, waiting while the channel is empty.

        ``EndOfStream`` once every producer has ended and the channel is drained; ``queue.Empty``
        after ``timeout`` s.
        """
        if self._ended:
            raise EndOfStream(self.name)
        if self._on_first_get is not None:
            self._on_first_get()
            self._on_first_get = None
        if self._should_stop():
            raise Stopped(f"channel {self.name}: a stop was requested")
        deadline = None if timeout is None else time.monotonic() + timeout
        sock = _sock(self.spec.recv_fd)
        while True:
            self._count(RECEIVED, 1)  # counted first, as for credits
            try:
                message, fds, _, _ = socket.recv_fds(sock, INLINE + 4096, 1, socket.MSG_DONTWAIT)
            except BlockingIOError:
                self._count(RECEIVED, -1)
                self._wait(self.spec.recv_fd, select.POLLIN, deadline, queue.Empty)
                continue
            if message[:1] == END:
                self._count(RECEIVED, -1)
                self._ended = True
                raise EndOfStream(self.name)
            self._give_credit()
            return decode(message, fds[0] if fds else None)

    def close(self) -> None:
        """In the owner: no more puts from here (workers' production ends when they exit)."""
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

    def __iter__(self) -> Iterator[Any]:
        while True:
            try:
                yield self.get()
            except EndOfStream:
                return


def held_credits(control: ControlBlock, slot: int, index: int) -> int:
    """Credits a (dead) worker still held in channel ``index``: taken + received - sent - given."""
    c = [control.counter(slot, index, which) for which in (TAKEN, GIVEN, SENT, RECEIVED)]
    return c[TAKEN] + c[RECEIVED] - c[SENT] - c[GIVEN]


def give_back(spec: ChannelSpec, credits: int) -> None:
    if credits > 0:
        with contextlib.suppress(BlockingIOError):
            os.write(spec.credit_w, b"c" * credits)


@dataclass
class _Route:
    """The manager's view of one channel: who feeds it, who reads it, and its end."""

    spec: ChannelSpec
    producers: set[str]  # pools with the channel in their outputs
    consumers: set[str]  # pools with it in their inputs
    owner_producing: bool = False  # the owner put into it and has not closed it
    owner_closed: bool = False
    owner_consuming: bool = False
    ended: bool = False  # every producer has ended: end markers are due
    markers_due: int = 0


class ChannelTable:
    """The manager's channels: end-of-stream, and credits given back for dead workers."""

    def __init__(self) -> None:
        self.routes: dict[str, _Route] = {}

    def add(self, spec: ChannelSpec) -> None:
        self.routes[spec.name] = _Route(spec, set(), set())

    def specs(self) -> tuple[ChannelSpec, ...]:
        return tuple(r.spec for r in self.routes.values())

    def declare(self, pool: str, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
        for name in inputs:
            self.routes[name].consumers.add(pool)
        for name in outputs:
            self.routes[name].producers.add(pool)

    def owner(self, verb: str, name: str) -> None:
        """The owner started consuming, started producing or closed its producing end."""
        route = self.routes[name]
        if verb == "consume" and not route.owner_consuming:
            route.owner_consuming = True
            route.markers_due += route.ended
        elif verb == "produce":
            route.owner_producing = True
        elif verb == "close":
            route.owner_closed = True

    def consumer_started(self, pool: str) -> None:
        """A consumer (re)started after its channel ended: it needs an end marker of its own."""
        for route in self.routes.values():
            if route.ended and pool in route.consumers:
                route.markers_due += 1

    def worker_exited(self, control: ControlBlock, slot: int) -> None:
        for route in self.routes.values():
            give_back(route.spec, held_credits(control, slot, route.spec.index))

    def update(self, producing: Callable[[str], bool], consumers: Callable[[str], int]) -> None:
        """End the channels whose producers are all gone; send the end markers that fit."""
        for route in self.routes.values():
            fed = bool(route.producers) or route.owner_producing
            owner_done = not route.owner_producing or route.owner_closed
            if not route.ended and fed and owner_done and not any(producing(p) for p in route.producers):
                route.ended = True
                route.markers_due += sum(consumers(p) for p in route.consumers) + route.owner_consuming
            if route.markers_due:
                route.markers_due -= send_end_markers(route.spec, route.markers_due)

    @property
    def pending(self) -> bool:
        return any(r.markers_due for r in self.routes.values())
