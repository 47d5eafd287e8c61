"""Containment: knowing and ending every process a worker started, however it got away.

One small interface, two backends chosen at start-up:

- ``CgroupContainment`` (Linux, a writable cgroup v2): one cgroup per worker slot below one cgroup
  per run. Membership is exact (``cgroup.procs``), ``cgroup.kill`` ends a whole tree in one write,
  and nothing can leave a cgroup without privileges.
- ``GroupContainment`` (fallback, and macOS): each worker leads its own process group; the manager
  is a child subreaper (Linux), so escaped descendants (double fork, ``setsid()``) are re-parented
  to it. A worker's tree is its live descendants, its process group, and adopted orphans whose
  environment names its slot. Orphans that name no slot are ended with the run.

Both: ``enrol`` (in the child, before user code), ``members``, ``signal``, ``release``, ``close``.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Iterable

from . import _platform

SLOT_ENV = "SUPERVISOR_SLOT"  # set in every worker: "<run id>:<slot>"
RUN_ENV = "SUPERVISOR_RUN"  # set in the guardian, so inherited by every process of the run
CGROUP_PREFIX = "supervisor-"


def _signal_each(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
            if sig == signal.SIGTERM:
                os.kill(pid, signal.SIGCONT)


class GroupContainment:
    """Process groups + subreaper + descendant walks (see the module docstring)."""

    backend = "process-group"

    def __init__(self, run_id: str, manager_pid: int) -> None:
        self.run_id = run_id
        self.manager_pid = manager_pid
        self.worker_pids: dict[int, int] = {}  # slot -> pid of its live worker process
        self.groups: dict[int, int] = {}  # process group id (a worker's pid) -> slot, kept for orphans

    def prepare(self, slot: int) -> str | None:
        return None

    def started(self, slot: int, pid: int) -> None:
        self.worker_pids[slot] = pid
        self.groups[pid] = slot

    def exited(self, slot: int) -> None:
        self.worker_pids.pop(slot, None)

    def _orphans(self) -> list[int]:
        workers = set(self.worker_pids.values())
        return [p for p in _platform.children(self.manager_pid) if p not in workers]

    def _slot_of(self, pid: int) -> int | None:
        """Which worker an orphan came from: its slot marker (exec'd), else its process group."""
        marker = f"{SLOT_ENV}={self.run_id}:".encode()
        for item in _platform.process_environ(pid).split(b"\0"):
            if item.startswith(marker):
                with contextlib.suppress(ValueError):
                    return int(item[len(marker) :])
        try:
            return self.groups.get(os.getpgid(pid))
        except OSError:
            return None

    def members(self, slot: int, pid: int | None) -> set[int]:
        """Live processes of the slot's tree, the worker included."""
        roots = [pid] if pid is not None else []
        for orphan in self._orphans():
            owner = self._slot_of(orphan)
            if owner == slot:
                roots.append(orphan)
        found: set[int] = set()
        for root in roots:
            found.add(root)
            found.update(_platform.descendants(root))
        return {p for p in found if not _platform.is_zombie(p)}

    def signal(self, slot: int, pid: int | None, sig: int) -> set[int]:
        """Send ``sig`` to the slot's whole tree; returns the pids it was sent to."""
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
        targets = self.members(slot, pid)
        _signal_each(targets, sig)
        return targets

    def release(self, slot: int) -> None:
        self.worker_pids.pop(slot, None)

    def sweep(self) -> bool:
        """SIGKILL every process of the run that is not a live worker; True if any was found."""
        found: set[int] = set()
        for orphan in self._orphans():
            found.add(orphan)
            found.update(_platform.descendants(orphan))
        found = {p for p in found if not _platform.is_zombie(p)}
        _signal_each(found, signal.SIGKILL)
        return bool(found)

    def close(self) -> None:
        pass


def cgroup2_mount() -> str | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup`` or ``.../unified``), if it is."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4]
    except OSError:
        pass
    return None


def own_cgroup_dir() -> str | None:
    """This process's cgroup v2 directory, if there is one."""
    mount = cgroup2_mount()
    if mount is None:
        return None
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return os.path.join(mount, line[3:].strip().lstrip("/"))
    except OSError:
        pass
    return None


def _proc_start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()[19].decode()


def run_cgroup_name(pid: int) -> str | None:
    """The name of the run cgroup owned by ``pid``: prefix, pid and start time (pid-reuse proof)."""
    start = _proc_start_time(pid)
    return None if start is None else f"{CGROUP_PREFIX}{pid}-{start}"


def _cgroup_tree(path: str) -> list[str]:
    """``path`` and every cgroup below it, deepest first (the order rmdir needs)."""
    out: list[str] = []
    for root, _dirs, _files in os.walk(path, topdown=False):
        out.append(root)
    return out


def cgroup_populated(path: str) -> bool:
    """Whether any live process is in ``path`` or below (zombies do not count): one small read."""
    try:
        with open(os.path.join(path, "cgroup.events")) as f:
            return "populated 1" in f.read()
    except OSError:
        return bool(cgroup_pids(path))


