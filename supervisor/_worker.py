"""Worker bootstrap: what a freshly forked child does before and after its target runs.

Order matters: the child leaves the manager's process group, arms the parent-death signal and
enrols in its cgroup before any user code can fork; only then does it load the target.
Exit codes: 0 after a normal return or ``Stopped``; 1 after an uncaught exception (whose type,
message and traceback went to the manager first); ``SystemExit`` codes are kept.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from . import _platform, _wire, containment, limits
from ._shm import ControlBlock
from ._spec import PoolSpec
from .channels import ChannelSpec
from .context import WorkerContext, pack_exception
from .errors import Stopped


@dataclass(frozen=True)
class Placement:
    """Where one incarnation of a worker lives."""

    pool: PoolSpec
    index: int
    slot: int
    run_id: str
    manager_pid: int
    stop_fd: int  # read end; EOF when asked to stop
    result_fd: int  # write end of the pipe to the manager
    cgroup_procs: str | None
    output_fds: tuple[int, ...] = ()  # write ends to become stdout and stderr ("prefix" output mode)
    memory_cgroup: str | None = None  # cgroup.procs of the slot's memory cgroup (memory_limit)
    channels: tuple[ChannelSpec, ...] = ()  # every channel of the run (inherited descriptors)
    upstream_first: bool = False  # the run's stop order

    @property
    def name(self) -> str:
        return f"{self.pool.name}.{self.index}"


def _detach_from_manager(p: Placement) -> None:
    os.setpgid(0, 0)
    if p.output_fds:
        for fd, target in zip(p.output_fds, (1, 2), strict=False):
            os.dup2(fd, target)
            os.close(fd)
        for stream in (sys.stdout, sys.stderr):
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    if _platform.set_parent_death_signal(signal.SIGKILL) and os.getppid() != p.manager_pid:
        os._exit(137)  # the manager died before the prctl took effect
    containment.enrol(p.cgroup_procs)
    limits.apply_in_child(p.pool.memory_limit, p.memory_cgroup, p.pool.cpu_affinity, p.pool.nice)
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    atexit._clear()
    os.environ.update(p.pool.env)
    os.environ[containment.SLOT_ENV] = f"{p.run_id}:{p.slot}"
    os.environ["SUPERVISOR_WORKER"] = p.name


def child_main(p: Placement, control: ControlBlock, manager_fds: list[int]) -> NoReturn:
    """Runs in the forked child; never returns."""
    for fd in manager_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _exit_after(lambda: _start_in_child(p, control))


def _start_in_child(p: Placement, control: ControlBlock) -> int:
    try:
        _detach_from_manager(p)
    except Exception as exc:  # a limit that cannot be applied: the worker fails, saying why
        _wire.send(p.result_fd, ("failed", pack_exception(exc)))
        raise
    if p.pool.argv is not None:
        _wire.send(p.result_fd, ("ready",))
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores them; programs expect defaults
            signal.signal(sig, signal.SIG_DFL)
        try:
            os.execvp(p.pool.argv[0], list(p.pool.argv))
        except OSError as exc:
            print(f"supervisor: cannot run {p.pool.argv[0]!r}: {exc}", file=sys.stderr)
            return 127
    if p.pool.start_method == "spawn":
        _exec_fresh_interpreter(p, control)
    return _run_target(p, control)


def _exit_after(body: Callable[[], int]) -> NoReturn:
    """Run a worker's ``body`` and exit with its code (1 if the bootstrap itself raised)."""
    code = 1
    try:
        code = body()
    except BaseException:
        traceback.print_exc()
    finally:
        _flush()
        os._exit(code)


def _exec_fresh_interpreter(p: Placement, control: ControlBlock) -> NoReturn:
    """The "spawn" start method: replace this forked child by a new interpreter running ``p``.

    Process group, parent-death signal (kept across exec), cgroup and environment are already set.
    """
    import pickle
    import tempfile

    with tempfile.TemporaryFile() as f:
        pickle.dump(p, f)
        f.flush()
        f.seek(0)
        fd = os.dup(f.fileno())
    for inherited in (fd, control.fd, p.stop_fd, p.result_fd, *(f for c in p.channels for f in c.fds)):
        os.set_inheritable(inherited, True)
    argv = [*_platform.python_entry("_worker", "spawned_main"), str(fd), str(control.fd)]
    _flush()
    os.execve(argv[0], argv, dict(os.environ))


def spawned_main() -> NoReturn:
    """Entry point of a "spawn" worker's fresh interpreter (see ``_exec_fresh_interpreter``)."""
    import pickle

    def body() -> int:
        with os.fdopen(int(sys.argv[1]), "rb") as f:
            p: Placement = pickle.load(f)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        return _run_target(p, ControlBlock(int(sys.argv[2])))

    _exit_after(body)


def _run_target(p: Placement, control: ControlBlock) -> int:
    import dill

    ctx = WorkerContext(
        name=p.name,
        pool=p.pool.name,
        index=p.index,
        slot=p.slot,
        control=control,
        stop_fd=p.stop_fd,
        result_fd=p.result_fd,
        channels={c.name: c for c in p.channels},
        inputs=p.pool.inputs,
        outputs=p.pool.outputs,
        upstream_first=p.upstream_first,
    )
    if p.pool.sys_path:
        sys.path[:] = p.pool.sys_path
    code = 0
    try:
        assert p.pool.payload is not None
        target, args, kwargs = dill.loads(p.pool.payload)
        _wire.send(p.result_fd, ("ready",))
        target(ctx, *args, **kwargs)
    except Stopped:
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException as exc:
        _wire.send(p.result_fd, ("failed", pack_exception(exc)))
        print(f"worker {p.name} failed:", file=sys.stderr)
        traceback.print_exc()
        code = 1
    try:
        threading._shutdown()  # type: ignore[attr-defined]  # join non-daemon threads, as Python does at exit
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
    return code


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
