"""``tf.compat.v1.train.Coordinator`` for worker processes, with a ``join`` that ends what it waits for.

Port thread code by importing ``Coordinator`` from here and starting workers with
``multiprocess.Process`` instead of ``threading.Thread`` (the coordinator is a Process argument).
``join`` waits like TensorFlow's, but processes still alive after the grace period get SIGTERM, then
SIGKILL, to their whole process tree. See ``docs/migration.md`` for every difference.

Shared state, the same in every process holding the coordinator. None of it is a lock, so a worker
killed at any instant (even inside ``should_stop``) cannot wedge the others, as it could by dying
while holding a ``multiprocessing.Event``'s internal lock:

- a memfd mapping: the stop flag, the joined flag, and the first requested exception (bytes);
- a token pipe holding one byte while no stop is requested: taking it (non-blocking read) is the
  atomic "this request is the first", and only its taker writes the exception;
- a wake pipe that gets a byte once the stop flag is set: ``wait_for_stop`` sleeps in ``poll`` on it.

All are file descriptors, which a starting Process hands to its child whatever the start method
(fork, forkserver, spawn) and whichever library (``multiprocess`` or ``multiprocessing``).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import multiprocessing
import os
import pickle
import select
import signal
import struct
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Protocol

import multiprocess
import multiprocess.reduction
import psutil

from . import _platform
from .context import pack_exception, unpack_exception
from .errors import Stopped

__all__ = ["CancelledError", "Coordinator", "Looper"]

CancelledError = Stopped
"""What stop-aware operations raise; a clean stop (never re-raised by ``join``)."""

log = logging.getLogger("supervisor.compat")

ExcInfo = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]

_STOP, _JOINED = 0, 1  # byte offsets of the two flags
_LEN = struct.Struct("=I")  # at offset 4: size of the recorded exception's bytes; 0: none recorded
_SEQ = struct.Struct("=Q")  # at offset 8: bumped by each recording, so local caches know they are stale
_DATA = 16  # the recorded exception's bytes start here
_SIZE = 1 << 18  # memfd pages cost nothing until written
_POLL = 0.02  # seconds between looks at what cannot be waited on (threads; no pidfd)
_KILL_ROUNDS = 20  # SIGKILL rounds (each a tree walk, a kill and <= 0.1 s wait) before giving up


class Worker(Protocol):
    """What ``join`` accepts: ``threading.Thread``, ``multiprocess.Process``, ``multiprocessing.Process``."""

    @property
    def name(self) -> str: ...

    def is_alive(self) -> bool: ...


class Coordinator:
    """TensorFlow's Coordinator API for processes; see the module docstring for the shared state."""

    def __init__(
        self, clean_stop_exception_types: Iterable[type[BaseException]] | None = None, *, term_timeout: float = 5.0
    ) -> None:
        if term_timeout < 0:
            raise ValueError(f"term_timeout must be >= 0, got {term_timeout!r}")
        self._clean: tuple[type[BaseException], ...] = (Stopped, *(clean_stop_exception_types or ()))
        self.term_timeout = float(term_timeout)  # SIGTERM -> SIGKILL wait in join()
        if hasattr(os, "memfd_create"):
            mem = os.memfd_create("supervisor-coordinator")
        else:  # macOS: an unlinked temporary file is as private
            mem, path = tempfile.mkstemp(prefix="supervisor-coordinator-")
            os.unlink(path)
        os.ftruncate(mem, _SIZE)
        token_r, token_w = os.pipe()
        wake_r, wake_w = os.pipe()
        os.set_blocking(token_r, False)  # the flag lives in the shared open file: children inherit it
        os.set_blocking(wake_r, False)
        os.write(token_w, b"t")
        self._attach((mem, token_r, token_w, wake_r, wake_w))

    def _attach(self, fds: tuple[int, ...]) -> None:
        self._fds = fds
        self._token_r, self._token_w, self._wake_r, self._wake_w = fds[1:]
        self._mem = mmap.mmap(fds[0], _SIZE)
        self._registered: list[Worker] = []  # local to this process: join(None) joins these
        self._cache: tuple[int, BaseException] | None = None  # (seq, exception) as seen in this process
        weakref.finalize(self, _close, self._mem, fds)

    def __getstate__(self) -> dict[str, Any]:
        """Only while a Process is being started: its descriptors go to the child with it."""
        if multiprocessing.context.get_spawning_popen() is not None:
            dup: Callable[[int], Any] = multiprocessing.reduction.DupFd
        elif multiprocess.context.get_spawning_popen() is not None:
            dup = multiprocess.reduction.DupFd
        else:
            raise TypeError("a Coordinator can only be pickled as an argument of a Process being started")
        return {"clean": self._clean, "term_timeout": self.term_timeout, "fds": [dup(fd) for fd in self._fds]}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._clean = state["clean"]
        self.term_timeout = state["term_timeout"]
        self._attach(tuple(d.detach() for d in state["fds"]))

    # -- the stop -----------------------------------------------------------------------------------

    def request_stop(self, ex: BaseException | ExcInfo | None = None) -> None:
        """Ask every worker to stop. The first request wins: its ``ex`` (unless a clean-stop type) is
        kept for ``join``; later requests change nothing. After ``join``, ``ex`` is raised here."""
        exc = self._filter(ex)
        if exc is not None and self.joined:
            raise exc
        try:
            os.read(self._token_r, 1)
        except BlockingIOError:
            return  # a stop was already requested
        try:
            if exc is not None:
                self._record(exc)
        finally:  # whatever happened to the exception, the stop happens
            self._mem[_STOP] = 1
            os.write(self._wake_w, b"w")

    def _filter(self, ex: BaseException | ExcInfo | None) -> BaseException | None:
        if isinstance(ex, tuple):
            _, value, tb = ex
            ex = value.with_traceback(tb) if value is not None and value.__traceback__ is None else value
        if ex is None or isinstance(ex, self._clean):
            return None
        if not isinstance(ex, BaseException):
            return ValueError(f"request_stop: ex must be an exception or an exc_info tuple, got {ex!r}")
        return ex

    def _record(self, exc: BaseException) -> None:
        """Store ``exc``; only the holder of the token (the first request) gets here."""
        log.info("Error reported to Coordinator: %r", exc)
        try:
            packed = pack_exception(exc)
        except Exception:  # str() of it raised
            packed = (type(exc).__name__, "<unprintable>", "", None)
        data = pickle.dumps((os.getpid(), packed))
        if len(data) > _SIZE - _DATA:  # too big to carry whole: its text, cut down, will do
            packed = (packed[0], packed[1][:4096], packed[2][-65536:], None)
            data = pickle.dumps((os.getpid(), packed))
        seq = _SEQ.unpack_from(self._mem, 8)[0] + 1
        self._mem[_DATA : _DATA + len(data)] = data
        _SEQ.pack_into(self._mem, 8, seq)
        _LEN.pack_into(self._mem, 4, len(data))  # last: readers see all of it or nothing
        self._cache = (seq, exc)

    def _requested(self) -> BaseException | None:
        """The recorded exception, or None; the same object on every call in one process."""
        size = _LEN.unpack_from(self._mem, 4)[0]
        if not size:
            return None
        seq = _SEQ.unpack_from(self._mem, 8)[0]
        if self._cache is not None and self._cache[0] == seq:
            return self._cache[1]
        pid, packed = pickle.loads(self._mem[_DATA : _DATA + size])
        exc = unpack_exception(packed)
        exc.add_note(f"Requested in process {pid}:\n{packed[2].rstrip()}")
        self._cache = (seq, exc)
        return exc

    def should_stop(self) -> bool:
        """True once a stop was requested (a read of shared memory, no system call)."""
        return self._mem[_STOP] != 0

    def wait_for_stop(self, timeout: float | None = None) -> bool:
        """Block until a stop is requested (True) or ``timeout`` seconds pass (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        while not self.should_stop():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            if poller.poll(None if left is None else left * 1000) and not self.should_stop():
                time.sleep(_POLL)  # a byte left by a clear_stop() that raced a request: do not spin
        return True

    @contextlib.contextmanager
    def stop_on_exception(self) -> Iterator[None]:
        """Any exception leaving the block is passed to ``request_stop`` and swallowed."""
        try:
            yield
        except GeneratorExit:
            raise
        except BaseException:
            self.request_stop(sys.exc_info())

    def raise_requested_exception(self) -> None:
        """Raise the exception passed to the first ``request_stop``, if any."""
        exc = self._requested()
        if exc is not None:
            raise exc

    def clear_stop(self) -> None:
        """Forget the stop, its exception and ``joined``. Call it while no request can race it."""
        _LEN.pack_into(self._mem, 4, 0)
        self._mem[_JOINED] = 0
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 64):
                pass
        self._mem[_STOP] = 0
        with contextlib.suppress(BlockingIOError):
            os.read(self._token_r, 1)  # take the token if it is there ...
        os.write(self._token_w, b"t")  # ... so that exactly one is there now
        self._cache = None

    # -- the workers --------------------------------------------------------------------------------

    def register_thread(self, thread: Worker) -> None:
        """Add a thread or process to those ``join`` waits for (in this process only)."""
        self._registered.append(thread)

    @property
    def joined(self) -> bool:
        """True once ``join`` returned (or raised), until ``clear_stop``."""
        return self._mem[_JOINED] != 0

    def join(
        self,
        threads: Iterable[Worker] | None = None,
        stop_grace_period_secs: float = 120,
        ignore_live_threads: bool = False,
    ) -> None:
        """Wait for the registered and given workers: until all ended or a stop is requested, then
        up to ``stop_grace_period_secs`` more (one deadline for all). Processes still alive are then
        ended, whole tree, SIGTERM then after ``term_timeout`` SIGKILL; threads cannot be, and
        raise ``RuntimeError`` unless ``ignore_live_threads``. Then the requested exception is raised.
        """
        workers = list(dict.fromkeys([*self._registered, *(threads or ())]))
        while (alive := [w for w in workers if w.is_alive()]) and not self.should_stop():
            _wait_pids([getattr(w, "pid", None) for w in alive], None, wake=self._wake_r)
        deadline = time.monotonic() + max(0.0, stop_grace_period_secs)
        while (alive := [w for w in workers if w.is_alive()]) and (left := deadline - time.monotonic()) > 0:
            _wait_pids([getattr(w, "pid", None) for w in alive], left)
        processes = [w for w in alive if getattr(w, "pid", None)]  # threads have none: they cannot be ended
        if processes:
            _end_trees(processes, self.term_timeout, stop_grace_period_secs)
        stragglers = [w.name for w in workers if w.is_alive()]
        self._registered = []
        self._mem[_JOINED] = 1
        self.raise_requested_exception()
        if stragglers and ignore_live_threads:
            log.info("Coordinator stopped with threads still running: %s", " ".join(stragglers))
        elif stragglers:
            raise RuntimeError(f"Coordinator stopped with threads still running: {' '.join(stragglers)}")


def _close(mem: mmap.mmap, fds: tuple[int, ...]) -> None:
    mem.close()
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _wait_pids(pids: list[int | None], timeout: float | None, *, wake: int | None = None) -> None:
    """Sleep until one of ``pids`` may have exited, ``wake`` is readable, or ``timeout`` passed: on
    pidfds, or for a None pid (a thread) or without pidfds, ``_POLL`` at most."""
    poller = select.poll()
    pidfds: list[int] = []
    try:
        if wake is not None:
            poller.register(wake, select.POLLIN)
        for pid in pids:
            fd = _platform.pidfd_open(pid) if pid else None
            if fd is None:
                timeout = _POLL if timeout is None else min(timeout, _POLL)
            else:
                pidfds.append(fd)
                poller.register(fd, select.POLLIN)
        poller.poll(None if timeout is None else max(0.0, timeout) * 1000)
    finally:
        for fd in pidfds:
            os.close(fd)


def _live(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _adopt(tree: dict[int, psutil.Process], pids: Iterable[int]) -> list[int]:
    """Add the live ``pids`` that ``tree`` lacks; return them. A psutil object remembers its
    process's start time, so a member whose pid is reused is never signalled."""
    new: list[int] = []
    for pid in pids:
        if pid in tree and tree[pid].is_running():
            continue
        with contextlib.suppress(psutil.Error):
            if _live(p := psutil.Process(pid)):
                tree[pid] = p
                new.append(pid)
    return new


