"""The manager: a single-threaded process that forks, watches and stops every worker.

It is the only process that forks workers, and it never starts a thread, so forking is safe
whatever the owner (the user's process) is doing. Its loop is event-driven: one ``select`` over
the owner's socket, every worker's pidfd and result pipe, and the SIGCHLD wakeup pipe; its
timeout is the next ladder deadline. Each pass: dispatch what is ready, reap, climb the ladder,
finish what is finished.

Invariants:
- a slot's ``state`` changes only in ``Slot.transition``, which also tells the owner;
- a worker's pid is valid until this loop reaps it, so signalling it by pid cannot hit a stranger;
- once a global stop has begun nothing new starts, and the stop only ever gets faster.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import _platform, _wire
from ._output import Sink, Splitter
from ._shm import ControlBlock
from ._spec import PoolSpec
from ._worker import Placement, child_main
from .channels import ChannelSpec, ChannelTable
from .containment import Containment
from .errors import Failure
from .ladder import Rung, Step, climb, fit_budget
from .limits import MemoryCgroups
from .report import Outcome, TeardownReport, WorkerReport, WorkerState, WorkerStatus, signal_name
from .strategy import Member, Plan, Restarts

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
Waits = tuple[float | None, float | None]  # (grace_period, term_timeout); None: the pool's own
STREAM_LINGER = 1.0  # seconds output pipes may stay open once every process of the run is gone
TREE_RECHECK = 0.01  # seconds between checks of a tree whose worker is gone but whose members are not


@dataclass
class Settings:
    strategy: str = "one_for_all"
    max_restarts: int = 3
    restart_window: float = 60.0
    output: str = "inherit"  # "inherit": workers write to our stdout/stderr; "prefix": "name | line"
    restart_backoff: float = 0.5
    restart_backoff_max: float = 30.0
    stop_budget: float | None = None  # the whole ladder fits in this (see ladder.fit_budget)
    stop_order: str = "together"  # or "upstream-first": consumers drain while producers stop

    def restarts(self) -> Restarts:
        return Restarts(
            strategy=self.strategy,
            max_restarts=self.max_restarts,
            restart_window=self.restart_window,
            backoff=self.restart_backoff,
            backoff_max=self.restart_backoff_max,
            backoff_reset=max(self.restart_window / 2, self.restart_backoff_max),
        )


@dataclass
class Slot:
    """One worker position (pool, index); it outlives restarts of the process in it."""

    id: int
    pool: PoolSpec
    index: int
    pool_order: int  # position of its pool in start order (for rest_for_one)
    notify: Callable[[Slot], None]
    state: WorkerState = WorkerState.STARTING
    pid: int | None = None
    pidfd: int | None = None
    stop_w: int | None = None  # write end of the stop pipe; closed = "stop" for the worker
    result_r: int | None = None  # read end of the worker's message pipe
    streams: dict[int, Splitter] = field(default_factory=dict)  # read end of stdout/stderr -> splitter
    reader: _wire.Reader = field(default_factory=_wire.Reader)
    restarts: int = 0
    exitcode: int | None = None
    outcome: Outcome | None = None
    failure: tuple[str, str, str, bytes | None] | None = None
    rung: Rung | None = None  # set once this incarnation is asked to stop
    tree: Rung | None = None  # ladder for what the worker left behind after it exited
    signalled: set[int] = field(default_factory=set)  # descendants we sent TERM or KILL to
    started_at: float | None = None  # time.time() of this incarnation's start
    started_mono: float = 0.0
    stop_since: float | None = None
    exited_at: float | None = None
    hung: str | None = None  # why this incarnation was declared hung (no heartbeat)
    oom_kills: int = 0  # the slot's memory cgroup OOM-kill count when this incarnation started
    oom_killed: bool = False
    restart_at: float | None = None  # a restart is due at this monotonic time
    stop_seen: bool = False  # a global stop had begun when this incarnation's exit was recorded

    @property
    def name(self) -> str:
        return f"{self.pool.name}.{self.index}"

    def transition(self, new: WorkerState) -> None:
        """The one place a worker's state changes (starting -> running -> stopping -> exited)."""
        if new is self.state and new is not WorkerState.STARTING:
            return
        self.state = new
        self.notify(self)

    def status(self) -> WorkerStatus:
        return WorkerStatus(
            name=self.name,
            pool=self.pool.name,
            index=self.index,
            pid=self.pid,
            state=self.state.value,
            restarts=self.restarts,
            exitcode=self.exitcode,
            started_at=self.started_at,
        )

    def report(self) -> WorkerReport:
        seconds = None
        if self.stop_since is not None and self.exited_at is not None:
            seconds = max(0.0, self.exited_at - self.stop_since)
        return WorkerReport(
            name=self.name,
            pool=self.pool.name,
            index=self.index,
            pid=self.pid,
            outcome=(self.outcome or Outcome.COMPLETED).value,
            exitcode=self.exitcode,
            signal=signal_name(self.exitcode),
            seconds=seconds,
            descendants_killed=len(self.signalled - {self.pid}),
            error=self.error(),
        )

    @property
    def failed(self) -> bool:
        """This incarnation failed, crashed or hung."""
        return self.outcome in (Outcome.FAILED, Outcome.CRASHED) or self.hung is not None

    def error(self) -> str | None:
        """What went wrong, for a failed, crashed or hung worker."""
        if self.hung is not None:
            return f"hung: {self.hung}"
        if self.outcome is Outcome.FAILED and self.failure is not None:
            return f"{self.failure[0]}: {self.failure[1]}"
        if self.outcome is Outcome.CRASHED:
            if self.oom_killed:
                return f"killed by the OOM killer (memory_limit {self.pool.memory_limit} bytes)"
            sig = signal_name(self.exitcode)
            return f"killed by {sig}" if sig else f"exited with code {self.exitcode}"
        return None


