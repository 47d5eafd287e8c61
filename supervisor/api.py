"""``Supervisor``: the owner's handle on a guardian, a manager and their workers.

The owner never forks. It starts the guardian with ``subprocess`` (fork+exec, safe in threaded
programs), then talks to the manager over a socket: commands go out, state changes come back and
are mirrored here by one reader thread. Stop flags live in shared memory, so ``should_stop()`` and
``request_stop()`` act at once, before the manager even hears of them.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import _platform, _shm, _wire, channels, containment
from ._manager import Settings
from ._shm import MAX_CHANNELS
from ._spec import (
    RESTART_POLICIES,
    START_METHODS,
    STOP_ORDERS,
    STRATEGIES,
    PoolSpec,
    check_duration,
    parse_signal,
)
from .channels import Channel
from .context import unpack_exception
from .errors import Failure, WorkerFailed
from .ladder import fit_budget
from .limits import parse_size
from .report import TeardownReport, WorkerStatus

START_TIMEOUT = 60.0  # seconds to wait for the manager's hello before giving up
_live: weakref.WeakSet[Supervisor] = weakref.WeakSet()


class Supervisor:
    """Starts worker processes and guarantees their teardown (see the README's ladder)."""

    def __init__(
        self,
        *,
        grace_period: float = 5.0,
        term_timeout: float = 5.0,
        strategy: str = "one_for_all",
        max_restarts: int = 3,
        restart_window: float = 60.0,
        restart_backoff: float = 0.5,
        restart_backoff_max: float = 30.0,
        stop_budget: float | None = None,
        stop_order: str = "together",
        events: str | os.PathLike[str] | None = None,
        cgroups: bool = True,
        output: str = "inherit",
    ) -> None:
        check_duration("grace_period", grace_period)
        check_duration("term_timeout", term_timeout)
        check_duration("restart_window", restart_window, positive=True)
        check_duration("restart_backoff", restart_backoff)
        check_duration("restart_backoff_max", restart_backoff_max)
        check_duration("stop_budget", stop_budget, allow_none=True, positive=True)
        self.stop_budget = None if stop_budget is None else float(stop_budget)
        if stop_order not in STOP_ORDERS:
            raise ValueError(f"stop_order must be one of {', '.join(STOP_ORDERS)}, not {stop_order!r}")
        self.stop_order = stop_order
        if output not in ("inherit", "prefix"):
            raise ValueError(f"output must be 'inherit' or 'prefix', not {output!r}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError(f"max_restarts must be a whole number >= 0, not {max_restarts!r}")
        self.grace_period = float(grace_period)
        self.term_timeout = float(term_timeout)
        self._cond = threading.Condition()
        self._send_lock = threading.RLock()  # whole messages, in order; never taken by the reader
        # Everything below is guarded by _cond and written by the reader thread (or under _cond).
        self._statuses: dict[str, WorkerStatus] = {}  # worker name -> latest status, in start order
        self._failures: list[Failure] = []
        self._failures_raised = 0  # how many of _failures a join() has already raised
        self._requested_exc: BaseException | None = None  # first exception passed to request_stop
        self._spawns_sent = 0
        self._spawn_replies: dict[int, str | None] = {}
        self._idle: tuple[int, TeardownReport] | None = None  # (spawns seen, report) of the last idle
        self._manager: tuple[int, str, str] | None = None  # (pid, containment, memory limits), after hello
        self._gone = False  # the manager's socket closed
        self._closing = False  # stop() has sent "close"; no more spawns
        self._final: TeardownReport | None = None
        self._run_dir: str | None = None  # the run's cgroup (cgroup containment only)
        self._stopping = False  # a stop was requested or announced (the flag may be per slot)
        self._channels: dict[str, Channel] = {}  # the owner's handles, by name
        self._stop_r, self._stop_w = os.pipe()  # closed write end: owner-side channel ops stop
        self._events: list[dict[str, Any]] = []  # the lifecycle event log, oldest first
        self._events_file = open(events, "a", encoding="utf-8") if events is not None else None  # noqa: SIM115

        control_fd = _shm.create_fd()
        self._control = _shm.ControlBlock(control_fd)
        ours, theirs = socket.socketpair()
        self.run_id = uuid.uuid4().hex[:12]
        argv = _platform.python_entry("_guardian", "main")
        argv += [str(theirs.fileno()), str(control_fd), self.run_id, _platform.flags(cgroups)]
        try:
            self._proc = subprocess.Popen(
                argv,
                pass_fds=(theirs.fileno(), control_fd),
                stdin=subprocess.DEVNULL,
                process_group=0,
                env={**os.environ, containment.RUN_ENV: self.run_id},
            )
        finally:
            theirs.close()
            os.close(control_fd)
        self._sock = ours
        self._reader = threading.Thread(target=self._read_loop, name="supervisor-reader", daemon=True)
        self._reader.start()
        with self._cond:
            if not self._cond.wait_for(lambda: self._manager is not None or self._gone, START_TIMEOUT):
                self._kill_manager()
                raise RuntimeError("the supervisor's manager process did not start")
            if self._manager is None:
                raise RuntimeError("the supervisor's manager process died while starting")
        self._send(
            (
                "configure",
                Settings(
                    strategy,
                    max_restarts,
                    float(restart_window),
                    output,
                    float(restart_backoff),
                    float(restart_backoff_max),
                    self.stop_budget,
                    stop_order,
                ),
            )
        )
        _live.add(self)

    # -- plumbing -------------------------------------------------------------------------------

    def _send(self, msg: Any, fds: Sequence[int] = ()) -> None:
        with self._send_lock:
            try:
                data = _wire.encode(msg)
                if fds:  # descriptors travel with the message's first bytes
                    sent = socket.send_fds(self._sock, [data], list(fds))
                    data = data[sent:]
                self._sock.sendall(data)
            except OSError as exc:
                raise RuntimeError("the supervisor's manager process is gone") from exc

    def _mark_stopping(self) -> None:
        """A stop was requested or announced: owner-side channel operations raise Stopped."""
        self._stopping = True
        if (self.stop_order == "together" or self._gone) and self._stop_w >= 0:
            os.close(self._stop_w)
            self._stop_w = -1

    def _read_loop(self) -> None:
        reader = _wire.Reader()
        try:
            while chunk := self._sock.recv(1 << 16):
                with self._cond:  # one wake-up of the waiters per chunk, not per message
                    for msg in reader.feed(chunk):
                        try:
                            self._dispatch(msg)
                        except Exception as exc:  # one bad message must not end the run
                            print(f"supervisor: ignoring a message it could not handle: {exc!r}", file=sys.stderr)
                    self._cond.notify_all()
        except OSError:
            pass
        with self._cond:
            self._gone = True
            self._mark_stopping()
            self._cond.notify_all()
            unexpected = not self._closing and self._manager is not None
        if unexpected and self._run_dir is not None:
            # The manager died without being asked to, and maybe its guardian with it (a kill of
            # their process group): whatever escaped into the run's cgroup dies here.
            containment.kill_cgroup(self._run_dir)

    def _dispatch(self, msg: tuple[Any, ...]) -> None:
        verb = msg[0]
        if verb == "status":
            self._statuses[msg[1].name] = msg[1]
        elif verb == "spawned":
            self._spawn_replies[msg[1]] = msg[2]
        elif verb == "stopping":
            self._mark_stopping()
        elif verb == "stop_exc":
            if self._requested_exc is None:
                self._requested_exc = unpack_exception(msg[1])
        elif verb == "failure":
            self._failures.append(msg[1])
        elif verb == "idle":
            self._idle = (msg[1], msg[2])
        elif verb == "event":
            self._record(msg[1])
        elif verb == "hello":
            self._manager = (msg[1], msg[2], msg[3])
            self._run_dir = msg[4]

    def _kill_manager(self) -> None:
        """Last resort when the manager does not answer: its guardian tree dies with it."""
        if self._manager is not None:
            with contextlib.suppress(OSError):
                os.kill(self._manager[0], 9)
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()

    # -- the public API -------------------------------------------------------------------------

    @property
    def containment(self) -> str:
        """The containment backend the manager chose: ``cgroup`` or ``process-group``."""
        return self._manager[1] if self._manager else "unknown"

    @property
    def memory_limits(self) -> str:
        """How ``memory_limit`` is enforced: ``cgroup2``, ``cgroup1`` (both detect OOM kills) or ``rlimit``."""
        return self._manager[2] if self._manager else "unknown"

    @property
    def pid(self) -> int | None:
        """The manager's pid (the parent of every worker)."""
        return self._manager[0] if self._manager else None

    def spawn(
        self,
        target: Callable[..., Any],
        *,
        name: str | None = None,
        replicas: int = 1,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        restart: str = "never",
        grace_period: float | None = None,
        term_timeout: float | None = None,
        heartbeat_timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        start_method: str = "fork",
        memory_limit: int | str | None = None,
        cpu_affinity: Sequence[int] | None = None,
        nice: int | None = None,
        inputs: Sequence[str] = (),
        outputs: Sequence[str] = (),
    ) -> list[WorkerStatus]:
        """Start ``replicas`` processes, each calling ``target(ctx, *args, **kwargs)``.

        ``memory_limit`` (bytes or ``"512MiB"``), ``cpu_affinity`` and ``nice`` apply to each worker.
        ``inputs`` and ``outputs`` name the channels it consumes and feeds (``ctx.inputs``,
        ``ctx.outputs``); a channel ends for its consumers once every pool feeding it has ended.
        """
        import dill

        if not callable(target):
            raise TypeError(f"target must be callable, not {target!r}")
        try:
            payload = dill.dumps((target, tuple(args), dict(kwargs or {})), recurse=True)
        except Exception as exc:
            raise TypeError(f"cannot send {target!r} and its arguments to a worker: {exc}") from exc
        options: dict[str, Any] = dict(restart=restart, grace_period=grace_period, term_timeout=term_timeout)
        options |= dict(heartbeat_timeout=heartbeat_timeout, env=env, memory_limit=memory_limit)
        options |= dict(cpu_affinity=cpu_affinity, nice=nice, start_method=start_method, payload=payload)
        options |= dict(inputs=self._channel_names(inputs), outputs=self._channel_names(outputs))
        name = name or getattr(target, "__name__", "worker").replace("<lambda>", "lambda")
        return self._submit(self._pool(name, replicas, **options))

    def spawn_command(
        self,
        argv: Sequence[str],
        *,
        name: str | None = None,
        replicas: int = 1,
        stop_signal: str | int = "SIGTERM",
        restart: str = "never",
        grace_period: float | None = None,
        term_timeout: float | None = None,
        heartbeat_timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        memory_limit: int | str | None = None,
        cpu_affinity: Sequence[int] | None = None,
        nice: int | None = None,
    ) -> list[WorkerStatus]:
        """Run an external program as a worker; its cooperative step is ``stop_signal``."""
        if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
            raise TypeError("argv must be a non-empty list of strings")
        options: dict[str, Any] = dict(restart=restart, grace_period=grace_period, term_timeout=term_timeout)
        options |= dict(heartbeat_timeout=heartbeat_timeout, env=env, memory_limit=memory_limit)
        options |= dict(cpu_affinity=cpu_affinity, nice=nice, argv=tuple(argv), stop_signal=parse_signal(stop_signal))
        return self._submit(self._pool(name or os.path.basename(argv[0]), replicas, **options))

    def _pool(
        self,
        name: str,
        replicas: int,
        *,
        restart: str,
        grace_period: float | None,
        term_timeout: float | None,
        heartbeat_timeout: float | None,
        env: Mapping[str, str] | None,
        memory_limit: int | str | None,
        cpu_affinity: Sequence[int] | None,
        nice: int | None,
        **what: Any,
    ) -> PoolSpec:
        """Validate one pool's options (ValueError/TypeError) and resolve its timeouts."""
        if not name or any(c in name for c in " .:/\n"):
            raise ValueError(f"pool name {name!r} must be non-empty, without spaces, dots, colons or slashes")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise ValueError(f"replicas must be a whole number >= 1, not {replicas!r}")
        if restart not in RESTART_POLICIES:
            raise ValueError(f"restart must be one of {', '.join(RESTART_POLICIES)}, not {restart!r}")
        if what.get("start_method", "fork") not in START_METHODS:
            raise ValueError(f"start_method must be one of {', '.join(START_METHODS)}, not {what['start_method']!r}")
        check_duration("grace_period", grace_period, allow_none=True)
        check_duration("term_timeout", term_timeout, allow_none=True)
        check_duration("heartbeat_timeout", heartbeat_timeout, allow_none=True, positive=True)
        if cpu_affinity is not None:
            if not hasattr(os, "sched_setaffinity"):
                raise ValueError("cpu_affinity is not supported on this platform")
            if not cpu_affinity or not all(
                isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in cpu_affinity
            ):
                raise ValueError(f"cpu_affinity must be a non-empty list of CPU numbers, not {cpu_affinity!r}")
        if nice is not None and (isinstance(nice, bool) or not isinstance(nice, int) or not -20 <= nice <= 19):
            raise ValueError(f"nice must be a whole number from -20 to 19, not {nice!r}")
        grace, term = fit_budget(
            self.grace_period if grace_period is None else float(grace_period),
            self.term_timeout if term_timeout is None else float(term_timeout),
            self.stop_budget,
        )
        return PoolSpec(
            name=name,
            replicas=replicas,
            grace_period=grace,
            term_timeout=term,
            restart=restart,
            heartbeat_timeout=heartbeat_timeout,
            env={str(k): str(v) for k, v in (env or {}).items()},
            sys_path=tuple(sys.path),
            memory_limit=None if memory_limit is None else parse_size(memory_limit),
            cpu_affinity=None if cpu_affinity is None else tuple(cpu_affinity),
            nice=nice,
            **what,
        )

    def _channel_names(self, names: Sequence[str]) -> tuple[str, ...]:
        if isinstance(names, str):
            raise TypeError("inputs and outputs are lists of channel names")
        missing = [n for n in names if n not in self._channels]
        if missing:
            raise ValueError(f"no channel named {missing[0]!r}: create it first with channel(name, capacity)")
        return tuple(names)

    def _submit(self, pool: PoolSpec) -> list[WorkerStatus]:
        name = pool.name
        with self._send_lock:  # tickets go out in the order they are numbered
            with self._cond:
                if self._closing or self._gone:
                    raise RuntimeError("this supervisor has been stopped; create a new one")
                self._spawns_sent += 1
                ticket = self._spawns_sent
            self._send(("spawn", pool))  # never while holding _cond: the reader thread needs it
        with self._cond:
            self._cond.wait_for(lambda: ticket in self._spawn_replies or self._gone)
            error = self._spawn_replies.pop(ticket, "the supervisor's manager process is gone")
            if error is not None:
                raise RuntimeError(error)
            return [s for s in self._statuses.values() if s.pool == name]

    def request_stop(self, exc: BaseException | None = None) -> None:
        """Ask every worker to stop; returns at once. ``join()`` re-raises ``exc``."""
        self.request_stop_for("requested", exc=exc)

    def request_stop_for(
        self,
        reason: str,
        grace_period: float | None = None,
        term_timeout: float | None = None,
        exc: BaseException | None = None,
    ) -> None:
        """``request_stop`` with a reason for the report (e.g. ``signal:SIGINT``) and shorter waits.

        A second call can only hasten a stop in progress: ``request_stop_for(r, 0, 0)`` skips
        straight to SIGKILL.
        """
        check_duration("grace_period", grace_period, allow_none=True)
        check_duration("term_timeout", term_timeout, allow_none=True)
        with self._cond:
            if exc is not None and self._requested_exc is None:
                self._requested_exc = exc
        try:
            # The message goes before the flag, so the manager knows the reason before any
            # worker can see the flag and exit.
            if not self._gone:
                self._send(("stop", reason, (grace_period, term_timeout)))
        except RuntimeError:
            if not self._gone:  # a manager that went away while we sent has nothing left to stop
                raise
        finally:
            self._flag_stop()

    def _flag_stop(self) -> None:
        with self._cond:
            self._mark_stopping()
        if self.stop_order == "together":  # upstream-first: the manager flags the sources only
            self._control.stop_all()

    def should_stop(self) -> bool:
        """True once a stop was requested, by anyone."""
        return self._stopping or self._control.all_stopped()

    def channel(self, name: str, capacity: int | None = None) -> Channel:
        """Create channel ``name`` (give ``capacity``) or get the owner's handle on it.

        Pools name it in ``inputs``/``outputs``; the owner can put into it (then ``close()`` it)
        or iterate it, for example to feed a training loop from the last stage of a pipeline.
        Create a channel before the pools that use it.
        """
        with self._send_lock:
            handle = self._channels.get(name)
            if handle is not None:
                if capacity is not None and capacity != handle.capacity:
                    raise ValueError(f"channel {name!r} exists with capacity {handle.capacity}")
                return handle
            if capacity is None:
                raise KeyError(f"no channel named {name!r}: create it with channel({name!r}, capacity=N)")
            if not name or any(c in name for c in " .:/\n"):
                raise ValueError(f"channel name {name!r} must be non-empty, without spaces, dots, colons or slashes")
            if len(self._channels) >= MAX_CHANNELS:
                raise ValueError(f"at most {MAX_CHANNELS} channels per supervisor")
            if self._closing or self._gone:
                raise RuntimeError("this supervisor has been stopped; create a new one")
            spec = channels.create(name, len(self._channels), capacity)
            self._send(("channel", name, spec.index, capacity), spec.fds)
            handle = channels.Channel(
                spec,
                should_stop=lambda: self._stopping and self.stop_order == "together",
                stop_fd=self._stop_r,
                on_first_get=lambda: self._send(("consume", name)),
                on_first_put=lambda: self._send(("produce", name)),
                on_close=lambda: self._send(("close_channel", name)),
            )
            self._channels[name] = handle
            return handle

    def _record(self, event: dict[str, Any]) -> None:
        """Append to the event log (caller holds ``_cond``)."""
        self._events.append(event)
        if self._events_file is not None:
            try:
                self._events_file.write(json.dumps(event, default=str) + "\n")
                self._events_file.flush()
            except (OSError, ValueError) as exc:  # a full disk must not end the run: the log stops
                print(f"supervisor: event log disabled: {exc}", file=sys.stderr)
                with contextlib.suppress(OSError):
                    self._events_file.close()
                self._events_file = None

    def log_event(self, kind: str, **fields: Any) -> None:
        """Add an event of your own to the lifecycle log (JSON-ready fields)."""
        with self._cond:
            self._record({"time": time.time(), "event": kind, **fields})

    def events(self) -> list[dict[str, Any]]:
        """The lifecycle events so far (started, exited, hung, restarting, escalated, stopping)."""
        with self._cond:
            return list(self._events)

    def status(self) -> list[WorkerStatus]:
        """One entry per worker slot, in start order."""
        with self._cond:
            return list(self._statuses.values())

    def join(self, timeout: float | None = None) -> TeardownReport:
        """Block until every worker has ended; raise what a stop carried or ``WorkerFailed``."""
        report = self.wait(timeout)
        with self._cond:
            self._raise_for(report)
        return report

    def wait_running(self, timeout: float | None = None) -> bool:
        """Block until every worker slot is running; False on timeout or once a stop was requested."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._gone or self.should_stop() or all(s.state == "running" for s in self._statuses.values()),
                timeout,
            )
            return (
                not self._gone and not self.should_stop() and all(s.state == "running" for s in self._statuses.values())
            )

    def wait(self, timeout: float | None = None) -> TeardownReport:
        """``join()`` without raising for failures: the report of the workers' end."""
        with self._cond:
            ticket = self._spawns_sent
            done = self._cond.wait_for(
                lambda: (self._idle is not None and self._idle[0] >= ticket) or self._gone, timeout
            )
            if not done:
                raise TimeoutError(f"workers still running after {timeout} s")
            if self._idle is not None and self._idle[0] >= ticket:
                return self._idle[1]
            if self._final is not None:
                return self._final
            return TeardownReport(ok=False, reason="manager-died", duration=0.0, workers=[])

    def _raise_for(self, report: TeardownReport) -> None:
        if report.reason == "manager-died":
            raise RuntimeError("the supervisor's manager process died; its workers were killed with it")
        if self._requested_exc is not None:
            raise self._requested_exc
        if self._failures:
            self._failures_raised = len(self._failures)
            raise WorkerFailed(list(self._failures), report)

    def stop(self, grace_period: float | None = None, term_timeout: float | None = None) -> TeardownReport:
        """Request a stop and run the whole ladder; the final report. Idempotent, thread-safe."""
        check_duration("grace_period", grace_period, allow_none=True)
        check_duration("term_timeout", term_timeout, allow_none=True)
        with self._cond:
            if self._final is not None:
                return self._final
            self._mark_stopping()
            first = not self._closing
            self._closing = True
        try:
            self._send(("stop", "requested", (grace_period, term_timeout)))
            if first:
                self._send(("close",))
        except RuntimeError:
            pass  # the manager is already gone (another stop() closed it): just collect its report
        if self.stop_order == "together":
            self._control.stop_all()
        with self._cond:
            self._cond.wait_for(lambda: self._gone)
            ticket = self._spawns_sent
            if self._idle is not None and self._idle[0] >= ticket:
                self._final = self._idle[1]
        self._proc.wait()
        self._sock.close()
        if self._events_file is not None:
            with contextlib.suppress(OSError):
                self._events_file.close()
        _live.discard(self)
        with self._cond:
            if self._final is None:
                self._final = TeardownReport(ok=False, reason="manager-died", duration=0.0, workers=[])
            return self._final

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        report = self.stop()
        if exc_type is None and len(self._failures) > self._failures_raised:
            raise WorkerFailed(list(self._failures), report)

    def __repr__(self) -> str:
        return f"<Supervisor run={self.run_id} workers={len(self._statuses)} backend={self.containment}>"


def _abandon_in_child() -> None:
    """In a forked child of the owner: the parent's supervisors are not ours to use or stop.

    Their descriptors are closed here (so the manager still sees the owner's death), and their
    locks replaced (a thread of the parent may have held them at the fork).
    """
    for sup in list(_live):
        sup._cond, sup._send_lock = threading.Condition(), threading.RLock()
        sup._gone = sup._closing = True
        with contextlib.suppress(OSError):
            os.close(sup._sock.detach())
        for fd in (sup._stop_r, sup._stop_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        sup._stop_w = -1
    _live.clear()


os.register_at_fork(after_in_child=_abandon_in_child)


@atexit.register
def _stop_all_at_exit() -> None:
    for sup in list(_live):
        with contextlib.suppress(Exception):
            sup.stop()
