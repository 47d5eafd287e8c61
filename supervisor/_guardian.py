"""Entry point of the supervisor's own processes: the guardian, which forks the manager.

    owner (user's process) -> guardian -> manager -> workers -> ...

The guardian is a child subreaper that does nothing but wait. If the manager dies, even by
SIGKILL, its workers die by their parent-death signal and every escaped descendant is
re-parented to the guardian, which then kills (and reaps) every child it has until none is left,
and empties the run's cgroup. The owner never forks: it starts the guardian with
``subprocess`` (fork+exec, safe with threads), so every fork happens in a single-threaded process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys

from . import _platform, containment
from ._shm import ControlBlock


def main() -> None:
    """``argv[1:]``: the manager's socket fd, the control block fd, the run id, disabled flags."""
    conn_fd, control_fd, run_id = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    _platform.apply_flags(sys.argv[4])
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # terminal and stray signals go to the owner, not here
    _platform.set_child_subreaper()
    run_dir = containment.create_run_cgroup()
    owner = os.getppid()
    manager = os.fork()
    if manager == 0:
        _manager_main(conn_fd, control_fd, run_id, run_dir, owner)
    os.close(conn_fd)
    os.close(control_fd)
    code = _wait_for(manager)
    clean_up(run_dir)
    os._exit(code)


def _manager_main(conn_fd: int, control_fd: int, run_id: str, run_dir: str | None, owner: int) -> None:
    import dill  # noqa: F401 - imported once here, so that every forked worker has it already

    from ._manager import Manager

    code = 0
    try:
        _platform.set_child_subreaper()
        _platform.raise_fd_limit()
        os.set_inheritable(control_fd, False)  # kept open: "spawn" workers map it after their exec
        control = ControlBlock(control_fd)
        conn = socket.socket(fileno=conn_fd)
        cont: containment.Containment
        if run_dir is not None:
            cont = containment.CgroupContainment(run_dir)
        else:
            cont = containment.GroupContainment(run_id, os.getpid())
        Manager(conn, control, cont, run_id, owner).run()
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 70
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)


def _wait_for(manager: int) -> int:
    """Reap children until the manager has exited; its exit code."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 70
        if pid == manager:
            return os.waitstatus_to_exitcode(status) & 0xFF


def clean_up(run_dir: str | None) -> None:
    """Kill every remaining child (escapees re-parented to us) and its tree, until none is left."""
    if run_dir is not None:
        containment.kill_cgroup(run_dir)
    me = os.getpid()
    while True:
        kids = _platform.children(me)
        for pid in kids:
            for victim in [pid, *_platform.descendants(pid)]:
                with contextlib.suppress(OSError):
                    os.kill(victim, signal.SIGKILL)
        try:
            while True:
                pid, _ = os.waitpid(-1, 0 if kids else os.WNOHANG)
                if pid == 0:
                    break
                kids = []
        except ChildProcessError:
            return


if __name__ == "__main__":
    main()