def decide_outcome(step: Step, exitcode: int, failed: bool, command: bool = False) -> Outcome:
    """The ladder step in force at the exit decides; before it, the exit itself does.

    After the cooperative step a worker that exits 0 stopped; one that raised failed; one that
    died of a signal or a non-zero exit we did not cause crashed (a segfault during the grace
    period is still a crash). A command was sent its ``stop_signal``, so any exit is ``stopped``.
    """
    if step >= Step.KILL:
        return Outcome.KILLED
    if step >= Step.TERM:
        return Outcome.TERMINATED
    if failed:
        return Outcome.FAILED
    if exitcode == 0 or (command and step is Step.COOPERATIVE):
        return Outcome.STOPPED if step is Step.COOPERATIVE else Outcome.COMPLETED
    return Outcome.CRASHED


class Manager:
    def __init__(
        self, conn: socket.socket, control: ControlBlock, containment: Containment, run_id: str, owner: int
    ) -> None:
        self.conn = conn
        self.conn.setblocking(False)
        self.outbox = bytearray()  # bytes for the owner that its socket did not take yet
        self.owner_pidfd = _platform.pidfd_open(owner)  # the owner's death, even if a fork of it holds the socket
        self.conn_reader = _wire.Reader()
        self.control = control
        self.containment = containment
        self.run_id = run_id
        self.settings = Settings()
        self.sel = selectors.DefaultSelector()
        self.slots: dict[int, Slot] = {}
        self.by_pid: dict[int, Slot] = {}
        self.pool_names: list[str] = []
        self.spawns_seen = 0  # spawn commands processed; the owner's join() waits for this many
        self.stop_since: float | None = None  # monotonic time of the global stop request
        self.stop_reason: str | None = None
        self.stop_waits: Waits = (None, None)  # the stop's overrides of every pool's (grace, term)
        self.closing = False  # the owner asked us to exit once everything is gone (or it died)
        self.idle_sent = False
        self.last_exit: float | None = None
        self.restarts = self.settings.restarts()
        self.groups: list[tuple[set[int], tuple[int, ...], float]] = []  # (waiting for, to restart, delay)
        self.sinks: dict[int, Sink] = {}  # our stdout/stderr, in "prefix" output mode
        self.streams_deadline: float | None = None  # see _streams_closed
        self.memory = MemoryCgroups(getattr(containment, "run_dir", None))
        self.channels = ChannelTable()
        self.incoming_fds: collections.deque[int] = collections.deque()  # sent with owner messages
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    # -- plumbing -------------------------------------------------------------------------------

    def send(self, msg: Any) -> None:
        """Queue a message for the owner; never blocks (a stalled owner must not stall a teardown)."""
        if self.conn.fileno() < 0:
            return
        self.outbox += _wire.encode(msg)  # sent at the end of this loop pass: one write for many messages

    def _flush_owner(self) -> None:
        while self.outbox and self.conn.fileno() >= 0:
            try:
                n = self.conn.send(self.outbox)
            except BlockingIOError:
                break
            except OSError:
                self._owner_gone()
                return
            del self.outbox[:n]
        if self.conn.fileno() >= 0:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbox else 0)
            if self.sel.get_key(self.conn).events != events:
                self.sel.modify(self.conn, events, self._on_owner)

    def _notify(self, slot: Slot) -> None:
        self.send(("status", slot.status()))

    def _manager_fds(self) -> list[int]:
        """Every fd a new child must close: ours, and every other worker's."""
        sel_fd = getattr(self.sel, "fileno", lambda: -1)()
        fds = [self.conn.fileno(), self.wake_r, self.wake_w, sel_fd, *self.incoming_fds]
        if self.owner_pidfd is not None:
            fds.append(self.owner_pidfd)
        fds += [sink.fd for sink in self.sinks.values() if sink.fd > 2]
        for s in self.slots.values():
            fds.extend(fd for fd in (s.stop_w, s.result_r, s.pidfd, *s.streams) if fd is not None)
        return [fd for fd in fds if isinstance(fd, int) and fd >= 0]

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_w)
        for sig in STOP_SIGNALS:  # a signal sent to the manager itself starts a stop (see _drain_wakeups)
            signal.signal(sig, lambda *_: None)
        self.sel.register(self.wake_r, selectors.EVENT_READ, self._drain_wakeups)
        self.sel.register(self.conn, selectors.EVENT_READ, self._on_owner)
        if self.owner_pidfd is not None:
            self.sel.register(self.owner_pidfd, selectors.EVENT_READ, self._owner_gone)
        run_dir = getattr(self.containment, "run_dir", None)
        self.send(("hello", os.getpid(), self.containment.backend, self.memory.kind, run_dir))
        self._flush_owner()
        while True:
            for key, _ in self.sel.select(self._timeout()):
                key.data()
            self._reap()
            self._climb()
            self._check_trees()
            self._restart_due()
            self._check_heartbeats()
            self.channels.update(self._producing, self._consumers)
            for sink in self.sinks.values():
                sink.flush()
            done = self._finish()
            self._flush_owner()
            if done:
                break
        self._last_words()
        self.containment.close()
        self.memory.close()

    def _last_words(self, within: float = 5.0) -> None:
        """Deliver what is still queued for the owner (the final report), for a few seconds at most."""
        deadline = time.monotonic() + within
        while self.outbox and self.conn.fileno() >= 0:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            select.select([], [self.conn], [], left)
            self._flush_owner()

    def _timeout(self) -> float | None:
        times = [
            t
            for s in self.slots.values()
            for r in (s.rung, s.tree)
            if r is not None and (t := r.next_time()) is not None
        ]
        times += [s.restart_at for s in self.slots.values() if s.restart_at is not None]
        if self.streams_deadline is not None:
            times.append(self.streams_deadline)
        times += self._heartbeat_deadlines()
        if (
            any(s.tree is not None for s in self.slots.values())
            or any(k.pending for k in self.sinks.values())
            or self.channels.pending
        ):
            times.append(time.monotonic() + TREE_RECHECK)
        if not times:
            return None
        return max(0.0, min(times) - time.monotonic())

    def _drain_wakeups(self) -> None:
        """Signals arrive here as bytes (``set_wakeup_fd``): SIGCHLD means "reap"; others stop."""
        try:
            data = os.read(self.wake_r, 4096)
        except OSError:
            return
        for signum in set(data) & set(STOP_SIGNALS):
            self._begin_stop(f"signal:{signal.Signals(signum).name}", (None, None))

    # -- the owner ------------------------------------------------------------------------------

    def _on_owner(self) -> None:
        self._flush_owner()
        if self.conn.fileno() < 0:
            return
        try:
            chunk, fds, _, _ = socket.recv_fds(self.conn, 1 << 16, 64)
        except BlockingIOError:
            return
        except OSError:
            chunk, fds = b"", []
        self.incoming_fds.extend(fds)
        if not chunk:
            self._owner_gone()
            return
        for msg in self.conn_reader.feed(chunk):
            self._command(msg)

    def _owner_gone(self) -> None:
        """The owner died (or hung up): everything dies now, no grace."""
        if self.conn.fileno() >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(self.conn)
            self.conn.close()
        if self.owner_pidfd is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(self.owner_pidfd)
            os.close(self.owner_pidfd)
            self.owner_pidfd = None
        self.closing = True
        self._begin_stop("owner-died", (0.0, 0.0))

    def _command(self, msg: tuple[Any, ...]) -> None:
        verb = msg[0]
        if verb == "configure":
            self.settings = msg[1]
            self.restarts = self.settings.restarts()
        elif verb == "spawn":
            self._spawn(msg[1])
        elif verb == "stop":
            _, reason, waits = msg
            self._begin_stop(reason, waits)
        elif verb == "close":
            self.closing = True
            self._begin_stop("requested", (None, None))
        elif verb == "channel":
            _, name, index, capacity = msg
            fds = [self.incoming_fds.popleft() for _ in range(4)]
            self.channels.add(ChannelSpec(name, index, capacity, *fds))
        elif verb in ("consume", "produce", "close_channel"):
            self.channels.owner(verb.replace("_channel", ""), msg[1])

    def _spawn(self, pool: PoolSpec) -> None:
        self.spawns_seen += 1
        self.idle_sent = False
        if self.stop_since is not None or self.control.all_stopped():
            self.send(("spawned", self.spawns_seen, f"cannot start pool {pool.name!r}: a stop was requested"))
            return
        if pool.name in self.pool_names:
            self.send(("spawned", self.spawns_seen, f"a pool named {pool.name!r} exists already"))
            return
        self.pool_names.append(pool.name)
        self.channels.declare(pool.name, pool.inputs, pool.outputs)
        new = []
        for index in range(pool.replicas):
            slot = Slot(
                id=len(self.slots), pool=pool, index=index, pool_order=len(self.pool_names), notify=self._notify
            )
            self.slots[slot.id] = slot
            new.append(slot)
        for slot in new:
            if self.stop_since is None:
                self._start(slot)
            else:  # a failure among the first ones stopped the run: the rest never start
                slot.outcome = Outcome.STOPPED
                slot.transition(WorkerState.EXITED)
        self.send(("spawned", self.spawns_seen, None))

    # -- starting -------------------------------------------------------------------------------

    def _start(self, slot: Slot) -> None:
        """Start one incarnation of ``slot``; if the system refuses (no fds, no memory), it failed."""
        made: list[int] = []
        try:
            self._fork(slot, made)
        except OSError as exc:
            for fd in made:
                with contextlib.suppress(OSError):
                    os.close(fd)
            slot.failure = ("OSError", f"cannot start a worker: {exc}", "", None)
            slot.outcome, slot.exitcode, slot.pid = Outcome.FAILED, None, None
            slot.transition(WorkerState.EXITED)
            self._event("exited", slot, outcome=slot.outcome.value, error=slot.error())
            self._react(slot)

    def _fork(self, slot: Slot, made: list[int]) -> None:
        """Fork one incarnation of ``slot`` (``made``: fds created so far); the child never returns."""
        self.control.reset_slot(slot.id)
        procs = self.containment.prepare(slot.id)
        stop_r, stop_w = os.pipe()
        made += (stop_r, stop_w)
        result_r, result_w = os.pipe()
        made += (result_r, result_w)
        outputs = self._output_pipes(slot)
        made += [fd for pair in outputs for fd in pair]
        placement = Placement(
            pool=slot.pool,
            index=slot.index,
            slot=slot.id,
            run_id=self.run_id,
            manager_pid=os.getpid(),
            stop_fd=stop_r,
            result_fd=result_w,
            cgroup_procs=procs,
            output_fds=tuple(w for _, w in outputs),
            memory_cgroup=self.memory.prepare(slot.id, slot.pool.memory_limit) if slot.pool.memory_limit else None,
            channels=self.channels.specs(),
            upstream_first=self.settings.stop_order == "upstream-first",
        )
        slot.oom_kills = self.memory.oom_kills(slot.id) if slot.pool.memory_limit else 0
        private = [*self._manager_fds(), stop_w, result_r, *(r for r, _ in outputs)]
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        pid = os.fork()
        if pid == 0:
            child_main(placement, self.control, private)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # also done by the child; whichever runs first wins the race
        os.close(stop_r)
        os.close(result_w)
        for (r, w), dest in zip(outputs, (1, 2), strict=False):
            os.close(w)
            os.set_blocking(r, False)
            slot.streams[r] = Splitter(slot.name, slot.id, self.sinks.setdefault(dest, Sink(dest)))
            self.sel.register(r, selectors.EVENT_READ, lambda s=slot, fd=r: self._on_stream(s, fd))
        os.set_blocking(result_r, False)
        slot.pid, slot.stop_w, slot.result_r = pid, stop_w, result_r
        slot.reader = _wire.Reader()
        slot.pidfd = _platform.pidfd_open(pid)
        slot.exitcode = slot.outcome = slot.failure = slot.rung = slot.hung = slot.restart_at = None
        slot.oom_killed = False
        slot.stop_since = slot.exited_at = None
        slot.signalled = set()
        slot.started_at = time.time()
        slot.started_mono = time.monotonic()
        self._event("started", slot, pid=pid, incarnation=slot.restarts)
        if slot.restarts:
            self.channels.consumer_started(slot.pool.name)
        self.by_pid[pid] = slot
        self.containment.started(slot.id, pid)
        self.sel.register(result_r, selectors.EVENT_READ, lambda s=slot: self._on_result(s))
        if slot.pidfd is not None:
            self.sel.register(slot.pidfd, selectors.EVENT_READ, self._noop)
        slot.transition(WorkerState.STARTING)

    def _output_pipes(self, slot: Slot) -> list[tuple[int, int]]:
        """(read, write) pipes for the child's stdout and stderr, in "prefix" output mode."""
        if self.settings.output != "prefix":
            return []
        return [os.pipe(), os.pipe()]

    def _on_stream(self, slot: Slot, fd: int) -> None:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        splitter = slot.streams[fd]
        if chunk:
            splitter.feed(chunk)
            return
        splitter.close()
        self.sel.unregister(fd)
        os.close(fd)
        del slot.streams[fd]

    @staticmethod
    def _noop() -> None:
        """A pidfd became readable: its worker exited; the reap pass that follows collects it."""

    def _on_result(self, slot: Slot) -> None:
        if slot.result_r is None:
            return
        msgs, eof = slot.reader.drain(slot.result_r)
        for msg in msgs:
            self._worker_message(slot, msg)
        if eof:
            self._close_fd(slot, "result_r")

    def _worker_message(self, slot: Slot, msg: tuple[Any, ...]) -> None:
        if msg[0] == "ready":
            if slot.state is WorkerState.STARTING:
                slot.transition(WorkerState.RUNNING)
        elif msg[0] == "failed":
            slot.failure = msg[1]
        elif msg[0] == "stop":
            if msg[1] is not None:
                self.send(("stop_exc", msg[1]))
            self._begin_stop("requested", (None, None))

    def _close_fd(self, slot: Slot, attr: str) -> None:
        fd = getattr(slot, attr)
        if fd is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(fd)
        os.close(fd)
        setattr(slot, attr, None)

    # -- stopping -------------------------------------------------------------------------------

    def _waits(self, slot: Slot, waits: Waits | None = None) -> tuple[float, float]:
        grace, term = waits or self.stop_waits
        return fit_budget(
            slot.pool.grace_period if grace is None else grace,
            slot.pool.term_timeout if term is None else term,
            self.settings.stop_budget,
        )

    def _begin_stop(self, reason: str, waits: Waits) -> None:
        """Start (or hasten) the global stop: every live worker climbs the ladder from now on."""
        self._reap()  # workers already dead are judged by the time before this stop
        now = time.monotonic()
        upstream_first = self.settings.stop_order == "upstream-first" and reason != "owner-died"
        if not upstream_first:
            self.control.stop_all()
        if self.stop_since is None and not self._anything_running():
            return  # nothing to stop: the report keeps the reason the workers ended for
        if self.stop_since is None:
            self.stop_since, self.stop_reason, self.stop_waits = now, reason, waits
            self.send(("stopping", reason))
            self._event("stopping", None, reason=reason)
            self.groups.clear()
            for slot in self.slots.values():
                slot.restart_at = None
        else:
            self.stop_waits = tuple(  # type: ignore[assignment]
                b if a is None else a if b is None else min(a, b) for a, b in zip(self.stop_waits, waits, strict=True)
            )
        for slot in self.slots.values():
            grace, term = self._waits(slot, waits)
            if slot.state is not WorkerState.EXITED:
                self._stop_slot(slot, now, grace, term, drain=upstream_first and bool(slot.pool.inputs))
            if slot.tree is not None:
                slot.tree.tighten(now, 0.0, term)

    def _producing(self, pool: str) -> bool:
        """Whether any worker of ``pool`` runs or will run again (a restart is coming)."""
        waiting = {k for group in self.groups for k in group[1]}
        return any(
            s.state is not WorkerState.EXITED or s.restart_at is not None or s.id in waiting
            for s in self.slots.values()
            if s.pool.name == pool
        )

    def _consumers(self, pool: str) -> int:
        return sum(s.state is not WorkerState.EXITED for s in self.slots.values() if s.pool.name == pool)

    def _anything_running(self) -> bool:
        return any(
            s.state is not WorkerState.EXITED or s.tree is not None or s.restart_at is not None
            for s in self.slots.values()
        ) or bool(self.groups)

    def _stop_slot(self, slot: Slot, now: float, grace: float, term: float, drain: bool = False) -> None:
        """Ask one worker to stop (cooperative step) and put it on the ladder.

        ``drain``: put it on the ladder without asking; it ends by itself at end-of-stream.
        """
        if slot.rung is None:
            slot.rung = Rung(slot.id, now, grace, term, Step.COOPERATIVE)
            slot.stop_since = now
            slot.transition(WorkerState.STOPPING)
            if drain:
                return
            self.control.stop_slot(slot.id)
            if slot.pool.argv is not None and slot.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, slot.pool.stop_signal)
            self._close_fd(slot, "stop_w")
        else:
            slot.rung.tighten(now, grace, term)

    def _climb(self) -> None:
        now = time.monotonic()
        live = [s.rung for s in self.slots.values() if s.rung is not None and s.state is not WorkerState.EXITED]
        trees = [s.tree for s in self.slots.values() if s.tree is not None]
        if not live and not trees:
            return
        due = [
            (self.slots[r.key], signal.SIGTERM if step is Step.TERM else signal.SIGKILL)
            for r, step in climb(live, now)[0]
        ]
        for slot, sig in due:  # every worker first (a few microseconds each), so they all die at once
            if slot.state is not WorkerState.EXITED and slot.pid is not None:
                self._signal_worker(slot, sig)
        for slot, sig in due:  # then each whole tree, which takes a walk of the cgroup or of /proc
            if slot.state is not WorkerState.EXITED:
                self._signal_tree(slot, sig)
        for rung, step in climb(trees, now)[0]:
            self._signal_tree(self.slots[rung.key], signal.SIGTERM if step is Step.TERM else signal.SIGKILL)

    @staticmethod
    def _signal_worker(slot: Slot, sig: int) -> None:
        """Signal the worker process itself (by pidfd where there is one: it cannot hit a stranger)."""
        for s in (sig, signal.SIGCONT) if sig == signal.SIGTERM else (sig,):
            try:
                if slot.pidfd is not None:
                    signal.pidfd_send_signal(slot.pidfd, s)
                elif slot.pid is not None:
                    os.kill(slot.pid, s)
            except OSError:
                return

    def _signal_tree(self, slot: Slot, sig: int) -> None:
        pid = slot.pid if slot.state is not WorkerState.EXITED else None
        hit = self.containment.signal(slot.id, pid, sig)
        slot.signalled |= hit
        self._event("escalated", slot, signal=signal.Signals(sig).name, processes=len(hit))

    # -- exits ----------------------------------------------------------------------------------

    def _reap(self) -> None:
        """Collect every exit first, then react: workers that died together are judged together
        (the first one's failure must not make the others look stopped)."""
        ended: list[Slot] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            slot = self.by_pid.pop(pid, None)
            if slot is not None:
                self._exited(slot, os.waitstatus_to_exitcode(status))
                ended.append(slot)
        for slot in ended:
            self._react(slot)

    def _notice_stop_flag(self) -> None:
        """A stop someone flagged in shared memory but whose message we have not read yet.

        Workers see the flag at once and may exit before the request reaches us; begin the stop
        first so that their outcome is ``stopped``, not ``completed``.
        """
        if self.stop_since is not None or not self.control.all_stopped():
            return
        for slot in self.slots.values():
            self._on_result(slot)  # a worker's request (and its exception) may be waiting here
        if self.stop_since is None:
            self._begin_stop("requested", (None, None))

    def _exited(self, slot: Slot, exitcode: int) -> None:
        self._notice_stop_flag()
        now = time.monotonic()
        self._on_result(slot)  # whatever it wrote before dying is in the pipe now
        for attr in ("result_r", "pidfd", "stop_w"):
            self._close_fd(slot, attr)
        self.containment.exited(slot.id)
        self.channels.worker_exited(self.control, slot.id)
        step = slot.rung.step if slot.rung is not None else Step.NONE
        slot.exitcode = exitcode
        slot.exited_at = now
        slot.outcome = decide_outcome(step, exitcode, slot.failure is not None, slot.pool.argv is not None)
        if exitcode == -signal.SIGKILL and slot.pool.memory_limit and step < Step.KILL:
            slot.oom_killed = self.memory.oom_kills(slot.id) > slot.oom_kills
        self.last_exit = now
        slot.transition(WorkerState.EXITED)
        self._event(
            "exited",
            slot,
            outcome=slot.outcome.value,
            exitcode=exitcode,
            signal=signal_name(exitcode),
            error=slot.error(),
        )
        self._sweep_tree(slot, now)
        slot.stop_seen = self.stop_since is not None

    def _react(self, slot: Slot) -> None:
        """After an exit: report a failure during a stop, or apply the restart strategy."""
        if slot.stop_seen or self.stop_since is not None:
            if slot.failed:
                self.send(("failure", self._failure(slot)))
        elif slot.rung is None or slot.hung is not None:
            self._carry_out(slot, self.restarts.on_exit(self._member(slot), slot.failed, self._members()))

    def _failure(self, slot: Slot) -> Failure:
        if slot.failure is not None:
            type_name, message, tb, _ = slot.failure
            return Failure(slot.name, type_name, message, tb)
        kind = "WorkerHung" if slot.hung is not None else "WorkerCrashed"
        return Failure(slot.name, kind, f"{slot.name} {slot.error()}", "")

    def _sweep_tree(self, slot: Slot, now: float) -> None:
        """End what a worker left behind: SIGTERM now, SIGKILL after its term timeout."""
        if self.containment.members(slot.id, None):
            term = self._waits(slot)[1]
            slot.tree = Rung(slot.id, now, 0.0, term, Step.COOPERATIVE)
            if slot.rung is not None:  # never later than the worker's own kill deadline
                slot.tree.tighten(slot.rung.since, slot.rung.grace_period, slot.rung.term_timeout)
        else:
            self.containment.release(slot.id)

    # -- restarts and heartbeats (the decisions are in strategy.py) -------------------------------

    @staticmethod
    def _member(slot: Slot) -> Member:
        live = slot.state is not WorkerState.EXITED or slot.restart_at is not None
        return Member(slot.id, slot.pool_order, slot.pool.restart, live)

    def _members(self) -> list[Member]:
        return [self._member(s) for s in self.slots.values()]

    def _carry_out(self, slot: Slot, plan: Plan) -> None:
        """Act on the strategy's plan for a worker that ended by itself (or hung)."""
        if plan.failure:
            self.send(("failure", self._failure(slot)))
        if plan.end is not None:
            self._begin_stop(plan.end, (None, None))
            return
        now = time.monotonic()
        for key in plan.stop:
            other = self.slots[key]
            other.restart_at = None
            if other.state is not WorkerState.EXITED:
                self._stop_slot(other, now, *self._waits(other))
        if plan.restart:
            waiting, again, delay = {slot.id, *plan.stop}, set(plan.restart), plan.delay
            for group in list(self.groups):  # overlapping restarts become one
                if group[0] & waiting or set(group[1]) & again:
                    self.groups.remove(group)
                    waiting |= group[0]
                    again |= set(group[1])
                    delay = max(delay, group[2])
            self.groups.append((waiting, tuple(sorted(again)), delay))
            self._event("restarting", slot, slots=[self.slots[k].name for k in sorted(again)], delay=delay)

    def _restart_due(self) -> None:
        """Schedule groups whose every member has ended, and start the restarts that are due."""
        if self.stop_since is not None:
            return
        now = time.monotonic()
        for group in list(self.groups):
            waiting, again, delay = group
            if all(self.slots[k].state is WorkerState.EXITED and self.slots[k].tree is None for k in waiting):
                self.groups.remove(group)
                for key in again:
                    self.slots[key].restart_at = now + delay
        for slot in self.slots.values():
            due = slot.restart_at is not None and slot.restart_at <= now
            if due and slot.state is WorkerState.EXITED and slot.tree is None:
                slot.restarts += 1
                self._start(slot)

    def _heartbeat_deadlines(self) -> list[float]:
        out = []
        for slot in self.slots.values():
            timeout = slot.pool.heartbeat_timeout
            if timeout is not None and slot.state is WorkerState.RUNNING and slot.rung is None:
                out.append(max(self.control.last_beat(slot.id), slot.started_mono) + timeout)
        return out

    def _check_heartbeats(self) -> None:
        """A worker silent for longer than its heartbeat timeout is hung: it alone is stopped."""
        now = time.monotonic()
        for slot in self.slots.values():
            timeout = slot.pool.heartbeat_timeout
            if timeout is None or slot.state is not WorkerState.RUNNING or slot.rung is not None:
                continue
            if now - max(self.control.last_beat(slot.id), slot.started_mono) >= timeout:
                slot.hung = f"no heartbeat for {timeout:g} s"
                self._event("hung", slot, reason=slot.hung)
                self._stop_slot(slot, now, *self._waits(slot))

    def _event(self, kind: str, slot: Slot | None, **fields: Any) -> None:
        """One lifecycle event for the owner's log: what happened, to whom, when."""
        event: dict[str, Any] = {"time": time.time(), "event": kind}
        if slot is not None:
            event["worker"] = slot.name
        event.update(fields)
        self.send(("event", event))

    # -- the end --------------------------------------------------------------------------------

    def _check_trees(self) -> bool:
        """Release the trees that are empty now; True if no worker's leftovers remain."""
        done = True
        for slot in self.slots.values():
            if slot.tree is None:
                continue
            if self.containment.members(slot.id, None):
                done = False
            else:
                slot.tree = None
                self.containment.release(slot.id)
        return done

    def _strays(self) -> bool:
        """With every worker ended, SIGKILL anything of the run still alive; True if there was any.

        Needed by the fallback backend, which cannot always tell which worker an orphan came from
        (a forked, never exec'd ``setsid()`` daemon carries neither marker nor process group).
        """
        return self.containment.sweep()

    def _finish(self) -> bool:
        """Tell the owner when everything has ended; True when the manager should exit."""
        if self.groups or any(
            s.state is not WorkerState.EXITED or s.restart_at is not None for s in self.slots.values()
        ):
            return False
        if not self._check_trees() or self._strays() or not self._streams_closed():
            return False
        if not self.idle_sent:
            self.idle_sent = True
            self.send(("idle", self.spawns_seen, self._report()))
        return self.closing

    def _streams_closed(self) -> bool:
        """Output pipes reach end-of-file once every process holding them is gone. A process we
        could not find (it escaped every marker) may hold one for ever: after ``STREAM_LINGER``
        seconds the pipes are closed anyway, so that the end never depends on it."""
        open_streams = [(s, fd) for s in self.slots.values() for fd in s.streams]
        if not open_streams:
            self.streams_deadline = None
            return True
        now = time.monotonic()
        if self.streams_deadline is None:
            self.streams_deadline = now + STREAM_LINGER
        if now < self.streams_deadline:
            return False
        for slot, fd in open_streams:
            slot.streams.pop(fd).close()
            self.sel.unregister(fd)
            os.close(fd)
        return True

    def _report(self) -> TeardownReport:
        workers = [s.report() for s in self.slots.values()]
        failed = any(s.failed for s in self.slots.values())
        reason = self.stop_reason if self.stop_reason is not None else "failure" if failed else "completed"
        duration = 0.0
        if self.stop_since is not None:
            duration = max(0.0, (self.last_exit or self.stop_since) - self.stop_since)
        ok = not failed and reason not in ("failure", "restarts exhausted", "owner-died")
        return TeardownReport(ok=ok, reason=reason, duration=duration, workers=workers)