def cgroup_pids(path: str) -> set[int]:
    pids: set[int] = set()
    for d in _cgroup_tree(path):
        with contextlib.suppress(OSError), open(os.path.join(d, "cgroup.procs")) as f:
            pids.update(int(x) for x in f.read().split())
    return pids


def wait_empty(path: str, timeout: float) -> bool:
    """Wait (without polling: ``cgroup.events`` signals changes) until ``path`` has no live process."""
    deadline = time.monotonic() + timeout
    try:
        with open(os.path.join(path, "cgroup.events"), "rb", buffering=0) as f:
            waiter = select.poll()
            waiter.register(f, select.POLLPRI | select.POLLERR)
            while True:
                f.seek(0)
                if b"populated 0" in f.read():
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                waiter.poll(left * 1000)
    except OSError:
        return not cgroup_pids(path)


def kill_cgroup(path: str) -> None:
    """SIGKILL everything in ``path`` and below, racing no fork; then remove the directories."""
    try:
        with open(os.path.join(path, "cgroup.kill"), "w") as f:
            f.write("1")
    except OSError:
        for _ in range(100):
            pids = cgroup_pids(path)
            if not pids:
                break
            _signal_each(pids, signal.SIGKILL)
    wait_empty(path, 5.0)  # SIGKILL is delivered asynchronously; rmdir needs the cgroup empty
    remove_cgroup(path)


def remove_cgroup(path: str) -> None:
    for d in _cgroup_tree(path):
        with contextlib.suppress(OSError):
            os.rmdir(d)


def sweep_stale_cgroups(parent: str) -> list[str]:
    """End and remove run cgroups whose owner is dead (left by a supervisor that was killed)."""
    removed: list[str] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(CGROUP_PREFIX):
            continue
        pid_s, _, start = name[len(CGROUP_PREFIX) :].partition("-")
        if pid_s.isdigit() and _proc_start_time(int(pid_s)) == start:
            continue  # its owner is alive
        path = os.path.join(parent, name)
        kill_cgroup(path)
        if not os.path.exists(path):
            removed.append(path)
    return removed


def create_run_cgroup() -> str | None:
    """Make this process's run cgroup (a sibling of nothing else of ours), or None if we cannot."""
    if not _platform.USE_CGROUPS:
        return None
    parent = own_cgroup_dir()
    name = run_cgroup_name(os.getpid())
    if parent is None or name is None:
        return None
    sweep_stale_cgroups(parent)
    path = os.path.join(parent, name)
    try:
        os.mkdir(path)
    except OSError:
        return None
    probe = os.path.join(path, "probe")
    try:  # can we actually move a process in? (read-only or delegated-elsewhere hierarchies fail)
        os.mkdir(probe)
        os.rmdir(probe)
        if not os.access(os.path.join(path, "cgroup.procs"), os.W_OK):
            raise PermissionError
    except OSError:
        remove_cgroup(path)
        return None
    return path


class CgroupContainment:
    """One cgroup per slot below the run cgroup (see the module docstring)."""

    backend = "cgroup"

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir

    def _dir(self, slot: int) -> str:
        return os.path.join(self.run_dir, f"w{slot}")

    def prepare(self, slot: int) -> str | None:
        """Make the slot's cgroup; returns the ``cgroup.procs`` path the child writes itself into."""
        with contextlib.suppress(FileExistsError):
            os.mkdir(self._dir(slot))
        return os.path.join(self._dir(slot), "cgroup.procs")

    def started(self, slot: int, pid: int) -> None:
        # The child enrols itself before running any user code; enrolling from here as well closes
        # the window in which an early SIGKILL of the manager would leave it outside.
        with contextlib.suppress(OSError), open(os.path.join(self._dir(slot), "cgroup.procs"), "w") as f:
            f.write(str(pid))

    def exited(self, slot: int) -> None:
        pass

    def members(self, slot: int, pid: int | None) -> set[int]:
        path = self._dir(slot)
        return cgroup_pids(path) if cgroup_populated(path) else set()

    def signal(self, slot: int, pid: int | None, sig: int) -> set[int]:
        targets = self.members(slot, pid)
        if sig == signal.SIGKILL:
            try:
                with open(os.path.join(self._dir(slot), "cgroup.kill"), "w") as f:
                    f.write("1")
                return targets
            except OSError:
                pass
        _signal_each(targets, sig)
        return targets

    def release(self, slot: int) -> None:
        try:
            os.rmdir(self._dir(slot))
        except FileNotFoundError:
            pass
        except OSError:  # cgroups the worker made below its own
            remove_cgroup(self._dir(slot))

    def sweep(self) -> bool:
        """SIGKILL everything left in the run's cgroups; True if any process was found."""
        if not cgroup_populated(self.run_dir):
            return False
        with contextlib.suppress(OSError), open(os.path.join(self.run_dir, "cgroup.kill"), "w") as f:
            f.write("1")
        return True

    def close(self) -> None:
        kill_cgroup(self.run_dir)


Containment = GroupContainment | CgroupContainment


def enrol(procs_path: str | None) -> None:
    """In the child, first thing: move this process into its slot's cgroup."""
    if procs_path is not None:
        with contextlib.suppress(OSError), open(procs_path, "w") as f:
            f.write(str(os.getpid()))
