"""``WorkerContext``: what a worker's target sees of its supervisor."""

from __future__ import annotations

import select
import time
from collections.abc import Mapping

from . import _wire
from ._shm import ControlBlock
from .channels import Channel, ChannelSpec


class WorkerContext:
    """Handed to every target as its first argument.

    Invariants: ``should_stop()`` only ever goes from False to True within one incarnation;
    ``wait()`` returns True at once when it is True.
    """

    def __init__(
        self,
        *,
        name: str,
        pool: str,
        index: int,
        slot: int,
        control: ControlBlock,
        stop_fd: int,
        result_fd: int,
        channels: Mapping[str, ChannelSpec] | None = None,
        inputs: tuple[str, ...] = (),
        outputs: tuple[str, ...] = (),
        upstream_first: bool = False,
    ) -> None:
        self.name = name
        self.pool = pool
        self.index = index
        self._slot = slot
        self._control = control
        self._stop_fd = stop_fd  # read end of this worker's stop pipe: EOF once the manager asks it to stop
        self._result_fd = result_fd  # write end of the pipe to the manager
        self._poll = select.poll()
        self._poll.register(stop_fd, select.POLLIN)
        self._channel_specs = dict(channels or {})
        self._channels: dict[str, Channel] = {}
        self._input_names, self._output_names = inputs, outputs
        self._upstream_first = upstream_first  # a stop flags the sources first, not everyone

    def __repr__(self) -> str:
        return f"<WorkerContext {self.name}>"

    def should_stop(self) -> bool:
        """True once a stop was requested for everyone or for this worker (a memory read)."""
        return self._control.should_stop(self._slot)

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep up to ``timeout`` seconds (None: forever); True as soon as a stop is requested."""
        if self.should_stop():
            return True
        ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._poll.poll(ms) or self.should_stop():
                return True
            if deadline is None:
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ms = int(left * 1000 + 0.999)

    def heartbeat(self) -> None:
        """Record that this worker is alive (a memory write, no system call)."""
        self._control.beat(self._slot, time.monotonic())

    def request_stop(self, exc: BaseException | None = None) -> None:
        """Ask every worker to stop; ``exc``, if given, is re-raised by the supervisor's ``join()``."""
        try:  # the message first: the manager should know who asked before others see the flag
            _wire.send(self._result_fd, ("stop", pack_exception(exc) if exc is not None else None))
        finally:
            if self._upstream_first:
                self._control.stop_slot(self._slot)
            else:
                self._control.stop_all()

    def channel(self, name: str) -> Channel:
        """This worker's handle on channel ``name`` (put, get, iterate; stop-aware)."""
        handle = self._channels.get(name)
        if handle is None:
            if name not in self._channel_specs:
                known = ", ".join(sorted(self._channel_specs)) or "none"
                raise KeyError(f"no channel named {name!r} (channels: {known})")
            handle = Channel(self._channel_specs[name], self.should_stop, self._stop_fd, (self._control, self._slot))
            self._channels[name] = handle
        return handle

    @property
    def inputs(self) -> list[Channel]:
        """The channels this worker's pool consumes, in declared order."""
        return [self.channel(n) for n in self._input_names]

    @property
    def outputs(self) -> list[Channel]:
        """The channels this worker's pool produces into, in declared order."""
        return [self.channel(n) for n in self._output_names]

    def fileno(self) -> int:
        """A descriptor that becomes readable when this worker is asked to stop (for select/poll)."""
        return self._stop_fd


def pack_exception(exc: BaseException) -> tuple[str, str, str, bytes | None]:
    """(type name, message, formatted traceback, dill bytes or None if it cannot be pickled)."""
    import traceback

    import dill

    tb = "".join(traceback.format_exception(exc))
    try:
        blob: bytes | None = dill.dumps(exc)
        dill.loads(blob)
    except Exception:
        blob = None
    return (type(exc).__name__, str(exc), tb, blob)


def unpack_exception(packed: tuple[str, str, str, bytes | None]) -> BaseException:
    """The exception itself where it survived pickling, else a ``RemoteError`` with its text."""
    from .errors import RemoteError

    type_name, message, tb, blob = packed
    if blob is not None:
        try:
            import dill

            exc = dill.loads(blob)
            if isinstance(exc, BaseException):
                return exc
        except Exception:
            pass
    return RemoteError(type_name, message, tb)