def _grow(tree: dict[int, psutil.Process], groups: set[int]) -> list[psutil.Process]:
    """Add every live member of ``groups`` and every live descendant of a live member to ``tree``;
    return its live members."""
    in_groups = [pid for pid in psutil.pids() if _pgid(pid) in groups] if groups else []  # scans all pids
    stack = [pid for pid, p in tree.items() if _live(p)] + _adopt(tree, in_groups)
    while stack:
        stack += _adopt(tree, _platform.children(stack.pop()))
    return [p for p in tree.values() if _live(p)]


def _signal(members: list[psutil.Process], groups: set[int], sig: int) -> None:
    """``sig`` (and SIGCONT after SIGTERM, so stopped processes get it) to members and groups."""
    for sig_ in (sig, signal.SIGCONT) if sig == signal.SIGTERM else (sig,):
        for group in groups:
            with contextlib.suppress(OSError):
                os.killpg(group, sig_)
        for p in members:
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig_)


def _end_trees(processes: list[Worker], term_timeout: float, grace: float) -> None:
    """SIGTERM every process's tree, wait up to ``term_timeout`` (one deadline for all), SIGKILL
    what is left until nothing is (bounded), reap, and log what was done to whom.

    A tree is what can be found from the process: its descendants, re-walked at every step from every
    member still alive, and its process group if it leads one. A descendant that left the tree
    (double fork with ``setsid()``) before any walk saw it is out of reach: use ``Supervisor``.
    """
    pids: dict[Worker, int] = {w: pid for w in processes if (pid := getattr(w, "pid", None))}
    tree: dict[int, psutil.Process] = {}
    _adopt(tree, pids.values())
    groups = {pid for pid in tree if _pgid(pid) == pid != os.getpgrp()}  # group leaders; never our group
    _signal(_grow(tree, groups), groups, signal.SIGTERM)
    outcome = dict.fromkeys(processes, "terminated")
    deadline = time.monotonic() + term_timeout
    while (live := _grow(tree, groups)) and (left := deadline - time.monotonic()) > 0:
        _wait_pids([p.pid for p in live], min(left, 0.1))  # then walk again: forks since the last walk
    for _ in range(_KILL_ROUNDS):
        if not (live := _grow(tree, groups)):
            break
        for w in processes:
            if w.is_alive():
                outcome[w] = "killed"
        _signal(live, groups, signal.SIGKILL)
        _wait_pids([p.pid for p in live], 0.1)
    ended = [
        f"{w.name} (pid {pids[w]}): "
        + ("still alive after SIGKILL" if w.is_alive() else f"{outcome[w]}, exitcode {getattr(w, 'exitcode', None)}")
        for w in processes  # is_alive() reaps
    ]
    others = len(tree) - len(pids)
    log.warning(
        "Coordinator.join: %d process(es) outlived stop_grace_period_secs=%s and were ended: %s%s",
        len(processes),
        grace,
        "; ".join(ended),
        f"; and {others} other process(es) of their trees" if others else "",
    )


class Looper(multiprocess.Process):  # type: ignore[misc]
    """``tf.train.LooperThread`` as a process: calls ``target(*args, **kwargs)`` every
    ``timer_interval_secs`` (``None``: back to back) until a stop is requested; an exception it
    raises goes to ``coord.request_stop`` and ends the loop. Registered with ``coord``; daemonic,
    so it may not start ``multiprocess`` children of its own."""

    def __init__(
        self,
        coord: Coordinator,
        timer_interval_secs: float | None,
        target: Callable[..., object],
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self._coord = coord
        self._interval = timer_interval_secs
        self._call = (target, tuple(args), dict(kwargs or {}))
        coord.register_thread(self)

    def run(self) -> None:
        target, args, kwargs = self._call
        due = time.monotonic()
        with self._coord.stop_on_exception():
            while not self._coord.wait_for_stop(due - time.monotonic()):  # <= 0: a mere look
                due += self._interval or 0.0
                target(*args, **kwargs)
