"""Every Linux-specific call, with the portable fallback beside it.

Capability flags are module globals so that tests can flip them (``monkeypatch.setattr``) and run
the fallback paths on Linux:

- ``HAVE_PIDFD``: ``os.pidfd_open`` works; the manager waits on pidfds. Fallback: SIGCHLD + waitpid.
- ``HAVE_PRCTL``: ``prctl(2)`` is reachable; workers get ``PR_SET_PDEATHSIG`` and the manager and
  guardian become child subreapers. Fallback (macOS): none; the weaker guarantee is documented.
- ``HAVE_PROC_CHILDREN``: ``/proc/PID/task/TID/children`` lists children; fallback: psutil.
- ``USE_CGROUPS``: try cgroup v2 containment at all (see ``containment``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

import psutil

LINUX = sys.platform.startswith("linux")

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _load_prctl() -> object | None:
    if not LINUX:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


def _probe_pidfd() -> bool:
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True


HAVE_PIDFD: bool = _probe_pidfd()
HAVE_PRCTL: bool = _prctl is not None
HAVE_PROC_CHILDREN: bool = LINUX and os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
USE_CGROUPS: bool = LINUX


_FLAGS = ("HAVE_PIDFD", "HAVE_PRCTL", "HAVE_PROC_CHILDREN", "USE_CGROUPS")


def flags(cgroups: bool = True) -> str:
    """This process's capability flags, to hand to the guardian (so flags flipped here apply there)."""
    on = {name: bool(globals()[name]) for name in _FLAGS}
    on["USE_CGROUPS"] = on["USE_CGROUPS"] and cgroups
    return ",".join(name for name, value in on.items() if not value) or "-"


def apply_flags(disabled: str) -> None:
    """Turn off the capabilities named in ``disabled`` (the output of ``flags``)."""
    for name in disabled.split(","):
        if name in _FLAGS:
            globals()[name] = False


def _call_prctl(option: int, arg: int) -> bool:
    if not HAVE_PRCTL or _prctl is None:
        return False
    return bool(_prctl(option, arg, 0, 0, 0) == 0)  # type: ignore[operator]


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when the thread that forked it exits."""
    return _call_prctl(_PR_SET_PDEATHSIG, sig)


def set_child_subreaper() -> bool:
    """Make this process the reaper of orphaned descendants (double-forked, setsid escapers)."""
    return _call_prctl(_PR_SET_CHILD_SUBREAPER, 1)


def pidfd_open(pid: int) -> int | None:
    """A pidfd for ``pid``, or None where pidfds are unavailable (fallback: SIGCHLD + waitpid)."""
    if not HAVE_PIDFD:
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (empty if it is gone)."""
    if HAVE_PROC_CHILDREN:
        kids: list[int] = []
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    kids.extend(int(x) for x in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
        return kids
    try:
        return [p.pid for p in psutil.Process(pid).children()]
    except psutil.Error:
        return []


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid``, parents before children (a snapshot; may race with forks)."""
    out: list[int] = []
    stack = children(pid)
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(children(p))
    return out


def process_environ(pid: int) -> bytes:
    """The initial environment block of ``pid`` (``NUL``-separated), or b"" if unreadable."""
    if LINUX:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                return f.read()
        except OSError:
            return b""
    try:
        env = psutil.Process(pid).environ()
    except psutil.Error:
        return b""
    return b"\0".join(f"{k}={v}".encode() for k, v in env.items())


def is_zombie(pid: int) -> bool:
    """True if ``pid`` is gone or a zombie waiting to be reaped."""
    if LINUX:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            return True
        return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] in (b"Z", b"X")
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def python_entry(module: str, function: str) -> list[str]:
    """argv for a fresh interpreter that runs ``supervisor.<module>.<function>()``.

    The package's own folder goes first on ``sys.path``, so this works from a source checkout too.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = f"import sys; sys.path.insert(0, {root!r}); from supervisor.{module} import {function}; {function}()"
    return [sys.executable, "-c", code]


def raise_fd_limit() -> None:
    """Lift the soft open-file limit to the hard one: each worker costs the manager a few fds."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
        if soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):
        pass
